"""Loading a LoRA output directory: a PEFT adapter applied on top of its base model.

The adapter's `base_model_name_or_path` may be a built-in name, a directory or a hub id. The
tokenizer saved beside the adapter (which knows `<|mask|>`) wins over the base's.
"""

from __future__ import annotations

import json
from pathlib import Path


def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / "adapter_config.json").is_file()


def load_adapter_dir(path: Path, dtype, load_base):
    from peft import PeftModel
    from transformers import AutoTokenizer

    from .model import add_mask_token

    path = Path(path)
    base_name = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    model, tokenizer = load_base(base_name, dtype=dtype)
    if (path / "tokenizer_config.json").is_file():
        tokenizer = AutoTokenizer.from_pretrained(path)
    add_mask_token(model, tokenizer)
    model = PeftModel.from_pretrained(model, path).merge_and_unload()
    return model, tokenizer
