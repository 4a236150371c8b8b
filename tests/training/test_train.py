"""`refusion train` end to end on tiny random models: learn, save, load, resume, LoRA, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import refusion
from refusion.training.collate import ObjectiveCollator
from refusion.training.data import load_dataset
from refusion.training.trainer import EVAL_SEED, FINAL_STAGING, ObjectiveTrainer, last_complete_checkpoint
from refusion.cli import main
from tests.training.conftest import char_tokenizer

RECORDS = [
    {"query": "hi", "response": "hello there"},
    {"query": "2+2?", "response": "four"},
    {"query": "name?", "response": "ReFusion ok"},
    {"messages": [{"role": "user", "content": "bye"}, {"role": "assistant", "content": "see you soon"}]},
]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def run_cli(argv: list[str]) -> None:
    main(argv)


def generate_json(capsys, model_dir: str, prompt: str) -> dict:
    capsys.readouterr()
    run_cli(["generate", prompt, "--model", model_dir, "--decoder", "refusion", "--slot-size", "4", "--blocks", "1",
             "--max-new-tokens", "16", "--slot-threshold", "0.6", "--token-threshold", "0.3", "--json"])
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_refusion_training_memorises_and_generates(tiny_model_dir, write_jsonl, tmp_path, capsys):
    output = tmp_path / "out"
    # Each record 4 times in a batch of 16: four maskings of every example per step.
    run_cli(["train", "--model", tiny_model_dir, "--data", write_jsonl(RECORDS * 4), "--output", str(output),
             "--objective", "refusion", "--max-steps", "100", "--lr", "5e-3", "--warmup-ratio", "0.1", "--batch-size", "16",
             "--slot-sizes", "4", "--log-every", "20", "--save-every", "1000"])
    model, tokenizer = refusion.load(output)
    assert model.config.refusion_objective == "refusion"
    assert tokenizer.convert_ids_to_tokens(model.config.mask_token_id) == "<|mask|>"
    history = json.loads((output / "loss.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(20, 101, 20))
    assert history[-1]["loss"] < 0.05 * history[0]["loss"]
    for entry in history:  # the two terms are logged apart and add up to the loss (lambda = 1)
        assert entry["loss"] == pytest.approx(entry["loss_ar"] + entry["loss_mdm"], abs=2e-3)
    assert (output / "loss.png").stat().st_size > 1000
    for record in RECORDS:
        prompt = record.get("query") or record["messages"][0]["content"]
        response = record.get("response") or record["messages"][-1]["content"]
        result = generate_json(capsys, str(output), prompt)
        assert result["text"] == response
        assert result["finish_reason"] == "stop"
        assert result["forward_passes"] < result["new_tokens"]  # slots were planned and verified in parallel


def test_options_are_checked_before_loading(tiny_model_dir, write_jsonl, tmp_path, capsys):
    data = write_jsonl(RECORDS)
    base = ["train", "--model", tiny_model_dir, "--data", data, "--output", str(tmp_path / "o")]
    for extra, message in ((["--objective", "ar", "--slot-sizes", "4"], "--slot-sizes applies to --objective refusion"),
                           (["--pad-responses-to", "64"], "--pad-responses-to applies to --objective mdm only"),
                           (["--objective", "mdm", "--pad-responses-to", "0"], "pad-responses-to must be a positive"),
                           (["--batch-size", "0"], "batch-size must be a positive integer"),
                           (["--lora-targets", "up_proj"], "lora-targets needs --lora-rank"),
                           (["--lora-rank", "4", "--lora-targets", "q_proj,mlp_in"], "lora-targets mlp_in name no linear layer"),
                           (["--resume"], "no checkpoint-N directory")):
        with pytest.raises(SystemExit) as exit_info:
            run_cli(base + extra)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_resume_continues_after_a_kill(tiny_model_dir, write_jsonl, tmp_path, capsys):
    output = tmp_path / "out"
    command = [sys.executable, "-m", "refusion", "train", "--model", tiny_model_dir, "--data", write_jsonl(RECORDS),
               "--output", str(output), "--objective", "mdm", "--batch-size", "2", "--lr", "1e-3", "--save-every", "3",
               "--log-every", "1"]
    process = subprocess.Popen(command + ["--max-steps", "100000"], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Any complete checkpoint will do: older ones are rotated away (save_total_limit), so don't wait for one name.
        deadline = time.time() + 600  # generous: a loaded 2-core machine is slow to start a Trainer
        while last_complete_checkpoint(output) is None:
            assert process.poll() is None and time.time() < deadline, "no checkpoint was written"
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    killed_at = int(last_complete_checkpoint(output).rsplit("-", 1)[1])
    with pytest.raises(SystemExit):
        run_cli(command[3:] + ["--max-steps", str(killed_at + 6)])
    assert "pass --resume" in capsys.readouterr().err
    resumed = subprocess.run(command + ["--max-steps", str(killed_at + 6), "--resume"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from" in resumed.stdout
    history = json.loads((output / "loss.json").read_text())["history"]
    # the killed run's steps up to its checkpoint, then the resumed ones
    assert [h["step"] for h in history] == list(range(1, killed_at + 7))
    model, _ = refusion.load(output)
    assert model.config.refusion_objective == "mdm"


def test_lora_output_loads_on_top_of_its_base(tiny_model_dir, write_jsonl, tmp_path):
    output = tmp_path / "lora"
    data = write_jsonl(RECORDS)
    run_cli(["train", "--model", tiny_model_dir, "--data", data, "--output", str(output), "--eval-data", data,
             "--max-steps", "3", "--lr", "1e-2", "--batch-size", "4", "--lora-rank", "4", "--log-every", "1",
             "--eval-every", "1"])
    assert json.loads((output / "adapter_config.json").read_text())["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())
    base, _ = refusion.load(tiny_model_dir)
    model, tokenizer = refusion.load(output)
    mask = model.config.mask_token_id
    assert model.config.refusion_objective == "refusion"
    assert tokenizer.convert_ids_to_tokens(mask) == "<|mask|>" and mask == base.config.vocab_size
    # the mask token's row was trained (it started as the mean of the other rows), the others were not
    embedding = model.get_input_embeddings().weight
    assert not torch.allclose(embedding[mask], base.get_input_embeddings().weight.mean(dim=0), atol=1e-4)
    torch.testing.assert_close(embedding[:mask], base.get_input_embeddings().weight)
    # the LoRA weights were merged into the attention projections
    attention = model.model.layers[0].self_attn.q_proj.weight
    assert not torch.allclose(attention, base.model.layers[0].self_attn.q_proj.weight)
    # the held-out loss is logged at every step against wall-clock time; the last one is the saved model's
    # loss on the same fixed masks, recomputed here from scratch
    saved = json.loads((output / "loss.json").read_text())
    evaluations = saved["eval_history"]
    assert [e["step"] for e in evaluations] == [0, 1, 2, 3]
    assert 0 < evaluations[0]["elapsed_seconds"] <= evaluations[-1]["elapsed_seconds"]
    assert evaluations[-1]["eval_loss"] < evaluations[0]["eval_loss"]  # it learned the (seen) held-out data
    dataset = load_dataset([data], tokenizer, 4096)
    collate = ObjectiveCollator("refusion", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                                else tokenizer.eos_token_id, mask, seed=EVAL_SEED, eos_id=tokenizer.eos_token_id)
    batch = collate([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        loss = ObjectiveTrainer.compute_loss(SimpleNamespace(objective="refusion", mdm_weight=1.0), model.eval(), batch)
    assert loss.item() == pytest.approx(evaluations[-1]["eval_loss"], rel=1e-4)


def test_continue_adapter_trains_the_same_adapter_further(tiny_model_dir, write_jsonl, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    data = write_jsonl(RECORDS)
    run_cli(["train", "--model", tiny_model_dir, "--data", data, "--output", str(first), "--max-steps", "2", "--lr", "1e-2",
             "--batch-size", "4", "--lora-rank", "4", "--lora-targets", "q_proj,up_proj"])
    _, first_tokenizer = refusion.load(first)
    first_tokenizer.chat_template = "{% for m in messages %}<{{ m['content'] }}>{% endfor %}"  # unlike the base's
    first_tokenizer.save_pretrained(first)
    before = {path.name: path.read_bytes() for path in first.iterdir() if path.is_file()}
    run_cli(["train", "--model", str(first), "--continue-adapter", "--data", data, "--output", str(second), "--max-steps", "2",
             "--lr", "1e-2", "--batch-size", "4", "--prefix-share", "1", "--draft-horizon", "3", "--save-every", "2"])
    assert {path.name: path.read_bytes() for path in first.iterdir() if path.is_file()} == before  # the start is untouched
    config = json.loads((second / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(Path(tiny_model_dir).resolve())  # over the same base, not over `first`
    assert config["r"] == 4 and sorted(config["target_modules"]) == ["q_proj", "up_proj"]
    base, _ = refusion.load(tiny_model_dir)
    started, _ = refusion.load(first)
    continued, tokenizer = refusion.load(second)
    for loaded in (tokenizer, refusion.load(second / "checkpoint-2")[1]):  # the adapter's tokenizer, not the base's
        assert loaded.chat_template == first_tokenizer.chat_template
    mask = continued.config.mask_token_id
    assert mask == started.config.mask_token_id and tokenizer.convert_ids_to_tokens(mask) == "<|mask|>"
    layer, started_layer, base_layer = continued.model.layers[0], started.model.layers[0], base.model.layers[0]
    for name in ("q_proj", "up_proj"):  # went on from the first adapter's weights
        module = getattr(layer.self_attn if name == "q_proj" else layer.mlp, name)
        module_started = getattr(started_layer.self_attn if name == "q_proj" else started_layer.mlp, name)
        assert not torch.allclose(module.weight, module_started.weight)
    torch.testing.assert_close(layer.self_attn.k_proj.weight, base_layer.self_attn.k_proj.weight)  # not a target
    embedding = continued.get_input_embeddings().weight
    assert not torch.allclose(embedding[mask], started.get_input_embeddings().weight[mask])  # the mask row trained on
    torch.testing.assert_close(embedding[:mask], base.get_input_embeddings().weight)


def test_precision_chooses_mixed_bf16(monkeypatch, tmp_path):
    from refusion import hardware
    from refusion.training import trainer

    def config(precision):
        return trainer.TrainConfig(model="m", data=["d"], output=str(tmp_path / "out"), precision=precision)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(hardware, "cpu_has_bf16", lambda native=native: native)
        assert config("auto").mixed_bf16() is native
        assert config("bfloat16").mixed_bf16() and not config("float32").mixed_bf16()
    assert trainer._training_arguments(config("bfloat16")).bf16 and not trainer._training_arguments(config("float32")).bf16


def test_lora_targets_choose_the_adapted_layers(tiny_model_dir, write_jsonl, tmp_path):
    output = tmp_path / "lora-mlp"
    run_cli(["train", "--model", tiny_model_dir, "--data", write_jsonl(RECORDS), "--output", str(output),
             "--max-steps", "2", "--lr", "1e-2", "--batch-size", "4", "--lora-rank", "4", "--lora-targets", "up_proj,down_proj"])
    assert sorted(json.loads((output / "adapter_config.json").read_text())["target_modules"]) == ["down_proj", "up_proj"]
    base, _ = refusion.load(tiny_model_dir)
    model, _ = refusion.load(output)
    layer, base_layer = model.model.layers[0], base.model.layers[0]
    assert not torch.allclose(layer.mlp.up_proj.weight, base_layer.mlp.up_proj.weight)
    assert not torch.allclose(layer.mlp.down_proj.weight, base_layer.mlp.down_proj.weight)
    torch.testing.assert_close(layer.mlp.gate_proj.weight, base_layer.mlp.gate_proj.weight)
    torch.testing.assert_close(layer.self_attn.q_proj.weight, base_layer.self_attn.q_proj.weight)


def test_ddp_two_cpu_processes(tiny_model_dir, write_jsonl, tmp_path):
    output = tmp_path / "ddp"
    # On a machine without a GPU, accelerate's multi-process launcher (torchrun) gives CPU DDP over gloo.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "refusion", "train", "--model", tiny_model_dir,
               "--data", write_jsonl(RECORDS), "--output", str(output), "--max-steps", "3", "--batch-size", "1",
               "--lr", "1e-3", "--log-every", "1", "--slot-sizes", "4"]
    done = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    state = json.loads((output / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3
    # 2 processes x batch 1 x 3 steps = 6 examples: one and a half passes over the 4 examples
    assert state["epoch"] == pytest.approx(1.5)
    model, _ = refusion.load(output)
    assert model.config.refusion_objective == "refusion"


def test_a_checkpoint_killed_while_writing_its_state_is_not_resumed_from(tmp_path):
    for step, state in ((3, '{"global_step": 3}'), (6, '{"global_step": 6, "log_hist')):
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text(state)
    (tmp_path / "checkpoint-9").mkdir()  # killed before its state was written at all
    assert last_complete_checkpoint(tmp_path) == str(tmp_path / "checkpoint-3")


def test_an_interrupted_final_save_leaves_no_half_model(tiny_model_dir, write_jsonl, tmp_path, monkeypatch):
    output = tmp_path / "lora"
    argv = ["train", "--model", tiny_model_dir, "--data", write_jsonl(RECORDS), "--output", str(output), "--max-steps",
            "2", "--lr", "1e-2", "--batch-size", "4", "--lora-rank", "4", "--save-every", "2"]
    tokenizer_class = type(char_tokenizer())
    save = tokenizer_class.save_pretrained

    def interrupted(self, directory, *args, **kwargs):  # Ctrl-C after the final weights, before the tokenizer and config
        if FINAL_STAGING in str(directory):
            raise KeyboardInterrupt
        return save(self, directory, *args, **kwargs)  # checkpoints save the tokenizer too

    monkeypatch.setattr(tokenizer_class, "save_pretrained", interrupted)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(argv)
    assert exit_info.value.code == 130
    assert not (output / "adapter_config.json").exists() and not (output / "adapter_model.safetensors").exists()
    monkeypatch.setattr(tokenizer_class, "save_pretrained", save)
    run_cli(argv + ["--resume"])
    model, tokenizer = refusion.load(output)
    assert model.config.refusion_objective == "refusion"
    assert not any(path.name.endswith(".partial") for path in output.iterdir())
    # the checkpoint loads too, and is the same model with the same tokenizer
    checkpoint, checkpoint_tokenizer = refusion.load(output / "checkpoint-2")
    assert checkpoint_tokenizer.get_vocab() == tokenizer.get_vocab()
    assert checkpoint_tokenizer.chat_template == tokenizer.chat_template
    assert checkpoint.config.refusion_objective == "refusion"
    assert checkpoint.config.mask_token_id == model.config.mask_token_id
    for name, weight in model.state_dict().items():
        torch.testing.assert_close(checkpoint.state_dict()[name], weight)
