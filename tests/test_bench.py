"""`refusion bench`: decoder specs, the rows it reports, and its command line, on a tiny random model."""

import json
import subprocess
import sys

import pytest

from refusion import RefusionError
from refusion.bench import DecoderSpec, builtin_prompts, parse_specs, run_bench
from refusion.bench.runner import parse_batch_sizes
from refusion.decoding import lossless
from tests.tiny_models import char_tokenizer, tiny_model


def test_specs_split_on_commas_and_keep_options_with_their_decoder():
    specs = parse_specs("ar,lossless:branches=2,depth=3,refusion:kv=exact,slot_size=8")
    assert [(s.decoder, s.options) for s in specs] == [
        ("ar", {}), ("lossless", {"branches": 2, "depth": 3}), ("refusion", {"kv": "exact", "slot_size": 8})]
    assert specs[1].label == "lossless:branches=2,depth=3"


@pytest.mark.parametrize("text, message", [
    ("nope", "unknown decoder"), ("slot_size=4", "no decoder name"), ("refusion:kv", "key=value"), ("", "names no decoder"),
])
def test_bad_specs_are_one_clear_error(text, message):
    with pytest.raises(RefusionError, match=message):
        parse_specs(text)


def test_batch_sizes_are_positive_integers_separated_by_commas():
    assert parse_batch_sizes("1") == [1] and parse_batch_sizes(" 1, 4,16 ") == [1, 4, 16]
    assert parse_batch_sizes("4,1,4") == [4, 1]


@pytest.mark.parametrize("text", ["0", "-1", "1.5", "x", "", "1,,4", "1;4", "2,0"])
def test_bad_batch_sizes_are_one_error_naming_the_flag(text):
    with pytest.raises(RefusionError, match="--batch-sizes takes positive integers"):
        parse_batch_sizes(text)


def test_builtin_prompts_are_varied_and_many():
    prompts = builtin_prompts()
    assert len(prompts) >= 40 and len(set(prompts)) == len(prompts)


@pytest.fixture(scope="module")
def model_and_tokenizer():
    tokenizer = char_tokenizer()
    model = tiny_model("qwen3", vocab_size=len(tokenizer) + 1)
    model.config.mask_token_id = len(tokenizer)
    return model, tokenizer


