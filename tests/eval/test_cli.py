"""`refusion eval --limit 2` and `refusion plot` end to end on a tiny random model saved to disk."""

from __future__ import annotations

import json

import pytest

from refusion import add_mask_token
from refusion.cli import main
from refusion.eval import evaluate
from tests.tiny_models import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer) + 1)
    model.config.max_position_embeddings = 4096  # benchmark prompts are long in characters
    add_mask_token(model, tokenizer)
    path = tmp_path_factory.mktemp("tiny-refusion")
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def run_cli(argv, capsys) -> tuple[str, str]:
    main(argv)
    captured = capsys.readouterr()
    return captured.out, captured.err


def test_eval_json_summary_and_per_sample_file(model_dir, tmp_path, capsys):
    out_dir = tmp_path / "gsm8k-refusion"
    out, _ = run_cli(["eval", "--model", model_dir, "--task", "gsm8k", "--limit", "2", "--max-new-tokens", "16",
                      "--decoder", "refusion", "--slot-size", "4", "--blocks", "2", "--json", "--output", str(out_dir),
                      "--no-progress"], capsys)
    summary = json.loads(out.strip().splitlines()[-1])
    for key in ("task", "decoder", "accuracy", "tokens_per_second", "tokens_per_forward", "forward_passes", "samples",
                "model", "settings"):
        assert key in summary
    assert (summary["task"], summary["decoder"], summary["samples"], summary["model"]) == ("gsm8k", "refusion", 2, model_dir)
    assert summary["settings"]["slot_size"] == 4 and summary["settings"]["blocks"] == 2

    records = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert len(records) == 2 and records[0]["prompt"].startswith("Janet")
    for record in records:
        assert {"prompt", "output", "extracted", "correct", "reference", "tokens_per_second", "forward_passes"} <= set(record)
        assert 1 <= record["new_tokens"] <= 16 and record["forward_passes"] >= 1
    # Aggregates are totals over samples, not means of per-sample rates.
    tokens = sum(r["new_tokens"] for r in records)
    assert summary["tokens_per_forward"] == pytest.approx(tokens / sum(r["forward_passes"] for r in records), abs=1e-4)
    assert summary["forward_passes"] == pytest.approx(sum(r["forward_passes"] for r in records) / 2, abs=0.01)
    assert summary["accuracy"] == sum(r["correct"] for r in records) / 2
    assert json.loads((out_dir / "summary.json").read_text())["samples"] == 2


def test_eval_text_report_on_a_code_task_with_the_ar_decoder(model_dir, capsys):
    out, _ = run_cli(["eval", "--model", model_dir, "--task", "humaneval", "--decoder", "ar", "--limit", "2",
                      "--max-new-tokens", "8", "--no-progress"], capsys)
    assert out.startswith("humaneval [ar] accuracy 0.00% (0/2)") and "tokens/forward" in out


SAME_PER_SAMPLE = ("id", "prompt", "output", "extracted", "reference", "correct", "new_tokens", "forward_passes",
                   "tokens_per_forward", "finish_reason", "prompt_tokens")


@pytest.mark.parametrize("decoder", ["ar", "refusion"])
def test_eval_batch_size_gives_the_samples_of_batch_one(decoder, model_dir, tmp_path, capsys):
    runs = {}
    for size in (1, 2):
        out_dir = tmp_path / f"batch-{size}"
        out, _ = run_cli(["eval", "--model", model_dir, "--task", "gsm8k", "--limit", "3", "--max-new-tokens", "8",
                          "--decoder", decoder, "--batch-size", str(size), "--json", "--output", str(out_dir),
                          "--no-progress"], capsys)
        records = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
        runs[size] = json.loads(out.strip().splitlines()[-1]), records
    (one, one_records), (two, two_records) = runs[1], runs[2]
    assert [{key: r[key] for key in SAME_PER_SAMPLE} for r in two_records] == \
           [{key: r[key] for key in SAME_PER_SAMPLE} for r in one_records]
    for key in ("accuracy", "correct", "samples", "tokens_per_forward", "forward_passes", "new_tokens", "settings"):
        assert two[key] == one[key], key
    assert (one["batch_size"], two["batch_size"]) == (1, 2)
    # Three samples at batch 2: a batch of two sharing its wall time, then one alone; each batch's time counts once.
    sizes = [r["batch_size"] for r in two_records]
    assert sizes == [2, 2, 1]  # every decoder batches (ar as rows of one forward, refusion in lockstep)
    assert two["seconds"] == pytest.approx(sum(r["seconds"] / r["batch_size"] for r in two_records), abs=2e-3)
    assert two_records[0]["seconds"] == two_records[1]["seconds"]


