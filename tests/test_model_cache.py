"""The built-in model cache: an interrupted first run, a half-written or damaged cache, all recover by themselves."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import refusion
from refusion import model as model_module
from tests.tiny_models import char_tokenizer, tiny_model

NAME = "smollm2-135m-instruct"
LOAD = f"import refusion; refusion.load({NAME!r}); print('loaded')"


def run_load(cache: Path, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "REFUSION_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    # Ctrl-C must reach it even where this suite runs with SIGINT ignored (in the background, under nohup).
    return subprocess.Popen([sys.executable, "-c", LOAD], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), **kwargs)


def test_ctrl_c_during_the_first_conversion_leaves_nothing_and_the_next_run_converts(tmp_path):
    process = run_load(tmp_path)
    deadline = time.monotonic() + 120
    # Interrupt as soon as the conversion starts writing its files.
    while not any(p.name.endswith(".partial") for p in tmp_path.glob(".*")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.005)
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=60)
    assert process.returncode != 0  # it was interrupted before the cache was complete...
    assert list(tmp_path.iterdir()) == []  # ...and left neither a cache nor a leftover

    again = run_load(tmp_path)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and out.strip() == "loaded", err
    assert (tmp_path / NAME / model_module.CACHE_MARKER).is_file()


@pytest.fixture
def fake_conversion(monkeypatch, tmp_path):
    """The cache logic with a tiny model standing in for the GGUF conversion; counts conversions."""
    conversions = []

    def convert(path, dtype):
        conversions.append(path)
        tokenizer = char_tokenizer()
        return tiny_model("llama", vocab_size=len(tokenizer)), tokenizer

    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path))
    monkeypatch.setattr(model_module, "_load_gguf", convert)
    return conversions


def test_a_cache_is_converted_once_then_reused(fake_conversion, tmp_path):
    refusion.load(NAME)
    refusion.load(NAME)
    assert len(fake_conversion) == 1


def test_a_half_written_cache_from_an_interrupted_run_is_rebuilt(fake_conversion, tmp_path):
    # What an interrupted conversion used to leave: config.json but no tokenizer.
    half = tmp_path / NAME
    tiny_model("llama", vocab_size=64).save_pretrained(half)
    model, tokenizer = refusion.load(NAME)
    assert len(fake_conversion) == 1
    assert tokenizer("a")["input_ids"] and (half / model_module.CACHE_MARKER).is_file()


def test_a_damaged_cache_is_rebuilt(fake_conversion, tmp_path):
    refusion.load(NAME)
    weights = tmp_path / NAME / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    refusion.load(NAME)
    assert len(fake_conversion) == 2
    refusion.load(NAME)
    assert len(fake_conversion) == 2


def test_a_failed_conversion_keeps_the_previous_state(fake_conversion, monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(type(char_tokenizer()), "save_pretrained", interrupted)
    with pytest.raises(KeyboardInterrupt):
        refusion.load(NAME)
    assert list(tmp_path.iterdir()) == []
