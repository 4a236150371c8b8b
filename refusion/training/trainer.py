"""`train`: fine-tune a causal LM with the refusion, ar or mdm objective on Hugging Face `Trainer`.

`ObjectiveTrainer` overrides only `compute_loss`; the collator builds the objective's inputs. The
output directory loads with `refusion.load`: a full save (safetensors + tokenizer, with
`config.refusion_objective` and `config.mask_token_id`), or with LoRA a PEFT adapter that also
trains the mask token's embedding and output rows, plus `refusion.json`. Runs on one CPU/GPU or
under `accelerate launch` (DDP).
"""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from transformers import Trainer, TrainingArguments

from ..attention import bidirectional_mask
from ..checks import output_dir
from ..errors import RefusionError
from ..files import move_files_into
from ..adapters import is_adapter_dir, trainable_adapter, write_sidecar
from ..hardware import default_dtype
from ..model import BUILTIN_CHECKPOINTS, BUILTIN_GGUF, load, local_path
from ..special_tokens import add_mask_token
from .collate import ObjectiveCollator
from .data import encode_pairs, read_pairs
from .history import write_history
from .objectives import BIDIRECTIONAL, OBJECTIVES, objective_terms, total_loss

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
"""Default LoRA targets: the attention projections of Llama/Qwen-style models."""
PRECISIONS = ("auto", "float32", "bfloat16")
"""Training precision: float32, or bf16 mixed precision (float32 weights, bf16 matrix products); auto = bf16
where the hardware computes it natively (a CUDA GPU with bf16, or a CPU with AVX512-BF16 or AMX)."""
EVAL_SEED = 1234
"""Seed of the held-out masks: every evaluation of every run scores the same masked inputs."""


