"""refusion: diffusion language models with parallel autoregressive decoding, for any HF causal LM.

    import refusion
    model, tokenizer = refusion.load("refusion-smollm2-135m")
    out = refusion.generate(model, tokenizer, refusion.encode_prompt(tokenizer, "Hi"), decoder="refusion")

Names are imported on first use, so that `refusion --help` does not wait for torch.
"""

from importlib import import_module

from .errors import RefusionError

_EXPORTS = {
    "DECODERS": ".decoding",
    "Generation": ".decoding",
    "PrefixStream": ".decoding",
    "generate": ".decoding",
    "register_decoder": ".decoding",
    "add_mask_token": ".special_tokens",
    "load": ".model",
    "mask_token_id": ".special_tokens",
    "encode_prompt": ".prompting",
}

__all__ = ["RefusionError", "train", *_EXPORTS]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'refusion' has no attribute {name!r}")


def train(config):
    """Fine-tune with the refusion, ar or mdm objective; `config` is a `refusion.training.trainer.TrainConfig`."""
    from .training.trainer import train as run_training

    return run_training(config)
