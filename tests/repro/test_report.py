"""The report: goal checks against hand-computed numbers, the table and the re-measuring commands."""

from __future__ import annotations

import json
from pathlib import Path

from refusion.repro.pipeline import FINE_TUNED_FROM, MODELS, REFUSION_MODELS, DecoderRun, paper_runs
from refusion.repro.report import LABELS, conversion_checks, goal_checks, markdown, table_rows, write_report


def _row(model, decoder, accuracy, tps, options=None, task="mini-json"):
    run = DecoderRun(model, decoder, options or {})
    objective = "ar" if model.startswith("arm") else "mdm" if model == "mdm" else "refusion"
    return {"task": task, "model": model, "objective": objective, "decoder": decoder,
            "run": run.name, "options": run.options, "accuracy": accuracy, "correct": int(accuracy * 100),
            "samples": 100, "tokens_per_second": tps, "tokens_per_forward": 1.0, "forward_passes": 40.0,
            "new_tokens": 40.0}


def test_run_names_are_distinct_and_readable():
    runs = paper_runs(4, 2, [(0.9, 0.4), (0.5, 0.1)], 32, 64)
    names = [(run.model, run.name) for run in runs]
    assert len(set(names)) == len(names)
    assert ("refusion", "refusion-k4-B2-t0.9-0.4") in names and ("mdm", "fast-dllm-bl32-t0.9") in names
    # left-to-right variant: one 4-token slot per block over 64 tokens, at the strictest thresholds
    assert ("refusion-from-arm", "refusion-k4-B16-t0.9-0.4") in names
    assert [run.model for run in runs] == ["arm", "arm-longer", "mdm", "mdm"] + [model for model in REFUSION_MODELS for _ in range(5)]
    assert [run.decoder for run in runs[4:9]] == ["refusion"] * 3 + ["ar", "lossless"]


def test_finetune_steps_zero_leaves_the_fine_tuned_model_and_its_runs_out(tmp_path):
    from refusion.repro.pipeline import ReproConfig

    config = ReproConfig(output=tmp_path, finetune_steps=0)
    assert config.models() == ["arm", "mdm", "refusion"]
    assert {run.model for run in config.decoder_runs()} == {"arm", "mdm", "refusion"}
    assert set(FINE_TUNED_FROM) <= set(ReproConfig(output=tmp_path).models())


def test_goal_checks_compare_each_refusion_setting_with_arm_and_mdm():
    rows = [_row("arm", "ar", 0.80, 100.0), _row("mdm", "mdm", 0.50, 20.0),
            _row("refusion", "refusion", 0.79, 250.0, {"slot_threshold": 0.9, "token_threshold": 0.4}),
            _row("refusion", "refusion", 0.70, 150.0, {"slot_threshold": 0.5, "token_threshold": 0.1}),
            _row("refusion", "ar", 0.81, 90.0),
            _row("refusion-from-arm", "refusion", 0.80, 210.0, {"slot_threshold": 0.9, "token_threshold": 0.4})]
    checks = goal_checks(rows)
    assert len(checks) == 3  # only plan-and-infill rows are checked, of both ReFusion models
    first, second, third = checks
    assert third["run"] == "ReFusion from ARM refusion-t0.9-0.4" and third["arm_goal"] is True
    assert third["speedup_vs_arm"] == 2.1  # it has no ar row: ARM's pace, 210 / 100
    # 79 - 80 = -1 point (within 2) at 250 / 90 = 2.78x (the pace of its own ar, ARM's shape); vs MDM +29 points at 12.5x
    assert (first["points_vs_arm"], first["speedup_vs_arm"], first["arm_goal"]) == (-1.0, 2.78, True)
    assert (first["points_vs_mdm"], first["speedup_vs_mdm"], first["mdm_goal"]) == (29.0, 12.5, True)
    # 70 - 80 = -10 points at 150 / 90 = 1.67x misses; vs MDM +20 points at 7.5x meets
    assert (second["points_vs_arm"], second["speedup_vs_arm"], second["arm_goal"]) == (-10.0, 1.67, False)
    assert second["mdm_goal"] is True


def test_lossless_rows_are_checked_and_the_conversion_check_reads_each_converted_models_ar():
    rows = [_row("arm", "ar", 0.90, 100.0), _row("mdm", "mdm", 0.10, 50.0),
            _row("refusion-from-arm", "lossless", 0.89, 300.0), _row("refusion-from-arm", "ar", 0.89, 100.0),
            _row("refusion-from-arm-prefix", "ar", 0.85, 100.0), _row("refusion", "ar", 0.20, 100.0)]
    (lossless,) = goal_checks(rows)
    assert (lossless["points_vs_arm"], lossless["speedup_vs_arm"], lossless["arm_goal"]) == (-1.0, 3.0, True)
    kept = conversion_checks(rows)  # ReFusion from scratch is no conversion: not checked
    assert [(c["model"], c["points_vs_start"], c["kept"]) for c in kept] == [
        ("ReFusion from ARM", -1.0, True), ("ReFusion from ARM, prefix layout", -5.0, False)]
    text = markdown(table_rows(rows, Path("out"), 100, 64, "float32"), goal_checks(rows), {"command": "c", "description": "d"}, kept)
    assert "| mini-json | ReFusion from ARM, prefix layout | ARM | -5.0 | no | n/a |" in text and "--dtype float32 --json" in text


