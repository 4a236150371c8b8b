"""The miniature reproduction, stage by stage: data, tokenizer, the trained models, every decoder run.

`run(config)` writes under `config.output`:
    data/train.jsonl, data/test-<task>.jsonl   both task families, train and test disjoint
    init/                                      the shared random initialisation + tokenizer (not kept)
    <model>/                                   arm, arm-longer, mdm, refusion, refusion-from-arm(-<variant>): trained with
                                               `refusion.training.train`
    <model>/eval/<task>/<run>/                 `refusion.eval.evaluate` output (summary.json, samples.jsonl)
and returns every run's summary. Each stage is skipped when its output is already there, so an
interrupted run resumes (training from its last checkpoint, a decoder run from its last finished
problem). Knows nothing about the report's format (see `refusion.repro.report`) or the command line.
"""

from __future__ import annotations

import json
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..files import staged_directory, write_text
from . import arithmetic, records

FAMILIES = {"mini-gsm8k": arithmetic, "mini-json": records}
CONVERSIONS = {
    "refusion-from-arm": ("arm", {}),
    "refusion-from-arm-across": ("arm", {"ar_across_slots": True}),
    "refusion-from-arm-prefix": ("arm", {"prefix_share": 0.5}),
    "refusion-from-arm-prefix-across": ("arm", {"prefix_share": 0.5, "ar_across_slots": True}),
    "refusion-from-arm-prefix-only": ("arm", {"prefix_share": 1.0}),
    "refusion-from-arm-longer": ("arm-longer", {}),
    "refusion-from-arm-longer-prefix-across": ("arm-longer", {"prefix_share": 0.5, "ar_across_slots": True}),
    "refusion-from-arm-longer-prefix-only": ("arm-longer", {"prefix_share": 1.0}),
    "refusion-from-arm-longer-prefix-across-lambda0.25": ("arm-longer", {"prefix_share": 0.5, "ar_across_slots": True,
                                                                        "mdm_weight": 0.25}),
    "refusion-from-arm-longer-prefix-across-next0.5": ("arm-longer", {"prefix_share": 0.5, "ar_across_slots": True,
                                                                     "next_token_share": 0.5}),
}
"""Conversions of a trained AR model with the refusion objective: name -> (the model converted, its options). From ARM:
the paper's recipe and variants as options of the objective (`refusion train --ar-across-slots`, `--prefix-share`):
next-token labels across slot boundaries, half the examples laid out as a clean left-to-right prefix with a masked
tail, both, and every example so laid out. From ARM trained longer: the paper's recipe, the best variant and
every example in the prefix layout, the best variant with L_MDM weighted 0.25 (`--mdm-weight`), the best variant with
half the examples plain next-token examples over the whole answer (`--next-token-share`), and those three trained
three times as long (STEP_MULTIPLES)."""
TRAINED_LONGER = {f"{name}-x3": (name, 3) for name in ("refusion-from-arm-longer-prefix-across",
                                                        "refusion-from-arm-longer-prefix-across-lambda0.25",
                                                        "refusion-from-arm-longer-prefix-across-next0.5")}
"""Conversions repeated for a multiple of `finetune_steps`: name -> (the conversion, the multiple). Is the converted
model still short of converging?"""
CONVERSIONS.update({name: CONVERSIONS[conversion] for name, (conversion, _) in TRAINED_LONGER.items()})
STEP_MULTIPLES = {name: multiple for name, (_, multiple) in TRAINED_LONGER.items()}
RECIPES = {name: options for name, (_, options) in CONVERSIONS.items()}
MODELS = {"arm": "ar", "arm-longer": "ar", "mdm": "mdm", "refusion": "refusion", **{name: "refusion" for name in CONVERSIONS}}
"""model directory name -> training objective. arm-longer is ARM trained on with the AR objective for as many steps,
at the same learning rate, as a conversion adds: the control of the conversions from ARM, and a stronger AR model."""
FINE_TUNED_FROM = {"arm-longer": "arm", **{name: start for name, (start, _) in CONVERSIONS.items()}}
"""Models trained from another model's result (the paper's recipe: ReFusion is a converted AR model) instead of
the shared random initialisation, for `finetune_steps` on top of that model's budget. The others train from
scratch with identical architecture, data and budget."""
REFUSION_MODELS = [name for name, objective in MODELS.items() if objective == "refusion"]


