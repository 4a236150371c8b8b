"""Running decoder settings in turn on the same prompts and summarising each as a row.

Everything is measured in one process on one model, so rows compare as ratios: speed against the
`ar` row of the same run, and quality against `ar`'s text (identical share) and under the model's
own AR head (mean log-likelihood per generated token). Each setting first runs a short untimed
generation per prompt, so that no row pays for building the CPU kernels of a new input shape. Then
the settings take turns prompt by prompt (group by group), so that the machine's drift over the run
weighs on every row alike. Knows nothing about files or plots (see `report`).

With several batch sizes, each setting runs once per size b, sending the prompts b at a time
(consecutive groups, the last one may be smaller) through `refusion.generate`; a row is one
(setting, batch size) pair, its speed compared with `ar` at the same batch size and its text with
`ar` at batch 1.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch

from ..decoding import generate, lossless
from ..decoding.dispatch import DECODERS, check_options
from ..decoding.options import SEED, TEMPERATURE
from ..decoding.runner import build_kernels
from ..errors import RefusionError

LOSSLESS = {"ar", "lossless"}  # decoders whose text is the AR head's (greedy: identical; sampling: same distribution)
GENERATE_KEYS = {"temperature", "seed"}  # generate() keywords a spec may set besides the decoder's options
KERNEL_WIDTHS = 160  # the widest lossless forward after the prompt: 8 candidates, chains of 10, their masks, lookups
KERNEL_WIDTHS_PAST_PROMPT = 32  # the first forward: the prompt, its root masks and drafts


@dataclass
class DecoderSpec:
    """One row of the bench: a decoder and the keyword arguments `refusion.generate` takes for it."""

    decoder: str
    options: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        knobs = ",".join(f"{key}={value}" for key, value in self.options.items())
        return f"{self.decoder}:{knobs}" if knobs else self.decoder


def _value(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return None if text.lower() == "none" else text


def parse_specs(text: str) -> list[DecoderSpec]:
    """'ar,lossless,refusion:kv=recompute,slot_size=8' -> three specs.

    Specs are separated by commas; `NAME:key=value` sets options, and a further `key=value` after a
    comma belongs to the spec before it. Options use `refusion.generate`'s keyword names.
    """
    specs: list[DecoderSpec] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if "=" in part and ":" not in part:
            if not specs:
                raise RefusionError(f"decoder spec {part!r} has no decoder name before it (write NAME:{part})")
            key, value = part.split("=", 1)
            specs[-1].options[key.strip().replace("-", "_")] = _value(value.strip())
            continue
        name, _, knobs = part.partition(":")
        spec = DecoderSpec(name.strip())
        if spec.decoder not in DECODERS:
            raise RefusionError(f"unknown decoder {spec.decoder!r} in --decoders; choose from: {', '.join(DECODERS)}")
        if knobs:
            if "=" not in knobs:
                raise RefusionError(f"decoder spec {part!r}: options are written key=value")
            key, value = knobs.split("=", 1)
            spec.options[key.strip().replace("-", "_")] = _value(value.strip())
        specs.append(spec)
    if not specs:
        raise RefusionError("--decoders names no decoder")
    return specs


def parse_batch_sizes(text: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]: positive integers separated by commas, each once."""
    sizes: list[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part.isdigit() or int(part) < 1:
            raise RefusionError(f"--batch-sizes takes positive integers separated by commas (e.g. 1,4,16), got {text!r}")
        if int(part) not in sizes:
            sizes.append(int(part))
    return sizes


def check_specs(specs: list[DecoderSpec], max_new_tokens: int) -> None:
    """Reject unknown or out-of-range options before any model is loaded."""
    for spec in specs:
        knobs = {k: v for k, v in spec.options.items() if k not in GENERATE_KEYS}
        try:
            for option in (TEMPERATURE, SEED):
                if spec.options.get(option.name) is not None:
                    spec.options[option.name] = option.check(spec.options[option.name])
            check_options(spec.decoder, knobs, max_new_tokens)
        except RefusionError as error:
            raise RefusionError(f"{spec.label}: {error}") from None


class PeakMemory:
    """Peak resident memory (CPU) or peak allocated memory (CUDA) while the block runs, in MB."""

    def __init__(self, device: torch.device):
        self.device, self.peak_mb, self._running = device, 0.0, False

    @staticmethod
    def _rss_mb() -> float:
        try:
            with open("/proc/self/statm") as statm:
                return int(statm.read().split()[1]) * 4096 / 2**20
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _watch(self) -> None:
        while self._running:
            self.peak_mb = max(self.peak_mb, self._rss_mb())
            time.sleep(0.005)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self._running, self.peak_mb = True, self._rss_mb()
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            self._running = False
            self._thread.join()
            self.peak_mb = max(self.peak_mb, self._rss_mb())


@torch.no_grad()
def ar_loglik(model, prompt_ids: torch.Tensor, tokens: list[int]) -> tuple[float, int]:
    """Sum of the AR head's log-probabilities of `tokens` after the prompt, and their count."""
    if not tokens:
        return 0.0, 0
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids[0], torch.tensor(tokens)]).unsqueeze(0).to(device)
    logits = model(input_ids=ids, logits_to_keep=len(tokens) + 1).logits[0, :-1].float()  # predicts each token
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, ids[0, -len(tokens):, None]).squeeze(-1)
    return float(logprobs.sum()), len(tokens)


