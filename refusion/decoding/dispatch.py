"""`generate`: one entry point for every decoder, with input checks and timing, for one prompt or several.

Decoders are registered in `DECODERS` as modules exposing `OPTIONS` (their options and defaults),
optionally `prepare(runner, options)` (one-off work before the timed decode)
and `decode(runner, prompt_ids, *, max_new_tokens, eos_token_ids, temperature, generator, emit,
should_stop, [mask_token_id,] **options)`, and optionally `validate_options(options, max_new_tokens)`
raising RefusionError for values that make no sense. The tokenizer is only asked for `eos_token_id` and `decode`.

Several prompts: a module may also expose `ROW`, a class whose instances are one prompt's decode as
a row of a `refusion.decoding.batching.Batch`: `ROW(runner, prompt, *, max_new_tokens, eos_token_ids,
temperature, generator, emit, should_stop, [mask_token_id,] **options)` with `pending`, `position`,
`forwards`, `done`, `feed`, `take` (see `batching`) and `output()` -> `DecodeOutput`, the tokens that
prompt gets from `decode` alone. Such rows share each forward, in `generate` with several prompts
and in the server's running batch (`open_row`). A module without it decodes several prompts in
lockstep (`lockstep`): each prompt's `decode` runs as written and their model calls are batched
(in the server too); rows of a `Batch` copy no cache, so they are the faster way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import RefusionError
from ..special_tokens import eos_token_ids as find_eos_token_ids
from . import autoregressive, fast_dllm, lossless, masked_diffusion, plan_infill
from .batching import Batch
from .generation import EventCallback, Generation
from .lockstep import decode_lockstep
from .options import MAX_NEW_TOKENS, SEED, TEMPERATURE, options_of
from .rows import Row
from .runner import DecodeOutput, ModelRunner

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
        raise RefusionError(f"input_ids must be one sequence ([P] or [1, P]) or a list of them, got shape {tuple(ids.shape)}")
    if ids.shape[1] == 0:
        raise RefusionError("the prompt is empty")
    return ids.cpu()


def is_batch(input_ids) -> bool:
    """Several prompts: a list (or tuple) of sequences, as opposed to one sequence of token ids."""
    return isinstance(input_ids, (list, tuple)) and any(
        isinstance(item, (list, tuple)) or (isinstance(item, torch.Tensor) and item.dim() > 0) for item in input_ids)


@dataclass
class Request:
    """Everything about a call to `generate` except the prompts, checked once for all of them."""

    decoder: str
    max_new_tokens: int
    temperature: float
    seed: int | None
    stop: list[str]
    options: dict
    extra: dict
    eos: set[int]
    trace: bool
    return_state: bool

    @property
    def module(self):
        return DECODERS[self.decoder]

    @property
    def settings(self) -> dict:
        return {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature, **self.options}

    def generator(self) -> torch.Generator | None:
        """A fresh generator per prompt, seeded as it would be alone, so that a row's draws match."""
        return torch.Generator().manual_seed(self.seed) if self.seed is not None else None

    def runner(self, model, rows: int = 1) -> ModelRunner:
        runner = ModelRunner(model, suppress_token_id=getattr(model.config, "mask_token_id", None))
        if hasattr(self.module, "prepare"):  # one-off work (measuring the model) is not decoding time
            self.module.prepare(runner, self.options, rows)
        return runner


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
) -> Generation | list[Generation]:
    """Generate up to `max_new_tokens` after `input_ids` with the named decoder.

    `input_ids` is one prompt ([P] or [1, P] tensor, or a list of ints) -> one `Generation`, or
    several (a list of token-id lists or 1-D tensors, lengths may differ) -> a list of
    `Generation`, one per prompt, in order. Every row gets the same settings and its own seeded
    generator, and ends on its own EOS, stop string or budget; each row's result is the one it gets
    alone. The rows share forwards: `ar` and `lossless` as rows of one batch (one forward per step
    for the unfinished rows), the other decoders in lockstep (each call of every row's decode in one
    forward). `on_event` and `on_text` are for
    one prompt only; `should_stop` cancels every row.

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
    batch = is_batch(input_ids)
    if batch and (on_event is not None or on_text is not None):
        raise RefusionError("on_event and on_text follow one prompt; generate several prompts without them")
    request, prompts = _checked_request(model, tokenizer, input_ids, batch, decoder, max_new_tokens, temperature, seed,
                                        stop, trace, return_state, decoder_options)

    def row() -> Row:
        return Row(tokenizer, request.eos, request.max_new_tokens, request.stop, trace=trace, on_event=on_event,
                   on_text=on_text, should_stop=should_stop)

    if not batch:
        return _decode_one(model, request, prompts[0], row())
    if len(prompts) == 1:
        return [_decode_one(model, request, prompts[0], row())]
    return _decode_together(model, request, prompts, [row() for _ in prompts])


def _checked_request(model, tokenizer, input_ids, batch: bool, decoder: str, max_new_tokens, temperature, seed, stop,
                     trace: bool, return_state: bool, decoder_options: dict) -> tuple[Request, list[torch.Tensor]]:
    """Every check `generate` makes before decoding: the settings as a `Request`, and the prompts as [1, P] each."""
    if decoder not in DECODERS:
        raise RefusionError(f"unknown decoder {decoder!r}; choose one of: {', '.join(DECODERS)}")
    max_new_tokens = MAX_NEW_TOKENS.check(max_new_tokens)
    temperature = TEMPERATURE.check(0.0 if temperature is None else temperature)
    seed = None if seed is None else SEED.check(seed)
    prompts = [_as_prompt_ids(item) for item in input_ids] if batch else [_as_prompt_ids(input_ids)]
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
    for index, prompt_ids in enumerate(prompts):
        if context and prompt_ids.shape[1] + max_new_tokens > context:
            which = f"prompt {index}" if batch else "prompt"
            raise RefusionError(
                f"{which} ({prompt_ids.shape[1]} tokens) plus max-new-tokens ({max_new_tokens}) exceeds the model's context of {context}"
            )
    request = Request(decoder, max_new_tokens, temperature, seed, stop, options, extra,
                      find_eos_token_ids(tokenizer, model), trace, return_state)
    return request, prompts


class OpenRow:
    """One prompt decoding beside others that started before or after it (the server's continuous batching).

    A decoder with a `ROW` joins a `Batch` as `state`; any other decodes in a `Lockstep` group,
    which runs `decode`. Once it has ended, `result` gives the `Generation` that `generate` would give
    for this prompt alone (seconds: from opening to the result; the forward profile: the group's
    forwards while it was in it).
    """

    def __init__(self, request: Request, prompt_ids: torch.Tensor, row: Row, runner: ModelRunner):
        self.request, self.prompt_ids, self.row, self.runner = request, prompt_ids, row, runner
        self.started = time.perf_counter()
        self.stats_before = runner.stats.copy()
        self.generator = request.generator()
        self.state = request.module.ROW(runner, prompt_ids[0].tolist(), **self._arguments()) \
            if hasattr(request.module, "ROW") else None

    def _arguments(self) -> dict:
        request = self.request
        return dict(max_new_tokens=request.max_new_tokens, eos_token_ids=request.eos, temperature=request.temperature,
                    generator=self.generator, emit=self.row.emit, should_stop=self.row.stop_now, **request.extra,
                    **request.options)

    def decode(self, runner: ModelRunner) -> DecodeOutput:
        """The whole decode with `runner` (a lockstep lane's)."""
        return self.request.module.decode(runner, self.prompt_ids, **self._arguments())

    def result(self, output: DecodeOutput | None = None, batch_size: int = 1) -> Generation:
        seconds = time.perf_counter() - self.started
        output = output if output is not None else self.state.output()
        return self.row.result(output, decoder=self.request.decoder, prompt_tokens=self.prompt_ids.shape[1],
                               seconds=seconds, stats=self.runner.stats.minus(self.stats_before),
                               settings=self.request.settings, batch_size=batch_size)


def open_row(model, tokenizer, runner: ModelRunner, input_ids, *, decoder: str, max_new_tokens: int = 256,
             temperature: float = 0.0, seed: int | None = None, stop: list[str] | str | None = None,
             on_event: EventCallback | None = None, on_text: Callable[[str], None] | None = None,
             should_stop: Callable[[], bool] | None = None, **decoder_options) -> OpenRow:
    """One prompt to decode with `runner` beside others, checked as `generate` checks it."""
    request, prompts = _checked_request(model, tokenizer, input_ids, False, decoder, max_new_tokens, temperature, seed,
                                        stop, False, False, decoder_options)
    if hasattr(request.module, "prepare"):
        request.module.prepare(runner, request.options)
    row = Row(tokenizer, request.eos, request.max_new_tokens, request.stop, on_event=on_event, on_text=on_text,
              should_stop=should_stop)
    return OpenRow(request, prompts[0], row, runner)


def _decode_one(model, request: Request, prompt_ids: torch.Tensor, row: Row) -> Generation:
    runner = request.runner(model)
    started = time.perf_counter()
    output: DecodeOutput = request.module.decode(
        runner, prompt_ids, max_new_tokens=request.max_new_tokens, eos_token_ids=request.eos,
        temperature=request.temperature, generator=request.generator(), emit=row.emit, should_stop=row.stop_now,
        **request.extra, **request.options,
    )
    seconds = time.perf_counter() - started
    return row.result(output, decoder=request.decoder, prompt_tokens=prompt_ids.shape[1], seconds=seconds,
                      stats=runner.stats, settings=request.settings, return_state=request.return_state)


def _decode_together(model, request: Request, prompts: list[torch.Tensor], rows: list[Row]) -> list[Generation]:
    """Several prompts sharing forwards: rows of a `Batch` for a decoder with a `ROW`, else in lockstep."""
    runner = request.runner(model, len(prompts))
    started = time.perf_counter()
    opened = [OpenRow(request, prompt_ids, row, runner) for prompt_ids, row in zip(prompts, rows)]
    if hasattr(request.module, "ROW"):
        batch = Batch(runner)
        for one in opened:
            batch.add(one.state)
        while len(batch):
            batch.step()
        outputs = [one.state.output() for one in opened]
    else:
        outputs = decode_lockstep(runner, [one.decode for one in opened])
    seconds = time.perf_counter() - started
    return [row.result(output, decoder=request.decoder, prompt_tokens=prompt_ids.shape[1], seconds=seconds,
                       stats=runner.stats, settings=request.settings, batch_size=len(prompts),
                       return_state=request.return_state)
            for row, prompt_ids, output in zip(rows, prompts, outputs)]
