"""refusion: diffusion language models with parallel autoregressive decoding, for any HF causal LM."""

from .decoding import DECODERS, Generation, PrefixStream, generate, register_decoder
from .errors import RefusionError
from .model import add_mask_token, load, mask_token_id
from .prompting import encode_prompt

__all__ = [
    "DECODERS",
    "Generation",
    "PrefixStream",
    "RefusionError",
    "add_mask_token",
    "encode_prompt",
    "generate",
    "load",
    "mask_token_id",
    "register_decoder",
]
__version__ = "0.1.0"
