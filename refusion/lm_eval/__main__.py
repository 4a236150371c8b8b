"""`python -m refusion.lm_eval ...`: lm-eval's own command line, with the `refusion` model registered
and this package's task YAMLs on the include path."""

from __future__ import annotations

import sys
import traceback

from ..errors import RefusionError


def main() -> None:
    from . import TASKS_DIR, RefusionLM

    if RefusionLM is None:
        print("error: lm-evaluation-harness is not installed: pip install 'refusion[lm-eval]'", file=sys.stderr)
        sys.exit(2)
    from lm_eval.__main__ import cli_evaluate

    if "--include_path" not in sys.argv:
        sys.argv += ["--include_path", str(TASKS_DIR)]
    try:
        cli_evaluate()
    except RefusionError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except ValueError as error:  # lm-eval's own refusals of its arguments, e.g. "Tasks not found: ..."
        if not any("lm_eval/config" in frame.filename or "lm_eval/__main__" in frame.filename
                   for frame in traceback.extract_tb(error.__traceback__)[-2:]):
            raise  # not an argument check: a real failure keeps its traceback
        print(f"error: lm-eval: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
