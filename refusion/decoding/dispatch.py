"""`generate`: one entry point for every decoder, with input checks and timing.

Decoders are registered in `DECODERS` as modules exposing `OPTIONS` (their options and defaults),
optionally `prepare(runner, options)` (one-off work before the timed decode)
and `decode(runner, prompt_ids, *, max_new_tokens, eos_token_ids, temperature, generator, emit,
[mask_token_id,] **options)`, and optionally `validate_options(options, max_new_tokens)` raising
RefusionError for values that make no sense. The tokenizer is only asked for `eos_token_id` and `decode`.
"""

from __future__ import annotations

import time
from typing import Callable

import torch

from ..errors import RefusionError
from ..model import eos_token_ids as find_eos_token_ids
from . import autoregressive, fast_dllm, lossless, masked_diffusion, plan_infill
from .generation import EventCallback, Generation
from .options import MAX_NEW_TOKENS, SEED, TEMPERATURE, options_of
from .runner import DecodeOutput, ModelRunner
from .streaming import FinalText, cut_at_stop

DECODERS = {"refusion": plan_infill, "lossless": lossless, "ar": autoregressive, "mdm": masked_diffusion,
            "fast-dllm": fast_dllm}
NEEDS_MASK = {"refusion", "lossless", "mdm", "fast-dllm"}


def register_decoder(name: str, module, needs_mask: bool = True) -> None:
    """Add a decoder module (see this module's docstring for the contract)."""
    DECODERS[name] = module
    if needs_mask:
        NEEDS_MASK.add(name)


def default_decoder(model) -> str:
    """lossless for a model with a mask token (ar's text, faster: see BENCHMARKS.md), mdm for one trained
    with the masked-diffusion objective, ar for one without a mask token."""
    if getattr(model.config, "mask_token_id", None) is None:
        return "ar"
    return "mdm" if getattr(model.config, "refusion_objective", None) == "mdm" else "lossless"


def check_options(decoder: str, options: dict, max_new_tokens: int) -> dict:
    """Fill defaults and reject options the decoder does not take or values that make no sense.

    Each value is checked by its declaration (`refusion.decoding.options`), then the decoder's
    `validate_options` checks how they combine. Options given as None take their defaults.
    """
    module = DECODERS[decoder]
    declared = options_of(module)
    given = {name: value for name, value in options.items() if value is not None}
    unknown = sorted(name for name in given if name not in declared)
    if unknown:
        takes = ", ".join(declared) or "no options"
        owners = [name for name, other in DECODERS.items() if set(unknown) <= set(options_of(other))]
        hint = f"; choose decoder {' or '.join(owners)} for {', '.join(unknown)}" if owners else ""
        raise RefusionError(f"decoder {decoder!r} does not take {', '.join(unknown)} (it takes: {takes}){hint}")
    resolved = {name: option.check(given[name]) if name in given else option.default for name, option in declared.items()}
    if hasattr(module, "validate_options"):
        module.validate_options(resolved, max_new_tokens)
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
    temperature: float = 0.0,
    trace: bool = False,
    on_event: EventCallback | None = None,
    seed: int | None = None,
    stop: list[str] | str | None = None,
    on_text: Callable[[str], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    return_state: bool = False,
    **decoder_options,
) -> Generation:
    """Generate up to `max_new_tokens` after `input_ids` with the named decoder.

    `decoder_options` are the decoder's own (`refusion.DECODERS[decoder].OPTIONS` declares each
    with its default, range and help); left out or None, they take their defaults; an option the
    decoder does not take is an error rather than silently ignored. `on_event` receives each decode event as it happens
    (see `refusion.decoding.generation`); `trace=True` also keeps them on the result. Decoding
    ends as soon as the final left-to-right text holds one of the `stop` strings; the text is cut
    before it and `finish_reason` is "stop".

    `on_text` receives the text as it becomes final, in order, never a part that could still turn
    into a stop string; the pieces add up to `result.text`. `should_stop` is asked between decode
    steps; once it returns True the decode ends there (`finish_reason` "cancelled"), e.g. when the
    client that asked for it has gone.
    """
    if decoder not in DECODERS:
        raise RefusionError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    max_new_tokens = MAX_NEW_TOKENS.check(max_new_tokens)
    temperature = TEMPERATURE.check(0.0 if temperature is None else temperature)
    seed = None if seed is None else SEED.check(seed)
    prompt_ids = _as_prompt_ids(input_ids)
    stop = check_stop(stop)
    options = check_options(decoder, decoder_options, max_new_tokens)
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
    final = FinalText(lambda ids: tokenizer.decode(ids, skip_special_tokens=True), eos, max_new_tokens, stop,
                      text=on_text is not None)
    events: list[dict] = []
    shown = ""

    def emit(event: dict) -> None:
        nonlocal shown
        if trace:
            events.append(event)
        if on_event is not None:
            on_event(event)
        if final(event) and on_text is not None and len(final.ready) > len(shown):
            on_text(final.ready[len(shown):])
            shown = final.ready

    cancelled = False

    def stop_now() -> bool:
        """Asked by decoders between steps: the text is complete (a decoder that writes past the budget or
        out of order may still hold work it need not do), or the caller cancelled."""
        nonlocal cancelled
        if final.complete:
            return True
        cancelled = cancelled or (should_stop is not None and bool(should_stop()))
        return cancelled

    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    runner = ModelRunner(model, suppress_token_id=getattr(model.config, "mask_token_id", None))
    if hasattr(DECODERS[decoder], "prepare"):  # one-off work (measuring the model) is not decoding time
        DECODERS[decoder].prepare(runner, options)
    started = time.perf_counter()
    output: DecodeOutput = DECODERS[decoder].decode(
        runner, prompt_ids, max_new_tokens=max_new_tokens, eos_token_ids=eos, temperature=temperature,
        generator=generator, emit=emit, should_stop=stop_now, **extra, **options,
    )
    seconds = time.perf_counter() - started
    # Stopped early, a decoder may hold tokens ahead of a gap: the text is the final left-to-right prefix.
    tokens = final.tokens if final.complete or cancelled else output.tokens[: max_new_tokens]
    text, stopped_at_string = cut_at_stop(tokenizer.decode(tokens, skip_special_tokens=True), stop)
    if on_text is not None and len(text) > len(shown) and text.startswith(shown):
        on_text(text[len(shown):])  # the tail held back while it could still have become a stop string
    stopped = stopped_at_string or (bool(tokens) and tokens[-1] in eos)
    result = Generation(
        tokens=tokens,
        text=text,
        decoder=decoder,
        forward_passes=output.forward_passes,
        seconds=seconds,
        prompt_tokens=prompt_ids.shape[1],
        finish_reason="stop" if stopped else "cancelled" if cancelled else "length",
        trace=events if trace else None,
        settings={"max_new_tokens": max_new_tokens, "temperature": temperature, **options, **output.settings,
                  **({"stop": stop} if stop else {})},
        forward_seconds=runner.stats.seconds,
        forward_profile={width: list(entry) for width, entry in sorted(runner.stats.by_width.items())},
        counters=dict(output.counters),
    )
    if return_state:
        result.state = output  # internal: cache and decode order, for tests and diagnostics
    return result
