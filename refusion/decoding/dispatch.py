"""`generate`: one entry point for every decoder, with input checks and timing.

Decoders are registered in `DECODERS` as modules exposing `OPTIONS` (their options and defaults)
and `decode(runner, prompt_ids, *, max_new_tokens, eos_token_ids, temperature, generator, emit,
[mask_token_id,] **options)`, and optionally `validate_options(options, max_new_tokens)` raising
RefusionError for values that make no sense. The tokenizer is only asked for `eos_token_id` and `decode`.
"""

from __future__ import annotations

import time

import torch

from ..errors import RefusionError
from ..model import eos_token_ids as find_eos_token_ids
from . import autoregressive, fast_dllm, lossless, masked_diffusion, plan_infill
from .generation import EventCallback, Generation
from .runner import DecodeOutput, ModelRunner
from .streaming import FinalText, cut_at_stop

DECODERS = {"refusion": plan_infill, "lossless": lossless, "ar": autoregressive, "mdm": masked_diffusion,
            "fast-dllm": fast_dllm}
NEEDS_MASK = {"refusion", "lossless", "mdm", "fast-dllm"}


class _StopStringReached(Exception):
    """Raised from the event callback to end a decode whose text reached a stop string."""


def register_decoder(name: str, module, needs_mask: bool = True) -> None:
    """Add a decoder module (see this module's docstring for the contract)."""
    DECODERS[name] = module
    if needs_mask:
        NEEDS_MASK.add(name)


def default_decoder(model) -> str:
    """refusion for a model with a mask token, ar for one without."""
    return "refusion" if getattr(model.config, "mask_token_id", None) is not None else "ar"


def check_options(decoder: str, options: dict, max_new_tokens: int) -> dict:
    """Fill defaults and reject options the decoder does not take or values that make no sense."""
    defaults = DECODERS[decoder].OPTIONS
    unknown = sorted(name for name, value in options.items() if value is not None and name not in defaults)
    if unknown:
        raise RefusionError(f"decoder {decoder!r} does not take {', '.join(unknown)}")
    resolved = {name: (options.get(name) if options.get(name) is not None else default) for name, default in defaults.items()}
    for name in ("slot_threshold", "token_threshold", "threshold"):
        if name in resolved and not 0.0 <= float(resolved[name]) <= 1.0:
            raise RefusionError(f"{name.replace('_', '-')} must lie in [0, 1], got {resolved[name]}")
    if hasattr(DECODERS[decoder], "validate_options"):  # a decoder's checks of its own options
        DECODERS[decoder].validate_options(resolved, max_new_tokens)
    return resolved


def check_stop(stop: list[str] | str | None) -> list[str]:
    """Stop strings as a list; each must be non-empty text."""
    stop = [stop] if isinstance(stop, str) else list(stop or [])
    if not all(isinstance(s, str) and s for s in stop):
        raise RefusionError("stop strings must be non-empty text")
    return stop


def _as_prompt_ids(input_ids) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, dtype=torch.long)
    if ids.dim() == 1:
        ids = ids.unsqueeze(0)
    if ids.dim() != 2 or ids.shape[0] != 1:
        raise RefusionError(f"input_ids must be one sequence ([P] or [1, P]), got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise RefusionError("the prompt is empty")
    return ids.cpu()


def generate(
    model,
    tokenizer,
    input_ids,
    *,
    decoder: str = "refusion",
    max_new_tokens: int = 256,
    slot_size: int | None = None,
    blocks: int | None = None,
    slot_threshold: float | None = None,
    token_threshold: float | None = None,
    temperature: float = 0.0,
    kv: str | None = None,
    trace: bool = False,
    on_event: EventCallback | None = None,
    seed: int | None = None,
    stop: list[str] | str | None = None,
    return_state: bool = False,
    **decoder_options,
) -> Generation:
    """Generate up to `max_new_tokens` after `input_ids` with the named decoder.

    Options left as None take the decoder's defaults; an option the decoder does not use is an
    error rather than silently ignored. `on_event` receives each decode event as it happens
    (see `refusion.decoding.generation`); `trace=True` also keeps them on the result. Decoding
    ends as soon as the final left-to-right text holds one of the `stop` strings; the text is cut
    before it and `finish_reason` is "stop".
    """
    if decoder not in DECODERS:
        raise RefusionError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    if int(max_new_tokens) < 1:
        raise RefusionError(f"max-new-tokens must be a positive integer, got {max_new_tokens}")
    if temperature is None or temperature < 0:
        raise RefusionError(f"temperature must be >= 0, got {temperature}")
    prompt_ids = _as_prompt_ids(input_ids)
    stop = check_stop(stop)
    options = dict(decoder_options, slot_size=slot_size, blocks=blocks, slot_threshold=slot_threshold,
                   token_threshold=token_threshold, kv=kv)
    options = check_options(decoder, options, int(max_new_tokens))
    extra = {}
    if decoder in NEEDS_MASK:
        mask_id = getattr(model.config, "mask_token_id", None)
        if mask_id is None:
            raise RefusionError(
                f"decoder {decoder!r} needs a model trained with a <|mask|> token; this one has none. "
                "Convert it with `refusion train --objective refusion`, or use --decoder ar"
            )
        extra["mask_token_id"] = int(mask_id)
    context = getattr(model.config, "max_position_embeddings", None)
    if context and prompt_ids.shape[1] + max_new_tokens > context:
        raise RefusionError(
            f"prompt ({prompt_ids.shape[1]} tokens) plus max-new-tokens ({max_new_tokens}) exceeds the model's context of {context}"
        )

    eos = find_eos_token_ids(tokenizer, model)
    watch = FinalText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), eos, int(max_new_tokens), stop) if stop else None
    events: list[dict] = []

    def emit(event: dict) -> None:
        if trace:
            events.append(event)
        if on_event is not None:
            on_event(event)
        if watch is not None and watch(event) and watch.stopped:
            raise _StopStringReached

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    runner = ModelRunner(model, suppress_token_id=getattr(model.config, "mask_token_id", None))
    started = time.perf_counter()
    try:
        output: DecodeOutput = DECODERS[decoder].decode(
            runner, prompt_ids, max_new_tokens=int(max_new_tokens), eos_token_ids=eos, temperature=float(temperature),
            generator=generator, emit=emit, **extra, **options,
        )
    except _StopStringReached:
        output = DecodeOutput(tokens=watch.tokens, forward_passes=runner.forward_passes)
    seconds = time.perf_counter() - started
    tokens = output.tokens[: int(max_new_tokens)]
    text, stopped_at_string = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop)
    stopped = stopped_at_string or (bool(tokens) and tokens[-1] in eos)
    result = Generation(
        tokens=tokens,
        text=text,
        decoder=decoder,
        forward_passes=output.forward_passes,
        seconds=seconds,
        prompt_tokens=prompt_ids.shape[1],
        finish_reason="stop" if stopped else "length",
        trace=events if trace else None,
        settings={"max_new_tokens": int(max_new_tokens), "temperature": float(temperature), **options, **output.settings,
                  **({"stop": stop} if stop else {})},
        forward_seconds=runner.stats.seconds,
        forward_profile={width: list(entry) for width, entry in sorted(runner.stats.by_width.items())},
        counters=dict(output.counters),
    )
    if return_state:
        result.state = output  # internal: cache and decode order, for tests and diagnostics
    return result
