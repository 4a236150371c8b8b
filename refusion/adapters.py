"""Loading a LoRA output directory: a PEFT adapter applied on top of its base model.

The adapter's `base_model_name_or_path` may be a built-in name, a directory or a hub id. The mask
token is added to the base exactly as training added it (same id, same initial rows); the adapter
then carries the trained LoRA weights and the mask token's trained embedding/output rows.
`refusion.json` beside the adapter records the objective (`config.refusion_objective`). The
tokenizer saved beside the adapter wins over the base's.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .errors import RefusionError
from .special_tokens import add_mask_token, mask_token_id

SIDECAR = "refusion.json"
"""What a LoRA output directory records beside the adapter: the objective and the mask id it was trained with."""


def write_sidecar(directory: Path, objective: str, mask_id: int | None) -> None:
    (Path(directory) / SIDECAR).write_text(json.dumps({"refusion_objective": objective, "mask_token_id": mask_id}, indent=2))


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def _base_with_mask(path: Path, dtype, load_base):
    """The adapter's base, with the mask token added exactly as training added it; (model, tokenizer, base name, sidecar)."""
    from transformers import AutoTokenizer

    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    model, base_tokenizer = load_base(base_name, dtype=dtype)
    sidecar = json.loads((path / SIDECAR).read_text()) if (path / SIDECAR).is_file() else {}
    tokenizer = AutoTokenizer.from_pretrained(path) if (path / "tokenizer_config.json").is_file() else base_tokenizer
    trained_mask = sidecar.get("mask_token_id", mask_token_id(model, tokenizer))
    if trained_mask is not None:
        added = add_mask_token(model, base_tokenizer)  # the same resize and initial rows as in training
        if added != trained_mask:
            raise RefusionError(f"{path}: the adapter was trained with mask id {trained_mask}, but base {base_name!r} gives {added}")
        model.config.mask_token_id = trained_mask
    return model, tokenizer, base_name, sidecar


def _with_adapter(model, path: Path, trainable: bool):
    from peft import PeftModel

    with warnings.catch_warnings():  # PEFT still calls a transformers API deprecated for v6: not the user's concern
        warnings.simplefilter("ignore", FutureWarning)
        return PeftModel.from_pretrained(model, path, is_trainable=trainable)


def load_adapter_dir(path: Path, dtype, load_base):
    path = Path(path)
    model, tokenizer, _, sidecar = _base_with_mask(path, dtype, load_base)
    model = _with_adapter(model, path, trainable=False).merge_and_unload()
    if sidecar.get("refusion_objective"):
        model.config.refusion_objective = sidecar["refusion_objective"]
    return model, tokenizer


def trainable_adapter(path: Path, dtype, load_base):
    """The adapter in `path` over its base, unmerged and trainable (to continue a conversion); (model, tokenizer, base name)."""
    path = Path(path)
    model, tokenizer, base_name, _ = _base_with_mask(path, dtype, load_base)
    return _with_adapter(model, path, trainable=True), tokenizer, base_name