@dataclass(frozen=True)
class DecoderRun:
    model: str
    """Which of MODELS decodes."""
    decoder: str
    options: dict = field(default_factory=dict)
    """Decoder knobs (slot_size, blocks, slot_threshold, token_threshold, block_length, threshold)."""

    @property
    def name(self) -> str:
        """A directory-safe name: 'refusion-k4-B2-t0.9-0.4'."""
        short = {"slot_size": "k", "blocks": "B", "block_length": "bl", "threshold": "t"}
        parts = [self.decoder] + [f"{short[k]}{v}" for k, v in self.options.items() if k in short]
        if "slot_threshold" in self.options:
            parts.append(f"t{self.options['slot_threshold']}-{self.options['token_threshold']}")
        return "-".join(parts)


def paper_runs(slot_size: int, blocks: int, thresholds: list[tuple[float, float]], block_length: int,
               max_new_tokens: int) -> list[DecoderRun]:
    """The paper's comparison: ARM with ar; MDM with mdm and fast-dllm; each ReFusion model with refusion (each
    threshold pair, then one slot per block: the paper's left-to-right variant), ar and lossless."""
    runs = [DecoderRun("arm", "ar"), DecoderRun("arm-longer", "ar"),
            DecoderRun("mdm", "mdm", {"block_length": block_length}),
            DecoderRun("mdm", "fast-dllm", {"block_length": block_length, "threshold": 0.9})]
    strict = {"slot_threshold": thresholds[0][0], "token_threshold": thresholds[0][1]}
    for model in REFUSION_MODELS:
        runs += [DecoderRun(model, "refusion", {"slot_size": slot_size, "blocks": blocks, "slot_threshold": slot,
                                                "token_threshold": token}) for slot, token in thresholds]
        runs.append(DecoderRun(model, "refusion", {"slot_size": slot_size, "blocks": max_new_tokens // slot_size, **strict}))
        runs.append(DecoderRun(model, "ar"))
        runs.append(DecoderRun(model, "lossless"))
    return runs


@dataclass
class ReproConfig:
    output: Path
    steps: int = 1500
    """Optimizer steps per model trained from scratch (identical for all three)."""
    finetune_steps: int = 1500
    """Optimizer steps of the models in FINE_TUNED_FROM, on top of their starting model's; 0 leaves them out."""
    finetune_lr: float = 5e-4
    train_size: int = 20000
    """Training problems per task family."""
    test_limit: int = 200
    """Held-out problems evaluated per task (the first N of each test split)."""
    threads: int = 1
    """CPU threads for training and decoding. On a shared 2-core machine one is faster (no spinning threads
    fighting other processes) and keeps timings stable; a model this small gains little from more."""
    hidden: int = 192
    intermediate: int = 512
    layers: int = 4
    heads: int = 4
    vocab_size: int = 512
    batch_size: int = 32
    lr: float = 2e-3
    max_new_tokens: int = 64
    dtype: str = "float32"
    """Weights' dtype for every decoder run: bf16 gains nothing at this size, and one dtype keeps the rows comparable."""
    seed: int = 0
    save_every: int = 250
    """Checkpoint interval in steps: what an interrupted training resumes from."""
    runs: list[DecoderRun] = field(default_factory=lambda: paper_runs(4, 2, [(0.9, 0.4), (0.7, 0.3), (0.5, 0.1)], 32, 64))

    def check(self) -> None:
        from ..errors import RefusionError

        for name in ("steps", "train_size", "test_limit"):
            if getattr(self, name) < 1:
                raise RefusionError(f"{name.replace('_', '-')} must be a positive integer, got {getattr(self, name)}")
        if self.finetune_steps < 0:
            raise RefusionError(f"finetune-steps must be 0 (no fine-tuned model) or more, got {self.finetune_steps}")

    def models(self) -> list[str]:
        """The models this run trains, in training order (a fine-tuned one after the model it starts from)."""
        return [name for name in MODELS if name not in FINE_TUNED_FROM or self.finetune_steps > 0]

    def decoder_runs(self) -> list[DecoderRun]:
        models = set(self.models())
        return [run for run in self.runs if run.model in models]


def quick_config(output: Path) -> ReproConfig:
    """A tiny version of everything (about a minute on two cores): checks the pipeline, not the method."""
    return ReproConfig(output=output, steps=6, finetune_steps=3, train_size=64, test_limit=2, hidden=32, intermediate=64,
                       layers=2, heads=4, vocab_size=300, batch_size=8, lr=3e-3, max_new_tokens=16, save_every=6,
                       runs=paper_runs(4, 2, [(0.9, 0.4), (0.5, 0.1)], 8, 16))


# --- data and initial model -----------------------------------------------------------------------


def write_data(config: ReproConfig) -> Path:
    """data/train.jsonl (both families, shuffled) and data/test-<task>.jsonl; returns the train file."""
    directory = config.output / "data"
    train_file = directory / "train.jsonl"
    if train_file.is_file():
        return train_file
    directory.mkdir(parents=True, exist_ok=True)
    rows = []
    for task, family in FAMILIES.items():
        test_size = _task_module(task).SIZE
        train, test = family.split(_task_module(task).SEED, test_size, config.train_size)
        rows += [{"task": task, "query": family.question(item), "response": family.solution(item)} for item in train]
        _write_jsonl(directory / f"test-{task}.jsonl",
                     [{"task": task, "query": family.question(item), "response": family.solution(item)} for item in test])
    random.Random(config.seed).shuffle(rows)
    _write_jsonl(train_file, rows)  # last: its presence says the data is complete
    return train_file


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _task_module(task: str):
    from ..eval.tasks import get_task

    return get_task(task)


def build_initial_model(config: ReproConfig, train_file: Path) -> Path:
    """init/: a randomly initialised Llama (seeded) and the tokenizer built from the training text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from .tokenizer import build_tokenizer

    directory = config.output / "init"
    if (directory / "config.json").is_file():
        return directory
    rows = [json.loads(line) for line in train_file.read_text(encoding="utf-8").splitlines()]
    tokenizer = build_tokenizer((f"{row['query']}\n{row['response']}" for row in rows), config.vocab_size)
    shape = LlamaConfig(vocab_size=len(tokenizer), hidden_size=config.hidden, intermediate_size=config.intermediate,
                        num_hidden_layers=config.layers, num_attention_heads=config.heads,
                        num_key_value_heads=config.heads, max_position_embeddings=256, tie_word_embeddings=True,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(config.seed)
    model = LlamaForCausalLM(shape)
    with staged_directory(directory) as staging:  # an interrupted run leaves no half-made init/
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    return directory


# --- training -------------------------------------------------------------------------------------


def is_trained(directory: Path) -> bool:
    return (directory / "model.safetensors").is_file() and (directory / "config.json").is_file()


def fine_tune_steps(config: ReproConfig, name: str) -> int:
    return config.finetune_steps * STEP_MULTIPLES.get(name, 1)


def train_model(config: ReproConfig, name: str, init: Path, train_file: Path) -> Path:
    """Train one model with `refusion.training.train` (resuming from its last checkpoint); drop checkpoints after.

    MDM responses are EOS-padded to the generation length, as LLaDA's SFT does, so that it learns to stop.
    """
    from ..training.trainer import TrainConfig, last_complete_checkpoint, train

    directory = config.output / name
    if is_trained(directory):
        return directory
    fine_tune = name in FINE_TUNED_FROM
    steps = fine_tune_steps(config, name) if fine_tune else config.steps
    train(TrainConfig(
        model=str(config.output / FINE_TUNED_FROM[name]) if fine_tune else str(init), data=[str(train_file)],
        output=str(directory), objective=MODELS[name], max_steps=steps, lr=config.finetune_lr if fine_tune else config.lr,
        batch_size=config.batch_size, max_length=256, seed=config.seed,
        pad_responses_to=config.max_new_tokens if MODELS[name] == "mdm" else None,
        resume=last_complete_checkpoint(directory) is not None, save_every=config.save_every,
        log_every=max(steps // 50, 1), warmup_ratio=0.05, precision="float32", **RECIPES.get(name, {}),  # as committed
    ))
    for checkpoint in directory.glob("checkpoint-*"):
        shutil.rmtree(checkpoint)  # optimizer state: large, and the final model is saved beside it
    return directory


# --- evaluation -----------------------------------------------------------------------------------


def run_directory(config: ReproConfig, run: DecoderRun, task: str) -> Path:
    return config.output / run.model / "eval" / task / run.name


def evaluate_runs(config: ReproConfig, progress: bool = True) -> list[dict]:
    """Every (run, task) through `refusion.eval.evaluate`; finished ones are read back from summary.json."""
    from tqdm.auto import tqdm

    from ..eval import evaluate
    from ..model import load

    summaries, loaded = [], {}
    pairs = [(run, task) for run in config.decoder_runs() for task in FAMILIES]
    for run, task in tqdm(pairs, desc="decoder runs", unit="run", disable=not progress, dynamic_ncols=True):
        directory = run_directory(config, run, task)
        summary_file = directory / "summary.json"
        if not summary_file.is_file():
            if run.model not in loaded:
                loaded = {run.model: load(config.output / run.model, dtype=config.dtype)}  # one model in memory at a time
            model, tokenizer = loaded[run.model]
            evaluate(model, tokenizer, task, decoder=run.decoder, limit=config.test_limit,
                     max_new_tokens=config.max_new_tokens, output=directory, progress=progress,
                     model_name=str(config.output / run.model), resume=True, **run.options)
        summary = json.loads(summary_file.read_text())
        summaries.append({**summary, "model": run.model, "objective": MODELS[run.model], "run": run.name,
                          "options": run.options, "directory": str(directory)})
    return summaries


def run(config: ReproConfig, progress: bool = True, log=print) -> list[dict]:
    """Data, tokenizer, the models, every decoder run; see the module docstring."""
    import torch

    config.check()
    torch.set_num_threads(config.threads)
    config.output.mkdir(parents=True, exist_ok=True)
    log(f"[1/3] data and tokenizer in {config.output}")
    train_file = write_data(config)
    init = None
    models = config.models()
    for index, name in enumerate(models, start=1):
        directory = config.output / name
        if is_trained(directory):
            log(f"[2/3] model {index}/{len(models)}: {name} already trained, skipped")
            continue
        init = init or build_initial_model(config, train_file)
        start = f"from {FINE_TUNED_FROM[name]}, {fine_tune_steps(config, name)}" if name in FINE_TUNED_FROM else f"{config.steps}"
        log(f"[2/3] model {index}/{len(models)}: training {name} ({MODELS[name]} objective, {start} steps)")
        train_model(config, name, init, train_file)
    if (config.output / "init").is_dir():
        shutil.rmtree(config.output / "init")  # every model carries its own copy of the tokenizer
    log(f"[3/3] evaluating {len(config.decoder_runs())} decoder runs on {len(FAMILIES)} tasks, {config.test_limit} problems each")
    return evaluate_runs(config, progress)