def test_rows_compare_every_decoder_with_ar_measured_in_the_same_run(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = run_bench(model, tokenizer, ["Add 2 and 3.", "Name a colour."],
                       [DecoderSpec("lossless"), DecoderSpec("refusion", {"slot_size": 2})], max_new_tokens=12,
                       progress=False)
    labels = [row["label"] for row in result["rows"]]
    assert labels == ["ar", "lossless", "refusion:slot_size=2"]  # ar added first: every ratio needs it
    ar, lossless, plan = result["rows"]
    assert ar["speedup_vs_ar"] == 1.0 and ar["identical_to_ar"] == 1.0
    assert lossless["identical_to_ar"] == 1.0 and lossless["lossless"] and not plan["lossless"]  # float32: exact
    assert lossless["ar_loglik_per_token"] == pytest.approx(ar["ar_loglik_per_token"])
    assert 0 <= lossless["lookup_accepted_per_forward"] + lossless["table_accepted_per_forward"] \
        <= lossless["drafts_accepted_per_forward"]
    for row in result["rows"]:
        assert row["tokens_per_forward"] == pytest.approx(row["new_tokens"] / (row["forward_passes"] * 2), rel=0.01)
        assert 0 <= row["engine_overhead"] < 1 and row["peak_memory_mb"] > 0
        assert sum(row["forwards_by_width"].values()) == pytest.approx(row["forward_passes"] * 2)
        assert row["settings"]["decoder"] == row["decoder"]
    assert len(result["outputs"]["lossless"]) == 2


def test_settings_take_turns_prompt_by_prompt_after_their_warm_ups(model_and_tokenizer, monkeypatch):
    """A machine that slows down during the run must weigh on every row alike: the timed calls alternate."""
    from refusion.bench import runner

    model, tokenizer = model_and_tokenizer
    calls = []

    def generate(*args, decoder, should_stop=None, **kwargs):
        calls.append((decoder, "warm-up" if should_stop else "timed"))
        return real_generate(*args, decoder=decoder, **({"should_stop": should_stop} if should_stop else {}), **kwargs)

    real_generate = runner.generate
    monkeypatch.setattr(runner, "generate", generate)
    run_bench(model, tokenizer, ["Add 2 and 3.", "Name a colour."], [DecoderSpec("ar"), DecoderSpec("lossless")],
              max_new_tokens=4, progress=False)
    assert calls == [("ar", "warm-up")] * 2 + [("lossless", "warm-up")] * 2 + [("ar", "timed"), ("lossless", "timed")] * 2


def test_the_warm_up_teaches_the_lossless_shape_nothing(model_and_tokenizer):
    """The warm-up runs each prompt's first steps only: what lossless learns there is no sample of later steps, so
    the timed rows decode as they would without it (a fixed width cost keeps timings out of the shape)."""
    model, tokenizer = model_and_tokenizer
    prompts = ["Add 2 and 3.", "Name a colour.", "Count to five."]
    specs = [DecoderSpec("lossless", {"width_cost": 0.02})]

    def forwards(warmup):
        lossless.forget(model)
        result = run_bench(model, tokenizer, prompts, specs, max_new_tokens=16, progress=False, warmup=warmup)
        return result["rows"][1]["forwards_by_width"]

    assert forwards(True) == forwards(False)


def test_each_batch_size_gets_its_rows_compared_with_ar_at_that_size(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    prompts = ["Add 2 and 3.", "Name a colour.", "Hi"]  # batch 2: groups of 2 and 1
    result = run_bench(model, tokenizer, prompts, [DecoderSpec("ar"), DecoderSpec("lossless")], max_new_tokens=10,
                       progress=False, batch_sizes=[1, 2])
    assert [(row["label"], row["batch_size"]) for row in result["rows"]] == [
        ("ar", 1), ("lossless", 1), ("ar", 2), ("lossless", 2)]
    assert result["batch_sizes"] == [1, 2]
    assert set(result["outputs"]) == {"ar", "lossless", "ar@batch2", "lossless@batch2"}
    assert result["outputs"]["ar@batch2"] == result["outputs"]["ar"]  # float32: batching does not change the text
    for row in result["rows"]:
        assert row["identical_to_ar"] == 1.0 and row["prompts"] == 3
        assert row["new_tokens"] / row["tokens_per_second"] == pytest.approx(row["seconds"], abs=0.001)  # aggregate
        assert 0 < row["latency_ms"]["mean"] <= row["latency_ms"]["p95"] + 0.1
        assert row["tokens_per_forward"] == pytest.approx(row["new_tokens"] / (row["forward_passes"] * 3), rel=0.01)
        if row["label"] == "ar":
            assert row["speedup_vs_ar"] == 1.0  # each batch size against its own ar
    ar1, _, ar2, lossless2 = result["rows"]
    assert ar2["forward_passes"] == ar1["forward_passes"]  # per request, as at batch 1
    # ar decodes a group together: its batched forwards are counted once, fewer than the rows take alone.
    assert sum(ar2["forwards_by_width"].values()) < sum(ar1["forwards_by_width"].values())
    assert lossless2["speedup_vs_ar"] == pytest.approx(lossless2["tokens_per_second"] / ar2["tokens_per_second"], rel=0.01)


def test_ar_runs_at_batch_1_for_the_reference_when_the_sizes_leave_it_out(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    result = run_bench(model, tokenizer, ["Add 2 and 3.", "Name a colour."], [DecoderSpec("ar")], max_new_tokens=6,
                       progress=False, batch_sizes=[2])
    assert [(row["label"], row["batch_size"]) for row in result["rows"]] == [("ar", 1), ("ar", 2)]
    assert result["rows"][1]["identical_to_ar"] == 1.0


def test_the_command_writes_its_files_and_a_json_last_line(model_and_tokenizer, tmp_path):
    model, tokenizer = model_and_tokenizer
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Hello"}\n\n{"prompt": "Count to three."}\n')
    run = subprocess.run([sys.executable, "-m", "refusion", "bench", "--model", str(tmp_path / "model"), "--prompts",
                          str(prompts), "--decoders", "ar,lossless", "--max-new-tokens", "8", "--dtype", "float32",
                          "--batch-sizes", "1,2",
                          "--threads", "1", "--output", str(tmp_path / "out"), "--json", "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(report) == {"machine", "model", "rows"} and report["machine"]["dtype"] == "float32"
    for key in ("decoder", "settings", "lossless", "batch_size", "tokens_per_second", "latency_ms", "tokens_per_forward",
                "forward_passes", "speedup_vs_ar", "identical_to_ar", "ar_loglik_per_token", "engine_overhead",
                "peak_memory_mb"):
        assert key in report["rows"][1]
    assert [(row["label"], row["batch_size"]) for row in report["rows"]] == [
        ("ar", 1), ("lossless", 1), ("ar", 2), ("lossless", 2)]
    for name in ("bench.md", "bench.json", "outputs.jsonl", "bench.png"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    table = (tmp_path / "out" / "bench.md").read_text()
    assert "batch sizes 1, 2" in table and "| lossless | 2 |" in table
    lines = (tmp_path / "out" / "outputs.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) == {"prompt", "ar", "lossless", "ar@batch2", "lossless@batch2"}


@pytest.mark.parametrize("args, message", [
    (["--decoders", "ar,nope"], "unknown decoder"),
    (["--decoders", "lossless:branches=-1"], "branches must"),
    (["--prompts", "/nonexistent.jsonl"], "prompts file not found"),
    (["--max-new-tokens", "0"], "max-new-tokens"),
    (["--batch-sizes", "1,0"], "--batch-sizes"),
    (["--batch-sizes", "four"], "--batch-sizes"),
])
def test_bad_input_is_one_line_and_exit_2(args, message):
    run = subprocess.run([sys.executable, "-m", "refusion", "bench", *args], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and message in run.stderr and "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1


def test_passes_take_turns_with_every_batch_size_and_count_in_the_speeds(model_and_tokenizer, monkeypatch):
    import refusion.bench.runner as bench_runner

    model, tokenizer = model_and_tokenizer
    prompts = ["Add 2 and 3.", "Name a colour.", "Hi"]
    sizes = []
    generate = bench_runner.generate
    monkeypatch.setattr(bench_runner, "generate", lambda model, tokenizer, ids, **options: sizes.append(
        len(ids) if isinstance(ids, list) else 1) or generate(model, tokenizer, ids, **options))
    once = run_bench(model, tokenizer, prompts, [DecoderSpec("ar")], max_new_tokens=6, progress=False,
                     batch_sizes=[1, 2], warmup=False)
    sizes.clear()
    twice = run_bench(model, tokenizer, prompts, [DecoderSpec("ar")], max_new_tokens=6, progress=False,
                      batch_sizes=[1, 2], warmup=False, passes=2)
    assert sizes == [1, 1, 1, 2, 1] * 2  # each pass: the prompts one at a time, then two at a time
    assert twice["outputs"] == once["outputs"]
    for first, both in zip(once["rows"], twice["rows"]):
        assert both["prompts"] == 3 and both["passes"] == 2
        assert both["new_tokens"] == 2 * first["new_tokens"]
    with pytest.raises(RefusionError, match="passes"):
        run_bench(model, tokenizer, prompts, [DecoderSpec("ar")], passes=0)
