"""lm-evaluation-harness integration: `import refusion.lm_eval` registers the `refusion` model.

    python -m refusion.lm_eval --model refusion \\
        --model_args pretrained=DIR,decoder=refusion,slot_size=32,blocks=4,slot_threshold=0.9,token_threshold=0.4 \\
        --tasks refusion_gsm8k --limit 50

`generate_until` decodes with `refusion.generate` (any registered decoder and its knobs, from
model_args); `loglikelihood` and `loglikelihood_rolling` use the model's ordinary autoregressive
head. The five benchmarks ship as local-data task YAMLs in `TASKS_DIR` (read from the same wheels
as `refusion eval`, scored by the same functions), so lm-eval runs them offline. lm-eval itself is
the optional extra `pip install refusion[lm-eval]`; nothing of it is copied here.
"""

from __future__ import annotations

from .tasks import TASKS_DIR, export_tasks

try:
    from .harness import RefusionLM
except ModuleNotFoundError as error:  # lm-eval not installed: the YAML export still works
    if error.name is None or not error.name.startswith("lm_eval"):
        raise
    RefusionLM = None

__all__ = ["TASKS_DIR", "RefusionLM", "export_tasks"]
