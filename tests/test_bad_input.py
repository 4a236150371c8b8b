"""Bad command-line input, every command: one line on stderr, exit status 2, and the user's files untouched.

Each case runs `refusion.cli.main` in this process; an exception that escapes it fails the test with
its traceback. Paths in a case are placeholders filled from the `workspace` fixture; the whole
workspace (the files a case names, and where its outputs would go) must be byte for byte the same
after the case, and nothing may be created in it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from refusion.cli import main
from refusion.lm_eval import RefusionLM
from tests.tiny_models import char_tokenizer, tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BIG = str(2**64)
USAGE_ERROR = re.compile(r"^refusion( [\w-]+)?: error: ")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("bad-input")
    tokenizer = char_tokenizer()
    plain = tiny_model("llama", vocab_size=len(tokenizer) + 1, max_position_embeddings=128)
    for name in ("plain", "corrupt"):
        plain.save_pretrained(root / name)
        tokenizer.save_pretrained(root / name)
    (root / "corrupt" / "model.safetensors").write_bytes(b"\x00 not safetensors " * 8)
    masked = tiny_model("qwen3", vocab_size=len(tokenizer) + 1, max_position_embeddings=128)
    masked.config.mask_token_id = len(tokenizer)
    masked.save_pretrained(root / "masked")
    tokenizer.save_pretrained(root / "masked")
    (root / "notmodel").mkdir()
    (root / "notmodel" / "notes.txt").write_text("not a model\n")
    (root / "fake.gguf").write_bytes(os.urandom(4096))
    (root / "gguf").mkdir()
    (root / "gguf" / "model.gguf").write_bytes(b"")
    (root / "data.jsonl").write_text(json.dumps({"query": "Say hi.", "response": "hi"}) + "\n")
    (root / "latin1.jsonl").write_bytes('{"query": "caf\xe9", "response": "ol\xe9"}\n'.encode("latin-1"))
    (root / "empty.jsonl").write_text("")
    (root / "notjson.jsonl").write_text("this is not JSON\n")
    (root / "nofields.jsonl").write_text(json.dumps({"question": "Say hi.", "answer": "hi"}) + "\n")
    (root / "file.txt").write_text("a file the user has\n")
    (root / "folder.png").mkdir()
    summary = {"task": "gsm8k", "decoder": "ar", "accuracy": 0.5, "tokens_per_second": 10.0}
    (root / "results.jsonl").write_text(json.dumps(summary) + "\n")
    (root / "textual.jsonl").write_text(json.dumps({**summary, "accuracy": "high"}) + "\n")
    paths = {path.name.replace(".", "_"): str(path) for path in root.iterdir()}
    return {**paths, "root": str(root), "empty_gguf": str(root / "gguf" / "model.gguf"),
            "new": str(root / "new-output"), "port": str(free_port())}


def snapshot(root: str) -> dict[str, tuple]:
    """Every file and folder under root: bytes (hashed) and modification time."""
    found = {}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(folder, name)
            stat = path.stat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
            found[str(path.relative_to(root))] = (digest, stat.st_mtime_ns)
    return found


# (id, argv, text the error line must hold). {name} is a workspace path; {new} never exists.
GENERATE = [
    ("not-a-model-dir", ["generate", "hi", "--model", "{notmodel}"], "is not a model directory: it has no config.json"),
    ("corrupt-safetensors", ["generate", "hi", "--model", "{corrupt}"], "a weights file is corrupt"),
    ("fake-gguf", ["generate", "hi", "--model", "{fake_gguf}"], "is not a GGUF file"),
    ("empty-gguf", ["generate", "hi", "--model", "{empty_gguf}"], "model.gguf is empty"),
    ("missing-model", ["generate", "hi", "--model", "{new}/model"], "model not found"),
    ("missing-gguf", ["generate", "hi", "--model", "{new}.gguf"], "model file not found"),
    ("seed-2^64", ["generate", "hi", "--seed", BIG], "seed must lie in"),
    ("seed-negative", ["generate", "hi", "--seed", "-1"], "seed must lie in"),
    ("seed-text", ["generate", "hi", "--seed", "x"], "seed must be a whole number"),
    ("seed-fraction", ["generate", "hi", "--seed", "1.5"], "seed must be a whole number"),
    ("temperature-nan", ["generate", "hi", "--temperature", "nan"], "temperature must be a finite number"),
    ("temperature-inf", ["generate", "hi", "--temperature", "inf"], "temperature must be a finite number"),
    ("temperature-negative", ["generate", "hi", "--temperature", "-1"], "temperature must be >= 0"),
    ("temperature-text", ["generate", "hi", "--temperature", "warm"], "temperature must be a number"),
    ("max-new-tokens-0", ["generate", "hi", "--max-new-tokens", "0"], "max-new-tokens must be a positive integer"),
    ("max-new-tokens-negative", ["generate", "hi", "--max-new-tokens", "-5"], "max-new-tokens must be a positive integer"),
    ("max-new-tokens-text", ["generate", "hi", "--max-new-tokens", "ten"], "max-new-tokens must be a whole number"),
    ("slot-size-0", ["generate", "hi", "--decoder", "refusion", "--slot-size", "0"], "slot-size must be"),
    ("slot-threshold-nan", ["generate", "hi", "--decoder", "refusion", "--slot-threshold", "nan"], "slot-threshold must be a finite number"),
    ("token-threshold-inf", ["generate", "hi", "--decoder", "refusion", "--token-threshold", "inf"], "token-threshold must be a finite number"),
    ("threshold-nan", ["generate", "hi", "--decoder", "fast-dllm", "--threshold", "nan"], "threshold must be a finite number"),
    ("width-cost-nan", ["generate", "hi", "--decoder", "lossless", "--width-cost", "nan"], "width-cost must be a finite number"),
    ("width-cost-minus-inf", ["generate", "hi", "--decoder", "lossless", "--width-cost=-inf"], "width-cost must be a finite number"),
    ("branches-text", ["generate", "hi", "--decoder", "lossless", "--branches", "lots"], "branches must be 'auto' or a whole number"),
    ("kv-unknown", ["generate", "hi", "--decoder", "refusion", "--kv", "keep"], "kv must be one of"),
    ("threads-0", ["generate", "hi", "--threads", "0"], "threads must lie in [1, "),
    ("threads-text", ["generate", "hi", "--threads", "x"], "threads must be 'auto' or a whole number"),
    ("threads-huge", ["generate", "hi", "--threads", "99999"], "threads must lie in [1, "),
    ("dtype-unknown", ["generate", "hi", "--dtype", "float8"], "argument --dtype: invalid choice"),
    ("device-unknown", ["generate", "hi", "--device", "bogus"], "unknown device 'bogus'"),
    ("decoder-unknown", ["generate", "hi", "--decoder", "beam"], "unknown decoder 'beam'"),
    ("option-of-another-decoder", ["generate", "hi", "--decoder", "ar", "--slot-size", "4"], "decoder 'ar' does not take slot_size"),
    ("option-of-mdm-for-lossless", ["generate", "hi", "--decoder", "mdm", "--branches", "2"], "decoder 'mdm' does not take branches"),
    ("stop-empty", ["generate", "hi", "--stop", ""], "stop strings must be non-empty text"),
    ("prompt-blank", ["generate", "   "], "the prompt is empty"),
    ("prompt-missing", ["generate"], "the following arguments are required: prompt"),
    ("unknown-flag", ["generate", "hi", "--bogus"], "unrecognized arguments: --bogus"),
    ("mask-decoder-on-plain-model", ["generate", "hi", "--model", "{plain}", "--decoder", "refusion"], "needs a model trained with a <|mask|> token"),
    ("prompt-over-context", ["generate", "x" * 300, "--model", "{masked}"], "exceeds the model's context"),
]

TRAIN_ARGS = ["train", "--model", "{plain}", "--data", "{data_jsonl}", "--output", "{new}"]
TRAIN = [(name, TRAIN_ARGS + extra, message) for name, extra, message in [
    ("mdm-weight-nan", ["--mdm-weight", "nan"], "mdm-weight must be a finite number"),
    ("mdm-weight-inf", ["--mdm-weight", "inf"], "mdm-weight must be a finite number"),
    ("mdm-weight-negative", ["--mdm-weight", "-1"], "mdm-weight must be >= 0"),
    ("lr-nan", ["--lr", "nan"], "lr must be a finite number"),
    ("lr-inf", ["--lr", "inf"], "lr must be a finite number"),
    ("lr-negative", ["--lr=-1e-5"], "lr must be positive"),
    ("lr-zero", ["--lr", "0"], "lr must be positive"),
    ("lr-text", ["--lr", "fast"], "argument --lr: invalid float value"),
    ("epochs-nan", ["--epochs", "nan"], "epochs must be a finite number"),
    ("epochs-inf", ["--epochs", "inf"], "epochs must be a finite number"),
    ("epochs-zero", ["--epochs", "0"], "epochs must be positive"),
    ("warmup-ratio-nan", ["--warmup-ratio", "nan"], "warmup-ratio must be a finite number"),
    ("warmup-ratio-one", ["--warmup-ratio", "1"], "warmup-ratio must lie in [0, 1)"),
    ("max-steps-zero", ["--max-steps", "0"], "max-steps must be a positive integer"),
    ("max-steps-negative", ["--max-steps", "-3"], "max-steps must be a positive integer"),
    ("steps-and-epochs", ["--max-steps", "2", "--epochs", "1"], "not allowed with argument"),
    ("batch-size-zero", ["--batch-size", "0"], "batch-size must be a positive integer"),
    ("batch-size-negative", ["--batch-size", "-1"], "batch-size must be a positive integer"),
    ("batch-size-text", ["--batch-size", "x"], "argument --batch-size: invalid int value"),
    ("grad-accum-zero", ["--grad-accum", "0"], "grad-accum must be a positive integer"),
    ("max-length-zero", ["--max-length", "0"], "max-length must be a positive integer"),
    ("save-every-zero", ["--save-every", "0"], "save-every must be a positive integer"),
    ("log-every-negative", ["--log-every", "-1"], "log-every must be a positive integer"),
    ("lora-rank-zero", ["--lora-rank", "0"], "lora-rank must be a positive integer"),
    ("slot-sizes-zero", ["--slot-sizes", "0,4"], "slot sizes must be positive integers"),
    ("slot-sizes-text", ["--slot-sizes", "a,b"], "expected comma-separated integers"),
    ("seed-2^64", ["--seed", BIG], "seed must lie in [0, 4294967295]"),
    ("seed-negative", ["--seed", "-1"], "seed must lie in [0, 4294967295]"),
    ("seed-text", ["--seed", "x"], "argument --seed: invalid int value"),
    ("objective-unknown", ["--objective", "gan"], "argument --objective: invalid choice"),
    ("mdm-weight-with-ar", ["--objective", "ar", "--mdm-weight", "0.5"], "--mdm-weight applies to --objective refusion only"),
    ("prefix-share-over-one", ["--prefix-share", "1.5"], "prefix-share must lie in [0, 1], got 1.5"),
    ("prefix-share-negative", ["--prefix-share=-0.1"], "prefix-share must lie in [0, 1], got -0.1"),
    ("next-token-share-one", ["--next-token-share", "1"], "next-token-share must lie in [0, 1) (1 would be the ar objective), got 1.0"),
    ("next-token-share-with-ar", ["--objective", "ar", "--next-token-share", "0.5"], "--next-token-share applies to --objective refusion only"),
    ("prefix-share-with-mdm", ["--objective", "mdm", "--prefix-share", "0.5"], "--prefix-share applies to --objective refusion only"),
    ("ar-across-slots-with-ar", ["--objective", "ar", "--ar-across-slots"], "--ar-across-slots applies to --objective refusion only"),
    ("draft-horizon-without-prefix", ["--draft-horizon", "4"], "draft-horizon shortens the prefix layout's masked tail"),
    ("draft-horizon-zero", ["--prefix-share", "1", "--draft-horizon", "0"], "draft-horizon must be a positive integer"),
    ("draft-horizon-with-ar", ["--objective", "ar", "--draft-horizon", "4"], "--draft-horizon applies to --objective refusion only"),
    ("continue-adapter-not-an-adapter", ["--continue-adapter"], "--continue-adapter needs a LoRA output directory"),
    ("continue-adapter-with-rank", ["--continue-adapter", "--lora-rank", "4"], "continue-adapter keeps the adapter's own rank"),
    ("precision-unknown", ["--precision", "fp8"], "argument --precision: invalid choice"),
    ("eval-every-without-eval-data", ["--eval-every", "5"], "--eval-every needs --eval-data"),
    ("pad-responses-with-refusion", ["--pad-responses-to", "4"], "--pad-responses-to applies to --objective mdm only"),
    ("resume-without-checkpoint", ["--resume"], "--resume: no checkpoint-N directory"),
    ("lora-target-unknown", ["--lora-rank", "2", "--lora-targets", "nope_proj"], "lora-targets nope_proj name no linear layer"),
    ("eval-data-not-utf8", ["--eval-data", "{latin1_jsonl}"], "latin1.jsonl: not UTF-8 text"),
    # A loss that is not finite stops the run before anything is saved (loss = L_AR + 1e38 L_MDM overflows).
    ("loss-overflows", ["--mdm-weight", "1e38", "--max-steps", "2", "--batch-size", "1"], "the training loss is not finite at step 1"),
]] + [
    ("output-is-a-file", ["train", "--model", "{plain}", "--data", "{data_jsonl}", "--output", "{file_txt}"], "is a file, not a directory"),
    ("output-inside-a-file", ["train", "--model", "{plain}", "--data", "{data_jsonl}", "--output", "{file_txt}/run"], "is a file, not a directory"),
    ("data-not-utf8", ["train", "--model", "{plain}", "--data", "{latin1_jsonl}", "--output", "{new}"], "latin1.jsonl: not UTF-8 text"),
    ("data-empty", ["train", "--model", "{plain}", "--data", "{empty_jsonl}", "--output", "{new}"], "empty.jsonl: no records in it"),
    ("data-not-jsonl", ["train", "--model", "{plain}", "--data", "{notjson_jsonl}", "--output", "{new}"], "notjson.jsonl:1: not valid JSON"),
    ("data-missing-fields", ["train", "--model", "{plain}", "--data", "{nofields_jsonl}", "--output", "{new}"], "expected string fields 'query' and 'response'"),
    ("data-missing", ["train", "--model", "{plain}", "--data", "{new}.jsonl", "--output", "{new}"], "data file not found"),
    ("data-is-a-dir", ["train", "--model", "{plain}", "--data", "{notmodel}", "--output", "{new}"], "data file not found"),
    ("model-not-a-model", ["train", "--model", "{notmodel}", "--data", "{data_jsonl}", "--output", "{new}"], "is not a model directory"),
    ("model-fake-gguf", ["train", "--model", "{fake_gguf}", "--data", "{data_jsonl}", "--output", "{new}"], "is not a GGUF file"),
    ("output-missing", ["train", "--model", "{plain}", "--data", "{data_jsonl}"], "the following arguments are required: --output"),
]

EVAL_ARGS = ["eval", "--task", "mini-gsm8k", "--model", "{masked}"]
EVAL = [(name, EVAL_ARGS + extra, message) for name, extra, message in [
    ("limit-zero", ["--limit", "0"], "--limit must be a positive integer"),
    ("limit-negative", ["--limit", "-2"], "--limit must be a positive integer"),
    ("limit-text", ["--limit", "all"], "argument --limit: invalid int value"),
    ("output-is-a-file", ["--output", "{file_txt}"], "is a file, not a directory"),
    ("temperature-nan", ["--temperature", "nan"], "temperature must be a finite number"),
    ("temperature-inf", ["--temperature", "inf"], "temperature must be a finite number"),
    ("seed-2^64", ["--seed", BIG], "seed must lie in"),
    ("max-new-tokens-zero", ["--max-new-tokens", "0"], "max-new-tokens must be a positive integer"),
    ("token-threshold-nan", ["--decoder", "refusion", "--token-threshold", "nan"], "token-threshold must be a finite number"),
    ("option-of-another-decoder", ["--decoder", "ar", "--slot-size", "4"], "decoder 'ar' does not take slot_size"),
    ("threads-zero", ["--threads", "0"], "threads must lie in [1, "),
    ("dtype-unknown", ["--dtype", "int4"], "argument --dtype: invalid choice"),
    ("device-unknown", ["--device", "bogus"], "unknown device 'bogus'"),
]] + [
    ("task-unknown", ["eval", "--task", "nope", "--model", "{masked}"], "unknown task 'nope'"),
    ("task-missing", ["eval", "--model", "{masked}"], "the following arguments are required: --task"),
    ("model-not-a-model", ["eval", "--task", "mini-gsm8k", "--model", "{notmodel}", "--limit", "1"], "is not a model directory"),
    ("model-empty-gguf", ["eval", "--task", "mini-gsm8k", "--model", "{empty_gguf}", "--limit", "1"], "model.gguf is empty"),
]

PLOT = [
    ("not-utf8", ["plot", "{latin1_jsonl}", "--output", "{new}.png"], "latin1.jsonl: not UTF-8 text"),
    ("not-json", ["plot", "{notjson_jsonl}", "--output", "{new}.png"], "no evaluation summary in it"),
    ("missing", ["plot", "{new}.jsonl", "--output", "{new}.png"], "no such results file or eval output directory"),
    ("dir-without-summary", ["plot", "{notmodel}", "--output", "{new}.png"], "no such results file or eval output directory"),
    ("accuracy-text", ["plot", "{textual_jsonl}", "--output", "{new}.png"], "accuracy must be a finite number, got 'high'"),
    ("unknown-image-type", ["plot", "{results_jsonl}", "--output", "{new}.xyz"], "unknown image type '.xyz'"),
    ("no-image-extension", ["plot", "{results_jsonl}", "--output", "{new}"], "unknown image type '(no extension)'"),
    ("output-is-a-dir", ["plot", "{results_jsonl}", "--output", "{folder_png}"], "is a directory, not an image file"),
    ("output-inside-a-file", ["plot", "{results_jsonl}", "--output", "{file_txt}/plot.png"], "is a file, not a directory"),
    ("output-missing", ["plot", "{results_jsonl}"], "the following arguments are required: --output"),
]

LM_EVAL_TASKS = [
    ("directory-is-a-file", ["lm-eval-tasks", "{file_txt}"], "directory {file_txt} is a file, not a directory"),
    ("directory-inside-a-file", ["lm-eval-tasks", "{file_txt}/tasks"], "is a file, not a directory"),
    ("directory-missing", ["lm-eval-tasks"], "the following arguments are required: directory"),
]

SERVE_ARGS = ["serve", "--port", "{port}"]
SERVE = [(name, SERVE_ARGS + extra, message) for name, extra, message in [
    ("mask-decoder-on-plain-model", ["--model", "{plain}", "--decoder", "refusion"], "--decoder refusion needs a model trained with a <|mask|> token"),
    ("lossless-on-plain-model", ["--model", "{plain}", "--decoder", "lossless"], "--decoder lossless needs a model trained with a <|mask|> token"),
    ("model-not-a-model", ["--model", "{notmodel}"], "is not a model directory"),
    ("model-corrupt", ["--model", "{corrupt}"], "a weights file is corrupt"),
    ("max-tokens-limit-zero", ["--max-tokens-limit", "0"], "--max-tokens-limit must be a positive integer"),
    ("max-body-bytes-negative", ["--max-body-bytes", "-1"], "--max-body-bytes must be a positive integer"),
    ("max-waiting-zero", ["--max-waiting", "0"], "--max-waiting must be a positive integer"),
    ("max-prompt-tokens-zero", ["--max-prompt-tokens", "0"], "--max-prompt-tokens must be a positive integer"),
    ("temperature-nan", ["--temperature", "nan"], "temperature must be a finite number"),
    ("slot-threshold-inf", ["--decoder", "refusion", "--slot-threshold", "inf"], "slot-threshold must be a finite number"),
    ("seed-2^64", ["--seed", BIG], "seed must lie in"),
    ("decoder-unknown", ["--decoder", "nope"], "unknown decoder 'nope'"),
    ("option-of-another-decoder", ["--decoder", "ar", "--slot-size", "4"], "decoder 'ar' does not take slot_size"),
    ("log-level-unknown", ["--log-level", "loud"], "argument --log-level: invalid choice"),
    ("threads-zero", ["--model", "{masked}", "--threads", "0"], "threads must lie in [1, "),
    ("device-unknown", ["--model", "{masked}", "--device", "bogus"], "unknown device 'bogus'"),
    ("host-unknown", ["--host", "999.1.1.1"], "cannot listen on 999.1.1.1"),
]] + [
    ("port-70000", ["serve", "--port", "70000"], "--port must lie in 1..65535"),
    ("port-zero", ["serve", "--port", "0"], "--port must lie in 1..65535"),
    ("port-text", ["serve", "--port", "http"], "argument --port: invalid int value"),
]

REPRO = [
    ("output-is-a-file", ["repro", "--output", "{file_txt}", "--quick"], "is a file, not a directory"),
    ("output-inside-a-file", ["repro", "--output", "{file_txt}/run", "--quick"], "is a file, not a directory"),
    ("steps-zero", ["repro", "--output", "{new}", "--steps", "0"], "steps must be a positive integer"),
    ("steps-negative", ["repro", "--output", "{new}", "--quick", "--steps", "-1"], "steps must be a positive integer"),
    ("finetune-steps-negative", ["repro", "--output", "{new}", "--finetune-steps", "-1"], "finetune-steps must be 0"),
    ("limit-zero", ["repro", "--output", "{new}", "--limit", "0"], "test-limit must be a positive integer"),
    ("steps-text", ["repro", "--output", "{new}", "--steps", "many"], "argument --steps: invalid int value"),
]

BUILD_DATA = [
    ("output-is-a-file", ["build-data", "--output", "{file_txt}", "--instructions-only"], "is a file, not a directory"),
    ("output-inside-a-file", ["build-data", "--output", "{file_txt}/data", "--instructions-only"], "is a file, not a directory"),
    ("count-zero", ["build-data", "--output", "{new}", "--count", "0"], "--count must be a positive integer"),
    ("count-negative", ["build-data", "--output", "{new}", "--count", "-1"], "--count must be a positive integer"),
    ("seed-2^64", ["build-data", "--output", "{new}", "--seed", BIG], "seed must lie in"),
    ("seed-negative", ["build-data", "--output", "{new}", "--seed", "-1"], "seed must lie in"),
    ("seed-text", ["build-data", "--output", "{new}", "--seed", "x"], "argument --seed: invalid int value"),
    ("max-new-tokens-zero", ["build-data", "--output", "{new}", "--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
    ("batch-size-zero", ["build-data", "--output", "{new}", "--batch-size", "0"], "--batch-size must be a positive integer"),
    ("dtype-unknown", ["build-data", "--output", "{new}", "--dtype", "half-ish"], "argument --dtype: invalid choice"),
    ("device-unknown", ["build-data", "--output", "{new}", "--model", "{plain}", "--device", "bogus"], "unknown device 'bogus'"),
    ("model-not-a-model", ["build-data", "--output", "{new}", "--model", "{notmodel}", "--count", "2"], "is not a model directory"),
    ("families-unknown", ["build-data", "--output", "{new}", "--families", "poems", "--instructions-only"], "unknown family 'poems'"),
    ("families-weight-text", ["build-data", "--output", "{new}", "--families", "chat=many", "--instructions-only"],
     "the weight of chat must be a number"),
    ("families-weight-zero", ["build-data", "--output", "{new}", "--families", "chat=0", "--instructions-only"],
     "the weight of chat must be a positive number"),
    ("families-weight-nan", ["build-data", "--output", "{new}", "--families", "chat=nan", "--instructions-only"],
     "the weight of chat must be a positive number"),
    ("families-empty", ["build-data", "--output", "{new}", "--families", ",", "--instructions-only"], "names no family"),
]

BENCH_ARGS = ["bench", "--model", "{masked}"]
BENCH = [(name, BENCH_ARGS + extra, message) for name, extra, message in [
    ("decoder-unknown", ["--decoders", "beam"], "unknown decoder 'beam' in --decoders"),
    ("decoders-empty", ["--decoders", ","], "--decoders names no decoder"),
    ("passes-zero", ["--passes", "0"], "--passes must be a positive integer"),
    ("option-without-value", ["--decoders", "refusion:slot_size"], "options are written key=value"),
    ("option-without-decoder", ["--decoders", "slot_size=4"], "has no decoder name before it"),
    ("option-of-another-decoder", ["--decoders", "ar:slot_size=4"], "decoder 'ar' does not take slot_size"),
    ("slot-size-zero", ["--decoders", "refusion:slot_size=0"], "slot-size must be"),
    ("threshold-nan", ["--decoders", "refusion:slot_threshold=nan"], "slot-threshold must be a finite number"),
    ("temperature-nan", ["--decoders", "ar:temperature=nan"], "temperature must be a finite number"),
    ("temperature-negative", ["--decoders", "ar:temperature=-1"], "temperature must be >= 0"),
    ("seed-2^64", ["--decoders", f"ar:seed={BIG}"], "seed must lie in"),
    ("prompts-not-jsonl", ["--prompts", "{notjson_jsonl}"], "notjson.jsonl:1: not a JSON object"),
    ("prompts-missing", ["--prompts", "{new}.jsonl"], "prompts file not found"),
    ("prompts-not-utf8", ["--prompts", "{latin1_jsonl}"], "latin1.jsonl: not UTF-8 text"),
    ("prompts-empty", ["--prompts", "{empty_jsonl}"], "empty.jsonl: no prompts in it"),
    ("prompts-without-prompt", ["--prompts", "{nofields_jsonl}"], 'expected {{"prompt": "non-empty text"}}'),
    ("max-new-tokens-zero", ["--max-new-tokens", "0"], "--max-new-tokens must be a positive integer"),
    ("limit-zero", ["--limit", "0"], "--limit must be a positive integer"),
    ("output-is-a-file", ["--output", "{file_txt}"], "is a file, not a directory"),
    ("threads-text", ["--threads", "x"], "threads must be 'auto' or a whole number"),
    ("device-unknown", ["--device", "bogus"], "unknown device 'bogus'"),
    ("dtype-unknown", ["--dtype", "fp8"], "argument --dtype: invalid choice"),
]] + [
    ("model-fake-gguf", ["bench", "--model", "{fake_gguf}", "--decoders", "ar", "--limit", "1"], "is not a GGUF file"),
]

TOP = [
    ("no-command", [], "the following arguments are required: COMMAND"),
    ("unknown-command", ["fly"], "argument COMMAND: invalid choice: 'fly'"),
]

CASES = [pytest.param(argv, message, id=f"{group}-{name}")
         for group, cases in [("generate", GENERATE), ("train", TRAIN), ("eval", EVAL), ("plot", PLOT),
                              ("lm-eval-tasks", LM_EVAL_TASKS), ("serve", SERVE), ("repro", REPRO),
                              ("build-data", BUILD_DATA), ("bench", BENCH), ("refusion", TOP)]
         for name, argv, message in cases]


class RanTooLong(Exception):
    pass


def too_long(signum, frame):
    raise RanTooLong(f"still running after {CASE_SECONDS} s: the command went to work instead of failing")


CASE_SECONDS = 120


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    """main(argv) here: (exit status, stdout, stderr). An exception other than SystemExit fails the test."""
    threads = torch.get_num_threads()
    previous = signal.signal(signal.SIGALRM, too_long)  # e.g. a server that starts when it should refuse
    signal.alarm(CASE_SECONDS)
    try:
        main(argv)
        status = 0
    except SystemExit as exit:
        status = exit.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        torch.set_num_threads(threads)  # --threads sets it for the process
    out, err = capsys.readouterr()
    return status, out, err


def fill(argv: list[str], workspace: dict[str, str]) -> list[str]:
    return [part.format(**workspace) for part in argv]


def assert_one_line_error(status, out: str, err: str, message: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, f"exit status {status}\nstdout: {out}\nstderr: {err}"
    assert "Traceback" not in out + err, err
    assert lines, "nothing on stderr"
    last = lines[-1]
    assert last.startswith("error: ") or USAGE_ERROR.match(last), err
    assert message in last, f"expected {message!r} in {last!r}"


def test_the_table_covers_every_command_with_enough_cases():
    commands = {param.values[0][0] for param in CASES if param.values[0]}
    assert {"generate", "train", "eval", "plot", "lm-eval-tasks", "serve", "repro", "build-data", "bench"} <= commands
    assert len(CASES) >= 80


@pytest.mark.parametrize("argv, message", CASES)
def test_bad_input_is_one_line_and_changes_nothing(argv, message, workspace, capsys):
    before = snapshot(workspace["root"])
    status, out, err = run(fill(argv, workspace), capsys)
    assert_one_line_error(status, out, err, message.format(**workspace))
    assert snapshot(workspace["root"]) == before, "a file in the workspace was created or changed"


def float_option_cases() -> list:
    """NaN and infinity for every float option of every command, found from the parsers and the decoders' declarations."""
    import argparse

    from refusion.cli import build_parser
    from refusion.decoding.dispatch import DECODERS
    from refusion.decoding.options import TEMPERATURE, all_options

    decoding = {TEMPERATURE.flag: None, **{option.flag: owners[0] for option, owners in all_options(DECODERS).values()
                                           if option.kind is float}}
    prefix = {"generate": ["generate", "hi"], "train": TRAIN_ARGS, "eval": EVAL_ARGS, "serve": SERVE_ARGS}
    cases = []
    commands = next(action for action in build_parser()._actions if isinstance(action, argparse._SubParsersAction))
    for command, parser in commands.choices.items():
        flags = {action.option_strings[-1].lstrip("-"): None for action in parser._actions if action.type is float}
        if any(action.dest == "decoder" for action in parser._actions):
            flags.update(decoding)
        if command == "bench":  # decoder options are written in --decoders specs
            cases += [pytest.param(["bench", "--decoders", f"{decoder or 'ar'}:{flag.replace('-', '_')}={value}"], flag,
                                   id=f"bench-{flag}-{value}") for flag, decoder in decoding.items() for value in ("nan", "inf")]
            continue
        assert not flags or command in prefix, f"{command} has float options {sorted(flags)}: add it to this test"
        for flag, decoder in flags.items():
            for value in ("nan", "inf", "-inf"):
                argv = prefix[command] + (["--decoder", decoder] if decoder else []) + [f"--{flag}={value}"]
                cases.append(pytest.param(argv, flag, id=f"{command}-{flag}-{value}"))
    return cases


