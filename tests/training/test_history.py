"""loss.json is strict JSON whatever the Trainer logged: a value that is not finite becomes null."""

import json
import math

from refusion.training.history import write_history


def strict_json(text: str):
    def reject(constant):
        raise ValueError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=reject)


def test_losses_that_are_not_finite_are_written_as_null(tmp_path):
    log = [{"step": 1, "loss": 2.5, "learning_rate": 1e-4, "loss_ar": math.inf, "loss_mdm": 1.0},
           {"step": 2, "eval_loss": math.nan},
           {"step": 2, "loss": math.nan, "learning_rate": 1e-4}]
    history = write_history(tmp_path, log, {"objective": "refusion"})
    saved = strict_json((tmp_path / "loss.json").read_text())
    assert [entry["loss"] for entry in saved["history"]] == [2.5, None]
    assert saved["history"][0]["loss_ar"] is None and saved["history"][0]["loss_mdm"] == 1.0
    assert saved["eval_history"] == [{"step": 2, "eval_loss": None, "elapsed_seconds": None}]
    assert history["train"] == saved["history"] and (tmp_path / "loss.png").is_file()
