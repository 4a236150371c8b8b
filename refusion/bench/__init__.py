"""`refusion bench`: every decoder on the same prompts in one process, speed and quality against `ar`.

    from refusion.bench import builtin_prompts, parse_specs, run_bench
    result = run_bench(model, tokenizer, builtin_prompts(), parse_specs("ar,lossless,refusion"))
"""

from .prompts import builtin_prompts, read_prompts
from .runner import DecoderSpec, parse_specs, run_bench

__all__ = ["DecoderSpec", "builtin_prompts", "parse_specs", "read_prompts", "run_bench"]