@torch.no_grad()
def divergence_gap(model, prompt_ids: torch.Tensor, tokens: list[int], reference: list[int]) -> float | None:
    """Where `tokens` first leaves `reference`: |logit difference| the AR head gives the two tokens there.

    A small gap is a near-tie that floating-point differences between forwards of different widths
    can flip; None when neither text departs from the other (one may be a prefix of the other).
    """
    first = next((i for i, (a, b) in enumerate(zip(tokens, reference)) if a != b), None)
    if first is None:
        return None
    device = next(model.parameters()).device
    ids = torch.cat([prompt_ids[0], torch.tensor(reference[:first], dtype=torch.long)]).unsqueeze(0).to(device)
    logits = model(input_ids=ids, logits_to_keep=1).logits[0, -1].float()
    return abs(float(logits[tokens[first]] - logits[reference[first]]))


def _p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[max(0, -(-95 * len(ordered) // 100) - 1)]  # nearest rank


def call_seconds(generations) -> float:
    """Wall time of one `generate` call: a batch decoded together times all its rows at once."""
    if generations[0].batch_size > 1:
        return generations[0].seconds
    return sum(g.seconds for g in generations)


def summarise(spec: DecoderSpec, calls: list[list], peak_mb: float, max_new_tokens: int, batch_size: int = 1) -> dict:
    """One row from the `generate` calls of a setting at one batch size (each call: its list of `Generation`).

    Speed is aggregate (all new tokens / wall time of all calls); each request's latency is the wall
    time of the call it was part of. Tokens per forward and forwards are per request; the forward
    profile and engine overhead count a batched forward once.
    """
    generations = [g for call in calls for g in call]
    tokens = sum(g.new_tokens for g in generations)
    wall = [call_seconds(call) for call in calls]
    seconds = sum(wall)
    latencies = [secs for secs, call in zip(wall, calls) for _ in call]
    forwards = sum(g.forward_passes for g in generations)
    # A batch decoded together shares one runner: its forward statistics are on every row, counted once.
    timed = [g for call in calls for g in (call[:1] if call[0].batch_size > 1 else call)]
    inside = sum(g.forward_seconds for g in timed)
    profile: dict[int, list] = {}
    for g in timed:
        for width, (count, secs) in g.forward_profile.items():
            entry = profile.setdefault(int(width), [0, 0.0])
            entry[0] += count
            entry[1] += secs
    counters: dict[str, int] = {}
    for g in generations:
        for key, value in g.counters.items():
            counters[key] = counters.get(key, 0) + value
    row = {
        "decoder": spec.decoder,
        "label": spec.label,
        "settings": {"decoder": spec.decoder, "max_new_tokens": max_new_tokens, **spec.options},
        "resolved_settings": {k: v for k, v in generations[0].settings.items() if k != "max_new_tokens"},
        "lossless": spec.decoder in LOSSLESS,
        "batch_size": batch_size,
        "prompts": len(generations),
        "new_tokens": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 3) if seconds else 0.0,
        "latency_ms": {"mean": round(1000 * sum(latencies) / len(latencies), 1), "p95": round(1000 * _p95(latencies), 1)},
        "tokens_per_forward": round(tokens / forwards, 4) if forwards else 0.0,
        "forward_passes": round(forwards / len(generations), 2),
        "forward_ms_by_width": {w: round(1000 * s / n, 2) for w, (n, s) in sorted(profile.items())},
        "forwards_by_width": {w: n for w, (n, s) in sorted(profile.items())},
        "engine_overhead": round(max(0.0, 1 - inside / seconds), 4) if seconds else 0.0,
        "peak_memory_mb": round(peak_mb, 1),
        **counters,
    }
    if "drafts_accepted" in counters and forwards:
        row["drafts_accepted_per_forward"] = round(counters["drafts_accepted"] / forwards, 4)
    for source in ("lookup", "table"):  # the parts of those that lookup drafts and draft-table chains gave
        if f"{source}_accepted" in counters and forwards:
            row[f"{source}_accepted_per_forward"] = round(counters[f"{source}_accepted"] / forwards, 4)
    return row


def output_key(label: str, batch_size: int) -> str:
    """A row's name in `outputs`: the label at batch 1, `label@batch4` at batch 4."""
    return label if batch_size == 1 else f"{label}@batch{batch_size}"


def run_bench(model, tokenizer, prompts: list[str], specs: list[DecoderSpec], *, max_new_tokens: int = 96,
              chat: bool = True, warmup: bool = True, progress: bool = True, batch_sizes: list[int] = (1,),
              passes: int = 1) -> dict:
    """Run every spec over every prompt at every batch size, `passes` times over; returns {"rows": [...],
    "outputs": {key: [text, ...]}}.

    Rows come batch size by batch size, specs in order within each. An `ar` row is run first when
    `specs` has none (every ratio needs it), and `ar` also runs at batch 1 when `batch_sizes` lacks
    1 (identical-to-ar compares with it). `outputs` is keyed by `output_key(label, batch_size)`: the first
    pass's texts (a row's speed counts every pass).
    """
    from tqdm.auto import tqdm

    from ..prompting import encode_prompt

    if passes < 1:
        raise RefusionError(f"passes must be a positive integer, got {passes}")
    if not any(spec.decoder == "ar" and not spec.options for spec in specs):
        specs = [DecoderSpec("ar"), *specs]
    batch_sizes = list(batch_sizes) or [1]
    plan = [(spec, size) for size in batch_sizes for spec in specs]
    if 1 not in batch_sizes:
        plan.insert(0, (DecoderSpec("ar"), 1))
    encoded = [encode_prompt(tokenizer, prompt, chat=chat) for prompt in prompts]
    device = next(model.parameters()).device
    sizes = list(dict.fromkeys(size for _, size in plan))  # in plan order
    specs_at = {size: [spec for spec, s in plan if s == size] for size in sizes}
    groups_at = {size: [encoded[start:start + size] for start in range(0, len(encoded), size)] for size in sizes}

    def call(group: list[torch.Tensor], spec: DecoderSpec, size: int, **kwargs) -> list:
        if size == 1:
            return [generate(model, tokenizer, group[0], decoder=spec.decoder, **spec.options, **kwargs)]
        return generate(model, tokenizer, [ids[0] for ids in group], decoder=spec.decoder, **spec.options, **kwargs)

    if warmup:  # untimed: every width a decode may feed at batch 1, and each group's first step (CPU kernels are
        # built per input shape)
        build_kernels(model, max(KERNEL_WIDTHS, max(ids.shape[1] for ids in encoded) + KERNEL_WIDTHS_PAST_PROMPT))
        for size in sizes:
            for spec in specs_at[size]:
                for group in groups_at[size]:
                    asked = []
                    call(group, spec, size, max_new_tokens=max_new_tokens, should_stop=lambda: bool(asked) or asked.append(1))
        lossless.forget(model)  # what the warm-ups' first steps saw is no sample of how drafts fare later
    # Every setting takes its turn on a group before the next group, and with several passes every batch size
    # takes its turn within each pass: a machine that slows down or speeds up over the run (shared machines drift
    # by 10% or more) weighs on every row alike.
    calls = {(size, i): [] for size in sizes for i in range(len(specs_at[size]))}
    peaks = dict.fromkeys(calls, 0.0)
    turns = [(size, group, i) for _ in range(passes) for size in sizes for group in groups_at[size]
             for i in range(len(specs_at[size]))]
    for size, group, i in tqdm(turns, desc="decoding", disable=not progress, leave=False):
        with PeakMemory(device) as memory:
            calls[size, i].append(call(group, specs_at[size][i], size, max_new_tokens=max_new_tokens))
        peaks[size, i] = max(peaks[size, i], memory.peak_mb)
    rows, outputs, tokens_by_key = [], {}, {}
    for size in sizes:
        for i, spec in enumerate(specs_at[size]):
            row = summarise(spec, calls[size, i], peaks[size, i], max_new_tokens, batch_size=size)
            generations = [g for c in calls[size, i][:len(groups_at[size])] for g in c]  # the first pass
            row["prompts"], row["passes"] = len(generations), passes
            loglik = [ar_loglik(model, ids, g.tokens) for ids, g in zip(encoded, generations)]
            total, count = sum(s for s, _ in loglik), sum(n for _, n in loglik)
            row["ar_loglik_per_token"] = round(total / count, 4) if count else None
            rows.append(row)
            key = output_key(spec.label, size)
            outputs[key] = [g.text for g in generations]
            tokens_by_key[key] = [g.tokens for g in generations]
    reference = tokens_by_key["ar"]  # ar at batch 1
    for row in rows:
        baseline = next(r for r in rows if r["label"] == "ar" and r["batch_size"] == row["batch_size"])
        row["speedup_vs_ar"] = round(row["tokens_per_second"] / baseline["tokens_per_second"], 3) if baseline["tokens_per_second"] else None
        pairs = list(zip(tokens_by_key[output_key(row["label"], row["batch_size"])], reference))
        row["identical_to_ar"] = round(sum(a == b for a, b in pairs) / len(pairs), 4)
        gaps = [divergence_gap(model, ids, a, b) for ids, (a, b) in zip(encoded, pairs) if a != b]
        gaps = sorted(g for g in gaps if g is not None)
        # Where the text leaves ar's: how close the AR head's two choices were (logits), median and largest.
        row["divergence_logit_gap"] = {"median": round(gaps[len(gaps) // 2], 4), "max": round(gaps[-1], 4)} if gaps else None
    return {"rows": rows, "outputs": outputs, "prompts": prompts, "batch_sizes": sorted({size for _, size in plan}),
            "passes": passes}