@dataclass
class TrainConfig:
    model: str
    """Base model: a directory, a built-in name or a hub id."""
    data: list[str]
    """JSON / JSONL files of {query, response} or {messages} records."""
    output: str
    """Output directory; checkpoints go to output/checkpoint-N."""
    objective: str = "refusion"
    """refusion (hybrid AR + masked diffusion), ar (next token) or mdm (LLaDA-style, bidirectional)."""
    max_steps: int | None = None
    """Optimizer steps; overrides epochs when set."""
    epochs: float = 1.0
    lr: float = 2e-5
    batch_size: int = 8
    """Examples per device per step."""
    grad_accum: int = 1
    max_length: int = 4096
    """Longer examples (prompt + response + EOS) are skipped."""
    lora_rank: int | None = None
    """LoRA rank; None = full fine-tune."""
    lora_targets: list[str] | str | None = None
    """Modules LoRA adapts: names such as ["q_proj", "up_proj"], or "all-linear" (every linear layer but the
    output head, as PEFT defines it); None = LORA_TARGETS."""
    continue_adapter: bool = False
    """`model` is a LoRA output directory (or a built-in ReFusion checkpoint): train its adapter further, keeping
    its rank and layers, instead of merging it into its base; the output is again an adapter over that base."""
    slot_sizes: tuple[int, ...] = (4, 8, 16, 32)
    mdm_weight: float = 1.0
    """lambda in L_AR + lambda L_MDM (refusion objective)."""
    prefix_share: float = 0.0
    """refusion objective: the share of examples laid out as the left-to-right decoders see them (a clean prefix of
    slots in order, a masked tail); 0 is the paper's recipe."""
    ar_across_slots: bool = False
    """refusion objective: a clean slot's last token also predicts the next slot's first token when that token is
    hidden from it; off is the paper's recipe."""
    draft_horizon: int | None = None
    """refusion objective, prefix layout: keep only the first H masked tokens of the tail (None: all of them)."""
    next_token_share: float = 0.0
    """refusion objective: the share of examples trained as plain next-token examples over the whole response (no
    masks), so that every answer position keeps next-token training; 0 is the paper's recipe."""
    pad_responses_to: int | None = None
    """mdm objective: pad responses with EOS to at least this many tokens (always to the batch's longest)."""
    precision: str = "auto"
    """One of PRECISIONS."""
    seed: int = 0
    resume: bool = False
    """Continue from the last checkpoint in `output`."""
    save_every: int = 200
    log_every: int = 10
    warmup_ratio: float = 0.0
    eval_data: list[str] | None = None
    """Held-out files of the same format: the objective's loss on them is logged every `eval_every` steps."""
    eval_every: int | None = None
    """Steps between held-out evaluations (default: save_every)."""

    def check(self) -> None:
        if self.objective not in OBJECTIVES:
            raise RefusionError(f"unknown objective {self.objective!r}; choose one of: {', '.join(OBJECTIVES)}")
        positive = {"batch-size": self.batch_size, "grad-accum": self.grad_accum, "max-length": self.max_length,
                    "save-every": self.save_every, "log-every": self.log_every}
        if self.max_steps is not None:
            positive["max-steps"] = self.max_steps
        if self.eval_every is not None:
            positive["eval-every"] = self.eval_every
        if self.lora_rank is not None:
            positive["lora-rank"] = self.lora_rank
        if self.draft_horizon is not None:
            positive["draft-horizon"] = self.draft_horizon
        for name, value in positive.items():
            if value < 1:
                raise RefusionError(f"{name} must be a positive integer, got {value}")
        for name, value in {"lr": self.lr, "epochs": self.epochs, "warmup-ratio": self.warmup_ratio,
                            "mdm-weight": self.mdm_weight, "prefix-share": self.prefix_share,
                            "next-token-share": self.next_token_share}.items():
            if not math.isfinite(value):
                raise RefusionError(f"{name} must be a finite number, got {value}")
        if self.max_steps is None and self.epochs <= 0:
            raise RefusionError(f"epochs must be positive, got {self.epochs}")
        if not 0 <= self.warmup_ratio < 1:
            raise RefusionError(f"warmup-ratio must lie in [0, 1), got {self.warmup_ratio}")
        if self.lr <= 0:
            raise RefusionError(f"lr must be positive, got {self.lr}")
        if not 0 <= self.seed < 2**32:
            raise RefusionError(f"seed must lie in [0, {2**32 - 1}], got {self.seed}")
        if not self.slot_sizes or min(self.slot_sizes) < 1:
            raise RefusionError(f"slot sizes must be positive integers, got {list(self.slot_sizes)}")
        if self.pad_responses_to is not None and (self.objective != "mdm" or self.pad_responses_to < 1):
            raise RefusionError(f"pad-responses-to must be a positive integer (mdm objective only), got "
                                f"{self.pad_responses_to} with the {self.objective} objective")
        if self.mdm_weight < 0:
            raise RefusionError(f"mdm-weight must be >= 0, got {self.mdm_weight}")
        if not 0 <= self.prefix_share <= 1:
            raise RefusionError(f"prefix-share must lie in [0, 1], got {self.prefix_share}")
        if not 0 <= self.next_token_share < 1:
            raise RefusionError(f"next-token-share must lie in [0, 1) (1 would be the ar objective), got {self.next_token_share}")
        if self.objective != "refusion" and (self.prefix_share or self.ar_across_slots or self.draft_horizon
                                             or self.next_token_share):
            raise RefusionError("prefix-share, ar-across-slots, draft-horizon and next-token-share apply to the refusion objective only, "
                                f"not {self.objective}")
        if self.draft_horizon is not None and not self.prefix_share:
            raise RefusionError("draft-horizon shortens the prefix layout's masked tail: it needs --prefix-share above 0")
        if self.lora_targets is not None and (self.lora_rank is None or not self.lora_targets):
            raise RefusionError("lora-targets needs --lora-rank and at least one module name")
        if self.continue_adapter and self.lora_rank is not None:
            raise RefusionError("continue-adapter keeps the adapter's own rank and layers: drop --lora-rank and --lora-targets")
        if self.precision not in PRECISIONS:
            raise RefusionError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        output_dir(self.output)

    @property
    def trains_adapter(self) -> bool:
        return self.lora_rank is not None or self.continue_adapter

    def mixed_bf16(self) -> bool:
        if self.precision == "auto":
            return default_dtype() is torch.bfloat16  # the machine's inference default: bf16 where computed natively
        return self.precision == "bfloat16"


