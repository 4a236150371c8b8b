"""User-facing errors: anything raised as `RefusionError` is shown as one line, never a traceback."""


class RefusionError(Exception):
    """Bad input or an unusable model; the message says what to do."""