def test_the_conversion_check_compares_with_arm_trained_as_long():
    rows = [_row("arm", "ar", 0.50, 100.0), _row("arm-longer", "ar", 0.60, 100.0),
            _row("refusion-from-arm", "ar", 0.55, 100.0), _row("refusion-from-arm", "ar", 0.30, 100.0, task="mini-gsm8k")]
    kept = conversion_checks(rows)  # no ARM rows on mini-gsm8k: nothing to compare with there
    assert [(c["task"], c["points_vs_start"], c["points_vs_arm_longer"], c["kept"]) for c in kept] == [("mini-json", 5.0, -5.0, True)]
    text = markdown(table_rows(rows, Path("out"), 100, 64), goal_checks(rows), {"command": "c", "description": "d"}, kept)
    assert "| mini-json | ReFusion from ARM | ARM | 5.0 | yes | -5.0 |" in text


def test_a_conversion_of_arm_trained_longer_is_held_against_it():
    rows = [_row("arm", "ar", 0.50, 100.0), _row("arm-longer", "ar", 0.99, 200.0), _row("mdm", "mdm", 0.10, 50.0),
            _row("refusion-from-arm-longer", "ar", 0.90, 200.0), _row("refusion-from-arm-longer", "lossless", 0.90, 500.0),
            _row("refusion", "lossless", 0.49, 300.0)]
    (kept,) = conversion_checks(rows)
    assert (kept["converted_from"], kept["points_vs_start"], kept["kept"]) == ("ARM trained longer", -9.0, False)
    assert "points_vs_arm_longer" not in kept  # that control is its own start
    converted, scratch = goal_checks(rows)  # the conversion against ARM trained longer; from scratch against ARM
    assert (converted["points_vs_arm"], converted["speedup_vs_arm"], converted["arm_goal"]) == (-9.0, 2.5, False)
    assert (scratch["points_vs_arm"], scratch["speedup_vs_arm"], scratch["arm_goal"]) == (-1.0, 3.0, True)


def test_goal_is_missed_below_the_speed_bar_even_when_accurate():
    rows = [_row("arm", "ar", 0.5, 100.0), _row("mdm", "mdm", 0.4, 60.0),
            _row("refusion", "refusion", 0.9, 199.0, {"slot_threshold": 0.9, "token_threshold": 0.4})]
    (check,) = goal_checks(rows)
    assert check["arm_goal"] is False and check["speedup_vs_arm"] == 1.99
    assert check["mdm_goal"] is False and check["speedup_vs_mdm"] == 3.32


def test_report_files(tmp_path: Path):
    summaries = [_row("arm", "ar", 0.8, 100.0, task=t) for t in ("mini-gsm8k", "mini-json")]
    summaries.append(_row("refusion", "refusion", 0.6, 300.0, {"slot_size": 4, "blocks": 2, "slot_threshold": 0.9,
                                                               "token_threshold": 0.4}))
    meta = {"command": "refusion repro --output X", "description": "tiny"}
    paths = write_report(summaries, tmp_path, meta, limit=7, max_new_tokens=64, notes="## Why\nbecause")
    saved = json.loads(paths["json"].read_text())
    assert len(saved["rows"]) == 3 and saved["command"] == "refusion repro --output X"
    assert saved["rows"][2]["command"] == (
        f"OMP_NUM_THREADS=1 refusion eval --model {tmp_path / 'refusion'} --task mini-json --decoder refusion --slot-size 4 --blocks 2 "
        "--slot-threshold 0.9 --token-threshold 0.4 --max-new-tokens 64 --limit 7 --json")
    text = paths["markdown"].read_text()
    assert "| mini-json | ReFusion | refusion | slot_size=4, blocks=2, slot_threshold=0.9, token_threshold=0.4 | 60.0% (60/100) | 300.0 |" in text
    assert text.rstrip().endswith("## Why\nbecause")
    assert paths["plot"].stat().st_size > 1000


def test_markdown_marks_missing_baselines_as_not_available():
    rows = table_rows([_row("refusion", "refusion", 0.5, 10.0, {"slot_threshold": 0.9, "token_threshold": 0.4})],
                      Path("out"), 5, 64)
    text = markdown(rows, goal_checks(rows), {"command": "c", "description": "d"})
    assert "| n/a | n/a | n/a | n/a | n/a | n/a |" in text


def test_every_model_the_pipeline_trains_has_a_label_in_the_report():
    assert set(MODELS) <= set(LABELS)
