"""Building training data here: templated instructions answered by the base model (self-distillation)."""

from .instructions import build_instructions

__all__ = ["build_instructions"]