class ObjectiveTrainer(Trainer):
    """A `Trainer` whose loss is one of `refusion.training.objectives`."""

    loss_is_scaled_for_ga = False  # our loss is a per-micro-batch mean: let Trainer divide by grad-accum

    def __init__(self, *args, objective: str, mdm_weight: float = 1.0, adapter_base: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.mdm_weight = mdm_weight
        self.adapter_base = adapter_base  # set for an adapter: every checkpoint records it, so that it loads too
        self.started = time.monotonic()
        self.term_sums: dict[str, torch.Tensor] = {}  # the refusion objective's two terms since the last log
        self.term_count = 0

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        logs["elapsed_seconds"] = round(time.monotonic() - self.started, 1)  # loss against wall-clock time
        if "loss" in logs and self.term_count:
            # L_AR and L_MDM apart (this process's micro-batches): which half still has to learn
            logs.update({f"loss_{name}": round(float(total) / self.term_count, 4) for name, total in self.term_sums.items()})
            self.term_sums, self.term_count = {}, 0
        super().log(logs, start_time)

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.adapter_base is not None and self.args.should_save:
            record_adapter(Path(output_dir or self.args.output_dir), self.adapter_base, self.objective,
                           getattr(self.model.config, "mask_token_id", None))

    def evaluate(self, *args, **kwargs):
        """The held-out loss, always over the same masks (a fresh collator seeded with EVAL_SEED)."""
        training_collator = self.data_collator
        self.data_collator = replace(training_collator, seed=EVAL_SEED)
        try:
            return super().evaluate(*args, **kwargs)
        finally:
            self.data_collator = training_collator

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        attention_mask = inputs["attention_mask"]  # [B, S]; always given, so HF never guesses packing from position ids
        if self.objective in BIDIRECTIONAL:
            batch, length = attention_mask.shape
            dtype = next(model.parameters()).dtype
            attention_mask = bidirectional_mask(batch, length, length, dtype, attention_mask.device,
                                                key_padding=attention_mask == 0)  # [B, 1, S, S]
        outputs = model(input_ids=inputs["input_ids"], position_ids=inputs["position_ids"],
                        attention_mask=attention_mask, use_cache=False)
        terms = objective_terms(self.objective, outputs.logits, inputs)
        loss = total_loss(self.objective, terms, self.mdm_weight)
        if model.training:
            # Stop before the optimizer step writes it into the weights: nothing with NaN in it is saved.
            # Every process learns of it (a process stopping alone would leave the others waiting).
            bad = (~torch.isfinite(loss.detach())).float()
            if self.args.world_size > 1:
                bad = self.accelerator.reduce(bad, reduction="sum")
            if bad.item():
                raise RefusionError(f"the training loss is not finite at step {self.state.global_step + 1}; "
                                    "stopped without saving (lower --lr or --mdm-weight)")
        if model.training and len(terms) > 1:  # summed on the device: read back only when logged
            for name, value in terms.items():
                self.term_sums[name] = self.term_sums.get(name, 0) + value.detach()
            self.term_count += 1
        return (loss, outputs) if return_outputs else loss


def record_adapter(directory: Path, base_name: str, objective: str, mask_id: int | None) -> None:
    """What an adapter directory needs to load with `refusion.load`: its base's name (PEFT saved none) and the sidecar."""
    adapter_config = directory / "adapter_config.json"
    saved = json.loads(adapter_config.read_text())
    saved["base_model_name_or_path"] = base_name
    adapter_config.write_text(json.dumps(saved, indent=2))
    write_sidecar(directory, objective, mask_id)


def _base_name(name: str) -> str:
    """What an adapter records as its base: built-in names and hub ids as given, directories absolute."""
    path = Path(name).expanduser()
    return name if name in BUILTIN_GGUF or not path.exists() else str(path.resolve())


def _module_name(model, module) -> str:
    return next(name for name, candidate in model.named_modules() if candidate is module)


def _with_lora(model, rank: int, mask_id: int | None, targets: list[str] | str | None = None):
    from peft import LoraConfig, get_peft_model

    indices = None
    if mask_id is not None:
        embedding = _module_name(model, model.get_input_embeddings()).split(".")[-1]
        indices = {embedding: [mask_id]}
        output = model.get_output_embeddings()
        if output is not None and output.weight is not model.get_input_embeddings().weight:
            indices[_module_name(model, output)] = [mask_id]  # untied head: its mask row is trained too
    targets = targets or LORA_TARGETS
    if targets != "all-linear":
        names = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
        missing = sorted(set(targets) - names)
        if missing:
            raise RefusionError(f"lora-targets {', '.join(missing)} name no linear layer of this model; "
                                f"it has: {', '.join(sorted(names))} (or use all-linear)")
    config = LoraConfig(r=rank, lora_alpha=2 * rank, lora_dropout=0.0, target_modules=targets,
                        trainable_token_indices=indices, task_type="CAUSAL_LM")
    return _without_base_name(get_peft_model(model, config))


def _without_base_name(peft_model):
    """No base name while training: PEFT would otherwise save whole resized embedding matrices (and look the name
    up on the hub). The mask rows travel as trainable tokens; `record_adapter` writes the real base name."""
    peft_model.base_model.model.name_or_path = ""  # where PEFT looks the name up again on every save
    peft_model.peft_config["default"].base_model_name_or_path = None
    return peft_model


def _adapter_to_continue(config: TrainConfig):
    """(trainable PEFT model, tokenizer, its base's name) for --continue-adapter."""
    path = local_path(config.model)
    if not is_adapter_dir(path):
        raise RefusionError(f"--continue-adapter needs a LoRA output directory (adapter_config.json) or one of "
                            f"{', '.join(BUILTIN_CHECKPOINTS)}; {config.model} is not one")
    model, tokenizer, base_name = trainable_adapter(path, torch.float32, load)
    if config.objective != "ar" and getattr(model.config, "mask_token_id", None) is None:
        raise RefusionError(f"{config.model} has no mask token: the {config.objective} objective needs one")
    return _without_base_name(model), tokenizer, base_name


def _training_arguments(config: TrainConfig) -> TrainingArguments:
    evaluating = bool(config.eval_data)
    return TrainingArguments(
        eval_strategy="steps" if evaluating else "no",
        eval_steps=(config.eval_every or config.save_every) if evaluating else None,
        eval_on_start=evaluating,  # the starting point of the held-out curve
        per_device_eval_batch_size=config.batch_size,
        output_dir=config.output,
        max_steps=config.max_steps if config.max_steps is not None else -1,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=config.warmup_ratio,  # a float below 1 is a fraction of the total steps
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=config.grad_accum,
        logging_steps=config.log_every,
        save_steps=config.save_every,
        save_total_limit=2,
        seed=config.seed,
        bf16=config.mixed_bf16(),
        # Without a GPU, a multi-process launch (torchrun, `accelerate launch --multi_gpu`) becomes CPU DDP over gloo.
        use_cpu=not torch.cuda.is_available(),
        report_to="none",
        remove_unused_columns=False,
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        disable_tqdm=False,
    )


def last_complete_checkpoint(output: Path) -> str | None:
    """The newest checkpoint-N that was fully written: the Trainer writes trainer_state.json last, and a
    run killed while writing it leaves a file that does not parse."""
    if not output.is_dir():
        return None
    complete = [(int(match.group(1)), path) for path in output.iterdir()
                if (match := re.fullmatch(r"checkpoint-(\d+)", path.name)) and _is_json(path / "trainer_state.json")]
    return str(max(complete)[1]) if complete else None


def _is_json(path: Path) -> bool:
    try:
        json.loads(path.read_text())
        return True
    except (OSError, ValueError):
        return False


def _checkpoint_to_resume(config: TrainConfig) -> str | None:
    output = Path(config.output)
    last = last_complete_checkpoint(output)
    if config.resume:
        if last is None:
            raise RefusionError(f"--resume: no checkpoint-N directory in {output} to resume from")
        return last
    if last is not None:
        raise RefusionError(f"{output} already holds checkpoints; pass --resume to continue, or choose another --output")
    return None


FINAL_STAGING = ".final.partial"
"""Where the final model is written before its files move into --output (the same name in every process)."""


def _save(trainer: ObjectiveTrainer, model, tokenizer, config: TrainConfig, base_name: str) -> None:
    """Write the final model beside --output, then move its files in, the config last: an interruption
    leaves the output without a loadable config (or with the earlier one), never a config over half the weights."""
    output = Path(config.output)
    staging = output / FINAL_STAGING
    if trainer.is_world_process_zero():
        shutil.rmtree(staging, ignore_errors=True)  # left by an earlier interrupted save
    if not config.trains_adapter:
        trainer.save_model(str(staging))
    elif trainer.is_world_process_zero():
        # Only the LoRA weights and the mask token's trained rows: the resized embedding matrices are
        # rebuilt from the base at load time, so the adapter stays a few MB.
        trainer.accelerator.unwrap_model(model).save_pretrained(str(staging), save_embedding_layers=False)
    if not trainer.is_world_process_zero():
        return
    if config.trains_adapter:  # save_model wrote the full model's tokenizer already (the Trainer's processing_class)
        tokenizer.save_pretrained(str(staging))
        record_adapter(staging, base_name, config.objective, getattr(model.config, "mask_token_id", None))
    move_files_into(staging, output, last=("config.json", "adapter_config.json"))
    shutil.rmtree(staging, ignore_errors=True)


def train(config: TrainConfig) -> dict:
    """Fine-tune `config.model` on `config.data`; return a summary (examples, skipped, final loss, output)."""
    config.check()
    resume_from = _checkpoint_to_resume(config)
    made_output = not Path(config.output).exists()
    pairs = read_pairs(config.data)  # a bad data file is reported before the model loads
    eval_pairs = read_pairs(config.eval_data) if config.eval_data else None
    if config.continue_adapter:
        model, tokenizer, base_name = _adapter_to_continue(config)
        mask_id = getattr(model.config, "mask_token_id", None) if config.objective != "ar" else None
    else:
        model, tokenizer = load(config.model, dtype=torch.float32)
        mask_id = add_mask_token(model, tokenizer) if config.objective != "ar" else None
        base_name = _base_name(config.model)
    model.config.refusion_objective = config.objective
    dataset = encode_pairs(pairs, tokenizer, config.max_length, config.data)
    eval_dataset = encode_pairs(eval_pairs, tokenizer, config.max_length, config.eval_data) if eval_pairs else None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if config.lora_rank is not None:
        model = _with_lora(model, config.lora_rank, mask_id, config.lora_targets)

    arguments = _training_arguments(config)
    resumed_step = int(re.search(r"checkpoint-(\d+)$", resume_from).group(1)) if resume_from else 0
    # A fresh stream of masks per process and per resumed run; the Trainer shards the examples.
    collator = ObjectiveCollator(config.objective, pad_id, mask_id, tuple(config.slot_sizes),
                                 prefix_share=config.prefix_share, ar_across_slots=config.ar_across_slots,
                                 draft_horizon=config.draft_horizon, next_token_share=config.next_token_share,
                                 seed=config.seed + 7919 * arguments.process_index + 104729 * resumed_step,
                                 eos_id=tokenizer.eos_token_id, pad_responses_to=config.pad_responses_to)
    trainer = ObjectiveTrainer(model=model, args=arguments, train_dataset=dataset, eval_dataset=eval_dataset,
                               data_collator=collator, processing_class=tokenizer, objective=config.objective,
                               mdm_weight=config.mdm_weight, adapter_base=base_name if config.trains_adapter else None)
    if trainer.is_world_process_zero():
        skipped = f", {dataset.skipped_too_long} skipped (over --max-length {config.max_length})" if dataset.skipped_too_long else ""
        held_out = f", {len(eval_dataset)} held out" if eval_dataset else ""
        print(f"training {config.model} with the {config.objective} objective on {len(dataset)} examples{skipped}{held_out}"
              + (f", resuming from {resume_from}" if resume_from else ""), flush=True)
    try:
        trainer.train(resume_from_checkpoint=resume_from)
    except RefusionError:
        trainer.callback_handler.on_train_end(trainer.args, trainer.state, trainer.control)  # closes the progress bar
        output = Path(config.output)
        if made_output and trainer.is_world_process_zero() and output.is_dir() and not any(output.iterdir()):
            output.rmdir()  # the Trainer made it, and the run left nothing in it
        raise
    _save(trainer, model, tokenizer, config, base_name)
    summary = {"objective": config.objective, "examples": len(dataset), "skipped_too_long": dataset.skipped_too_long,
               "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()}}
    if trainer.is_world_process_zero():
        history = write_history(Path(config.output), trainer.state.log_history, summary)
        summary["final_loss"] = history["train"][-1]["loss"] if history["train"] else None
        if history["eval"]:
            summary["final_eval_loss"] = history["eval"][-1]["eval_loss"]
    summary["output"] = config.output
    return summary
