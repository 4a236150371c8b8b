"""`refusion generate`: JSON output, streaming to the terminal, and one-line errors for bad input."""

import json
import os
import subprocess
import sys

import pytest

from tests.tiny_models import char_tokenizer, tiny_model


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    tokenizer = char_tokenizer()
    plain = tiny_model("llama", vocab_size=len(tokenizer) + 1, max_position_embeddings=128)
    plain.save_pretrained(root / "plain")
    tokenizer.save_pretrained(root / "plain")
    masked = tiny_model("qwen3", vocab_size=len(tokenizer) + 1, max_position_embeddings=128)
    masked.config.mask_token_id = len(tokenizer)
    masked.save_pretrained(root / "masked")
    tokenizer.save_pretrained(root / "masked")
    return root


def cli(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "refusion", "generate", *args], capture_output=True, text=True, env=env, timeout=120)


def test_json_last_line_reports_the_speed(model_dirs):
    run = cli("Hello", "--model", str(model_dirs / "masked"), "--decoder", "refusion", "--max-new-tokens", "16", "--slot-size", "4",
              "--blocks", "2", "--slot-threshold", "0.02", "--token-threshold", "0.02", "--json")
    assert run.returncode == 0, run.stderr
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert {"text", "decoder", "new_tokens", "forward_passes", "tokens_per_forward", "seconds", "tokens_per_second"} <= set(report)
    assert report["decoder"] == "refusion" and 1 <= report["new_tokens"] <= 16
    assert report["settings"]["blocks"] == 2


def test_plain_output_streams_the_text_and_summarises_speed_on_stderr(model_dirs):
    run = cli("Hello", "--model", str(model_dirs / "plain"), "--max-new-tokens", "8")
    assert run.returncode == 0, run.stderr
    assert "decodes with --decoder ar" in run.stderr  # the model has no mask token: said, not silent
    assert "tok/s" in run.stderr.splitlines()[-1] and "forwards" in run.stderr.splitlines()[-1]
    as_json = json.loads(cli("Hello", "--model", str(model_dirs / "plain"), "--max-new-tokens", "8", "--json").stdout.splitlines()[-1])
    assert run.stdout.rstrip("\n") == as_json["text"]


def test_stop_strings_end_the_generation_and_are_not_printed(model_dirs):
    plain = ["Hello", "--model", str(model_dirs / "plain"), "--max-new-tokens", "16"]
    full = json.loads(cli(*plain, "--json").stdout.splitlines()[-1])["text"]
    stop = full[4:6]
    cut = full[: full.find(stop)]
    report = json.loads(cli(*plain, "--stop", stop, "--stop", "never there", "--json").stdout.splitlines()[-1])
    assert report["text"] == cut and report["finish_reason"] == "stop"
    assert report["new_tokens"] < 16 and report["settings"]["stop"] == [stop, "never there"]
    streamed = cli(*plain, "--stop", stop)
    assert streamed.stdout.rstrip("\n") == cut


@pytest.mark.parametrize(
    "args, message",
    [
        (["hi", "--model", "/no/such/model"], "model not found"),
        (["   ", "--model", "{masked}"], "the prompt is empty"),
        (["x" * 300, "--model", "{masked}"], "exceeds the model's context"),
        (["hi", "--model", "{masked}", "--decoder", "refusion", "--token-threshold", "1.5"], "token-threshold must lie in [0, 1]"),
        (["hi", "--model", "{masked}", "--token-threshold", "0.5"], "choose decoder refusion for token_threshold"),
        (["hi", "--model", "{masked}", "--decoder", "lossless", "--branches", "lots"], "branches must be 'auto' or a whole number"),
        (["hi", "--model", "{masked}", "--temperature", "nan"], "temperature must be a finite number"),
        (["hi", "--model", "{masked}", "--seed", str(2**64)], "seed must lie in"),
        (["hi", "--model", "{masked}", "--decoder", "refusion", "--slot-size", "4", "--blocks", "3", "--max-new-tokens", "32"], "must split into 3 blocks"),
        (["hi", "--model", "{plain}", "--decoder", "refusion"], "Convert it with `refusion train --objective refusion`"),
        (["hi", "--model", "{masked}", "--decoder", "beam"], "unknown decoder 'beam'"),
        (["hi", "--model", "{masked}", "--max-new-tokens", "0"], "max-new-tokens must be a positive integer"),
        (["hi", "--model", "{masked}", "--stop", ""], "stop strings must be non-empty text"),
    ],
)
def test_bad_input_is_one_line_on_stderr(model_dirs, args, message):
    args = [a.format(masked=model_dirs / "masked", plain=model_dirs / "plain") for a in args]
    run = cli(*args)
    assert run.returncode != 0
    assert "Traceback" not in run.stderr
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last


def test_help_tags_each_decoder_option_with_its_decoders_once():
    import argparse

    from refusion.cli import add_decoder_options

    parser = argparse.ArgumentParser(formatter_class=lambda prog: argparse.HelpFormatter(prog, max_help_position=100, width=1000))
    add_decoder_options(parser)
    lines = parser.format_help().splitlines()
    branches = next(line for line in lines if line.strip().startswith("--branches"))
    assert "[lossless] candidate tokens for the next position" in branches
    threshold = next(line for line in lines if line.strip().startswith("--threshold"))
    assert "[fast-dllm] unmask every token above" in threshold
