"""The loss history of a run: `loss.json` and a loss-curve PNG, from the Trainer's log history.

Knows nothing about objectives or models; it only reads `{"step", "loss" | "eval_loss", "learning_rate",
"elapsed_seconds", "loss_ar", "loss_mdm"}` records; a value that is not finite is written as null.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..files import staged_file, write_text


TERMS = {"loss_ar": "L_AR", "loss_mdm": "L_MDM"}
"""The refusion objective's two terms, logged beside their sum."""


def number(value) -> float | None:
    """A logged value as a float, None when it is not finite (JSON has no NaN or infinity)."""
    value = float(value)
    return value if math.isfinite(value) else None


def loss_records(log_history: list[dict]) -> list[dict]:
    """The training-loss entries of a Trainer log history, in step order."""
    return [{"step": int(e["step"]), "loss": number(e["loss"]), "learning_rate": number(e.get("learning_rate", 0.0)),
             "elapsed_seconds": e.get("elapsed_seconds"), **{term: number(e[term]) for term in TERMS if term in e}}
            for e in log_history if "loss" in e and "step" in e]


def eval_records(log_history: list[dict]) -> list[dict]:
    """The held-out-loss entries, in step order."""
    return [{"step": int(e["step"]), "eval_loss": number(e["eval_loss"]), "elapsed_seconds": e.get("elapsed_seconds")}
            for e in log_history if "eval_loss" in e and "step" in e]


def write_history(output: Path, log_history: list[dict], summary: dict) -> dict[str, list[dict]]:
    """Write `loss.json` ({**summary, "history": [...], "eval_history": [...]}) and `loss.png`.

    elapsed_seconds counts from the start of this process's training (a resumed run starts again at 0).
    """
    history = {"train": loss_records(log_history), "eval": eval_records(log_history)}
    write_text(output / "loss.json", json.dumps({**summary, "history": history["train"], "eval_history": history["eval"]},
                                                indent=1, allow_nan=False))
    if history["train"] or history["eval"]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.5))
        axis.plot([h["step"] for h in history["train"]], [h["loss"] for h in history["train"]], label="training")
        for term, label in TERMS.items():
            logged = [h for h in history["train"] if term in h]
            if logged:
                axis.plot([h["step"] for h in logged], [h[term] for h in logged], "--", label=f"training {label}")
        if history["eval"]:
            axis.plot([h["step"] for h in history["eval"]], [h["eval_loss"] for h in history["eval"]], "o-",
                      label="held out")
        if len(axis.get_lines()) > 1:
            axis.legend()
        axis.set_xlabel("step")
        axis.set_ylabel("loss")
        axis.set_title(f"{summary.get('objective', '')} objective")
        axis.grid(alpha=0.3)
        figure.tight_layout()
        with staged_file(output / "loss.png") as staging:
            figure.savefig(staging, dpi=100, format="png")
        plt.close(figure)
    return history
