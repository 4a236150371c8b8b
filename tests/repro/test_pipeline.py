"""`refusion repro --quick` end to end: three models trained through the real trainer, every decoder run
evaluated through `refusion eval`, the report written, a second run resuming without redoing work, and
a row re-measured exactly by the `refusion eval` command results.md gives for it."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from refusion.cli import main
from refusion.repro.pipeline import FAMILIES, FINE_TUNED_FROM, MODELS, RECIPES, STEP_MULTIPLES, quick_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("repro") / "out"
    main(["repro", "--output", str(output), "--quick", "--no-progress"])
    return output


def test_models_share_architecture_tokenizer_and_data(quick_run):
    from transformers import AutoConfig, AutoTokenizer

    configs = {name: AutoConfig.from_pretrained(quick_run / name) for name in MODELS}
    assert {name: config.refusion_objective for name, config in configs.items()} == MODELS
    shapes = {(c.model_type, c.hidden_size, c.num_hidden_layers, c.intermediate_size, c.vocab_size)
              for c in configs.values()}
    quick = quick_config(quick_run)
    assert shapes == {("llama", quick.hidden, quick.layers, quick.intermediate, configs["arm"].vocab_size)}
    vocabularies = [AutoTokenizer.from_pretrained(quick_run / name).get_vocab() for name in MODELS]
    assert all(vocabulary == vocabularies[0] for vocabulary in vocabularies) and "<|mask|>" in vocabularies[0]
    for name in MODELS:
        history = json.loads((quick_run / name / "loss.json").read_text())
        fine_tune_steps = quick.finetune_steps * STEP_MULTIPLES.get(name, 1)
        steps, start = ((fine_tune_steps, str(quick_run / FINE_TUNED_FROM[name])) if name in FINE_TUNED_FROM
                        else (quick.steps, None))
        assert history["config"]["max_steps"] == steps and history["config"]["batch_size"] == quick.batch_size
        if start:
            assert history["config"]["model"] == start
        # MDM learns to stop: responses EOS-padded to the generation length
        assert history["config"]["pad_responses_to"] == (quick.max_new_tokens if name == "mdm" else None)
        assert history["examples"] == quick.train_size * len(FAMILIES)
        recipe = RECIPES.get(name, {})  # the conversion variants train with their options, the others with none
        assert history["config"]["prefix_share"] == recipe.get("prefix_share", 0.0)
        assert history["config"]["ar_across_slots"] == recipe.get("ar_across_slots", False)
        assert history["config"]["mdm_weight"] == recipe.get("mdm_weight", 1.0)
        assert history["config"]["next_token_share"] == recipe.get("next_token_share", 0.0)
        assert not list((quick_run / name).glob("checkpoint-*"))  # optimizer state is not kept
    assert not (quick_run / "init").exists()
    lines = (quick_run / "data" / "train.jsonl").read_text().splitlines()
    assert len(lines) == quick.train_size * len(FAMILIES)


def test_results_cover_every_run_with_consistent_speed_numbers(quick_run):
    results = json.loads((quick_run / "results.json").read_text())
    quick = quick_config(quick_run)
    rows = results["rows"]
    assert len(rows) == len(quick.runs) * len(FAMILIES)
    assert {(row["model"], row["run"]) for row in rows} == {(run.model, run.name) for run in quick.runs}
    for row in rows:
        assert row["samples"] == quick.test_limit and 0 <= row["accuracy"] <= 1
        assert 0 < row["new_tokens"] <= quick.max_new_tokens
        # tokens per forward is new tokens over forwards, both per problem
        assert row["tokens_per_forward"] == pytest.approx(row["new_tokens"] / row["forward_passes"], rel=1e-3)
        if row["decoder"] == "ar":
            assert row["tokens_per_forward"] == 1.0  # one token per forward, the first from the prefill
        if row["decoder"] == "mdm":
            assert row["tokens_per_forward"] <= 1.0  # default steps = one token unmasked per forward
    text = (quick_run / "results.md").read_text()
    assert "refusion repro --output" in text and "--quick" in text
    assert text.count("| mini-") >= len(rows)
    assert (quick_run / "accuracy_vs_speed.png").stat().st_size > 1000


def test_second_run_resumes_without_retraining_or_reevaluating(quick_run, capsys):
    stamps = {path: path.stat().st_mtime_ns for path in
              list(quick_run.glob("*/model.safetensors")) + list(quick_run.glob("*/eval/*/*/summary.json"))}
    assert len(stamps) == len(MODELS) + len(quick_config(quick_run).runs) * len(FAMILIES)
    main(["repro", "--output", str(quick_run), "--quick", "--no-progress"])
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert "already trained, skipped" in capsys.readouterr().err


def test_the_reported_command_re_measures_a_row(quick_run, capsys):
    rows = json.loads((quick_run / "results.json").read_text())["rows"]
    row = next(r for r in rows if r["decoder"] == "refusion")
    environment, *argv = shlex.split(row["command"])
    assert environment == "OMP_NUM_THREADS=1" and argv[:2] == ["refusion", "eval"]
    capsys.readouterr()
    main(argv[1:] + ["--no-progress"])
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (again["accuracy"], again["forward_passes"], again["new_tokens"]) == (
        row["accuracy"], row["forward_passes"], row["new_tokens"])


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["repro", "--output", str(tmp_path / "x"), "--steps", "0"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == "error: steps must be a positive integer, got 0"
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit):
        main(["repro", "--output", str(tmp_path / "file"), "--quick"])
    assert "is a file, not a directory" in capsys.readouterr().err
