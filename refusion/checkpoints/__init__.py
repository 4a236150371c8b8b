"""Checkpoints that ship inside the package (small adapters loaded on top of a built-in base)."""
