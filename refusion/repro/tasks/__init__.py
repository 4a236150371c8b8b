"""The miniature's two tasks, test splits of its synthetic families, for `refusion eval` and `refusion repro`.

They register with `refusion eval` as plugins do (the `refusion.tasks` entry points in pyproject.toml),
so that eval knows nothing of the miniature.
"""
