"""Decoders: ReFusion's plan-and-infill, the autoregressive baseline, and a registry for more."""

from .dispatch import DECODERS, generate, register_decoder
from .generation import Generation
from .streaming import PrefixStream

__all__ = ["DECODERS", "Generation", "PrefixStream", "generate", "register_decoder"]
