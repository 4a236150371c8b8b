"""The loss history of a run: `loss.json` and a loss-curve PNG, from the Trainer's log history.

Knows nothing about objectives or models; it only reads `{"step", "loss", "learning_rate"}` records.
"""

from __future__ import annotations

import json
from pathlib import Path


def loss_records(log_history: list[dict]) -> list[dict]:
    """The training-loss entries of a Trainer log history, in step order."""
    return [{"step": int(e["step"]), "loss": float(e["loss"]), "learning_rate": float(e.get("learning_rate", 0.0))}
            for e in log_history if "loss" in e and "step" in e]


def write_history(output: Path, log_history: list[dict], summary: dict) -> list[dict]:
    """Write `loss.json` ({**summary, "history": [...]}) and `loss.png`; return the history."""
    history = loss_records(log_history)
    (output / "loss.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    if history:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([h["step"] for h in history], [h["loss"] for h in history])
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.set_title(f"{summary.get('objective', '')} objective")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        figure.savefig(output / "loss.png", dpi=100)
        plt.close(figure)
    return history