def test_python_api_scores_a_model_that_always_answers_right(model_dir):
    from refusion import load

    model, tokenizer = load(model_dir)
    answers = iter(["#### 18", "#### 2"])  # GSM8K's first two answers: 18, then 3

    class Scripted:  # a task module wrapping gsm8k whose completions are fixed, to check the scoring path
        from refusion.eval.tasks import gsm8k as base
        NAME, MAX_NEW_TOKENS, examples, prompt = "gsm8k", 4, base.examples, base.prompt

        @staticmethod
        def evaluate(example, completion):
            return Scripted.base.evaluate(example, next(answers))

    result = evaluate(model, tokenizer, Scripted, decoder="ar", limit=2, progress=False)
    assert [r["correct"] for r in result.records] == [True, False]
    assert result.summary["accuracy"] == 0.5 and result.summary["settings"]["max_new_tokens"] == 4


def test_an_interrupted_eval_leaves_the_earlier_results_whole(model_dir, tmp_path):
    from refusion import load

    model, tokenizer = load(model_dir)
    out_dir = tmp_path / "results"
    evaluate(model, tokenizer, "gsm8k", decoder="ar", limit=2, max_new_tokens=2, output=out_dir, progress=False)
    before = {name: (out_dir / name).read_bytes() for name in ("samples.jsonl", "summary.json")}

    class Interrupted:  # gsm8k whose second sample is interrupted (Ctrl-C)
        from refusion.eval.tasks import gsm8k as base
        NAME, MAX_NEW_TOKENS, examples, prompt = "gsm8k", 2, base.examples, base.prompt
        seen = []

        @staticmethod
        def evaluate(example, completion):
            Interrupted.seen.append(example)
            if len(Interrupted.seen) == 2:
                raise KeyboardInterrupt
            return Interrupted.base.evaluate(example, completion)

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, tokenizer, Interrupted, decoder="ar", limit=3, output=out_dir, progress=False)
    assert {name: (out_dir / name).read_bytes() for name in before} == before
    # What it finished is kept beside them: its settings, then the one example scored before the interruption.
    partial = [json.loads(line) for line in (out_dir / "samples.partial.jsonl").read_text().splitlines()]
    assert partial[0]["task"] == "gsm8k" and partial[0]["limit"] == 3 and [r["id"] for r in partial[1:]] == [0]