@pytest.mark.parametrize("argv, flag", float_option_cases())
def test_every_float_option_rejects_nan_and_infinity_by_name(argv, flag, workspace, capsys):
    before = snapshot(workspace["root"])
    status, out, err = run(fill(argv, workspace), capsys)
    assert_one_line_error(status, out, err, f"{flag} must be a finite number")
    assert snapshot(workspace["root"]) == before


# `python -m refusion.lm_eval` indexes every lm-eval task before it reads --model_args (about 10 s): three cases.
LM_EVAL = [
    pytest.param("pretrained={notmodel}", "refusion_gsm8k", "is not a model directory", id="lm-eval-not-a-model"),
    # The option is refused before the model would load (and fail).
    pytest.param("pretrained={notmodel},decoder=refusion,slot_threshold=nan", "refusion_gsm8k",
                 "slot-threshold must be a finite number", id="lm-eval-threshold-nan"),
    pytest.param("pretrained={notmodel}", "nosuchtask", "Tasks not found: nosuchtask", id="lm-eval-unknown-task"),
]


@pytest.mark.skipif(RefusionLM is None, reason="lm-evaluation-harness is not installed")
@pytest.mark.parametrize("model_args, tasks, message", LM_EVAL)
def test_lm_eval_arguments_are_checked_before_anything_runs(model_args, tasks, message, workspace):
    before = snapshot(workspace["root"])
    argv = [sys.executable, "-m", "refusion.lm_eval", "--model", "refusion", "--model_args", model_args.format(**workspace),
            "--tasks", tasks, "--limit", "1", "--output_path", workspace["new"]]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    assert_one_line_error(run.returncode, run.stdout, run.stderr, message)
    assert snapshot(workspace["root"]) == before, "a file in the workspace was created or changed"