def test_resume_generates_only_what_an_interrupted_run_left_and_gives_the_same_results(model_dir, tmp_path, capsys):
    from refusion import load
    from refusion.eval.tasks import gsm8k

    model, tokenizer = load(model_dir)
    whole = evaluate(model, tokenizer, "gsm8k", decoder="ar", limit=5, max_new_tokens=6, progress=False,
                     batch_size=2)
    out_dir = tmp_path / "resumed"

    class Interrupted:  # gsm8k, interrupted (Ctrl-C) while scoring its fourth example
        NAME, MAX_NEW_TOKENS, examples, prompt = "gsm8k", 2, gsm8k.examples, gsm8k.prompt
        seen = []

        @staticmethod
        def evaluate(example, completion):
            Interrupted.seen.append(example["id"])
            if len(Interrupted.seen) == 4:
                raise KeyboardInterrupt
            return gsm8k.evaluate(example, completion)

    with pytest.raises(KeyboardInterrupt):
        evaluate(model, tokenizer, Interrupted, decoder="ar", limit=5, max_new_tokens=6, output=out_dir,
                 progress=False, batch_size=2)
    Interrupted.seen.clear()
    Interrupted.evaluate = staticmethod(lambda example, completion: (Interrupted.seen.append(example["id"]),
                                                                     gsm8k.evaluate(example, completion))[1])
    resumed = evaluate(model, tokenizer, Interrupted, decoder="ar", limit=5, max_new_tokens=6, output=out_dir,
                       progress=False, batch_size=2, resume=True)
    assert Interrupted.seen == [3, 4]  # 0-2 were finished before the interruption
    keep = ("id", "output", "extracted", "correct", "new_tokens", "forward_passes")
    assert [{k: r[k] for k in keep} for r in resumed.records] == [{k: r[k] for k in keep} for r in whole.records]
    saved = [json.loads(line) for line in (out_dir / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in saved] == [0, 1, 2, 3, 4] and not (out_dir / "samples.partial.jsonl").exists()
    assert json.loads((out_dir / "summary.json").read_text())["samples"] == 5


def test_resume_refuses_a_partial_run_with_other_settings(model_dir, tmp_path, capsys):
    out_dir = tmp_path / "other"
    out_dir.mkdir()
    (out_dir / "samples.partial.jsonl").write_text(json.dumps({"task": "gsm8k", "decoder": "ar"}) + "\n")
    with pytest.raises(SystemExit):
        main(["eval", "--model", model_dir, "--task", "gsm8k", "--limit", "2", "--max-new-tokens", "4", "--decoder",
              "ar", "--output", str(out_dir), "--resume"])
    err = capsys.readouterr().err
    assert "other settings" in err and "without --resume" in err and err.count("\n") == 1


@pytest.mark.parametrize("argv, message", [
    (["eval", "--task", "gsm9k"], "unknown task 'gsm9k'"),
    (["eval", "--task", "gsm8k", "--limit", "0"], "--limit must be a positive integer"),
    (["eval", "--task", "gsm8k", "--batch-size", "0"], "--batch-size must be a positive integer"),
    (["eval", "--task", "gsm8k", "--decoder", "ar", "--reference-settings"], "do not apply to --decoder ar"),
    (["eval", "--task", "gsm8k", "--decoder", "refusion", "--slot-size", "4", "--blocks", "3", "--max-new-tokens", "16"],
     "must split into 3 blocks"),
    (["plot", "nowhere.jsonl", "--output", "x.png"], "no such results file"),
    (["eval", "--task", "gsm8k", "--resume"], "--resume continues the run whose samples are in --output DIR"),
])
def test_bad_input_is_one_line_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_plot_from_json_lines_and_output_dirs(tmp_path, capsys):
    rows = [
        {"task": "gsm8k", "decoder": "ar", "accuracy": 0.8, "tokens_per_second": 30.0, "settings": {}},
        {"task": "gsm8k", "decoder": "refusion", "accuracy": 0.82, "tokens_per_second": 80.0,
         "settings": {"slot_size": 8, "blocks": 4, "slot_threshold": 0.9, "token_threshold": 0.4}},
    ]
    lines = tmp_path / "runs.jsonl"
    lines.write_text("progress 50%\n" + "\n".join(json.dumps(r) for r in rows) + "\n")
    run_dir = tmp_path / "mbpp-run"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps({**rows[0], "task": "mbpp"}))
    image = tmp_path / "plot.png"
    out, _ = run_cli(["plot", str(lines), str(run_dir), "--output", str(image)], capsys)
    assert "3 point(s)" in out and image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    from refusion.eval.plot import point_label, settings_label
    assert settings_label(rows[1]) == "k=8 B=4 τ=0.9/0.4" and settings_label(rows[0]) == ""
    # with several models on one plot, each point also names its model
    assert point_label({**rows[1], "model": "/runs/converted"}, with_model=True) == "converted k=8 B=4 τ=0.9/0.4"
    assert point_label({**rows[0], "model": "base"}, with_model=True) == "base"
    assert point_label({**rows[0], "model": "base"}, with_model=False) == ""


def test_reference_settings_fill_only_what_the_user_left_unset():
    from refusion.errors import RefusionError
    from refusion.eval.runner import with_reference_settings
    from refusion.eval.tasks import get_task

    filled = with_reference_settings(get_task("math500"), {"decoder": None, "max_new_tokens": None, "slot_size": None,
                                                           "blocks": None, "slot_threshold": 0.5, "token_threshold": None})
    assert filled == {"decoder": "refusion", "max_new_tokens": 512, "slot_size": 32, "blocks": 8,
                      "slot_threshold": 0.5, "token_threshold": 0.6}
    arc = with_reference_settings(get_task("arc-challenge"), {"decoder": "refusion", "max_new_tokens": None})
    assert (arc["slot_size"], arc["blocks"], arc["token_threshold"]) == (8, 64, 0.1)
    with pytest.raises(RefusionError, match="do not apply to --decoder ar"):
        with_reference_settings(get_task("gsm8k"), {"decoder": "ar"})


def test_accelerate_launch_shards_the_task_and_merges_one_summary(model_dir, tmp_path, capsys):
    import os
    import subprocess
    import sys

    common = ["--model", model_dir, "--task", "gsm8k", "--limit", "5", "--max-new-tokens", "4", "--decoder", "refusion",
              "--no-progress", "--json"]
    run_cli(["eval", *common, "--output", str(tmp_path / "one")], capsys)
    # On a machine without a GPU, accelerate's multi-process launcher gives CPU processes over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines",
               "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "refusion", "eval", *common,
               "--output", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    printed = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 1  # one summary, from the main process
    summary = json.loads(printed[0])
    assert summary["processes"] == 2 and summary["samples"] == 5

    def samples(name):
        return [{k: r[k] for k in ("id", "output", "correct", "new_tokens", "forward_passes")}
                for r in map(json.loads, (tmp_path / name / "samples.jsonl").read_text().splitlines())]

    assert samples("two") == samples("one")  # the same records, in the task's order
    alone = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["accuracy"] == alone["accuracy"]
