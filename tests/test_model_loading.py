"""Loading: the reference checkpoint layout, GGUF files, built-ins, and adding a mask token."""

import json

import pytest
import torch

import refusion
from refusion.model import BUILTIN_GGUF, builtin_gguf_path
from tests.tiny_models import char_tokenizer, tiny_model


def reference_layout(tmp_path):
    """Like the authors' release: Qwen3, <|beginoftext|> and <|mask|> added, mask_token_id in config.json."""
    tokenizer = char_tokenizer(extra_specials=["<|beginoftext|>", "<|mask|>"])
    mask_id = tokenizer.convert_tokens_to_ids("<|mask|>")
    model = tiny_model("qwen3", vocab_size=len(tokenizer), seed=3)
    model.config.mask_token_id = mask_id
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    return model, tokenizer, mask_id


def test_reference_checkpoint_layout_loads_and_decodes_unchanged(tmp_path):
    model, tokenizer, mask_id = reference_layout(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["mask_token_id"] == mask_id
    loaded, loaded_tokenizer = refusion.load(tmp_path)
    assert refusion.mask_token_id(loaded, loaded_tokenizer) == mask_id
    ids = refusion.encode_prompt(loaded_tokenizer, "Say hi.")
    settings = dict(max_new_tokens=16, slot_size=4, blocks=2, slot_threshold=0.02, token_threshold=0.02)
    ours = refusion.generate(loaded, loaded_tokenizer, ids, **settings)
    original = refusion.generate(model, tokenizer, ids, **settings)
    assert ours.tokens == original.tokens and ours.forward_passes == original.forward_passes


def test_mask_token_found_in_tokenizer_when_config_lacks_it(tmp_path):
    model, tokenizer, mask_id = reference_layout(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["mask_token_id"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded, _ = refusion.load(tmp_path)
    assert loaded.config.mask_token_id == mask_id


def test_add_mask_token_resizes_with_the_mean_row_and_survives_saving(tmp_path):
    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer), tie_word_embeddings=False)
    before_in = model.get_input_embeddings().weight.detach().clone()
    before_out = model.get_output_embeddings().weight.detach().clone()
    assert refusion.mask_token_id(model, tokenizer) is None
    mask_id = refusion.add_mask_token(model, tokenizer)
    assert mask_id == len(before_in) and tokenizer.convert_tokens_to_ids("<|mask|>") == mask_id
    assert tokenizer("a<|mask|>b")["input_ids"] == [tokenizer.convert_tokens_to_ids("a"), mask_id, tokenizer.convert_tokens_to_ids("b")]
    torch.testing.assert_close(model.get_input_embeddings().weight[mask_id], before_in.mean(0))
    torch.testing.assert_close(model.get_output_embeddings().weight[mask_id], before_out.mean(0))
    torch.testing.assert_close(model.get_input_embeddings().weight[:mask_id], before_in)
    assert refusion.add_mask_token(model, tokenizer) == mask_id  # idempotent
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, loaded_tokenizer = refusion.load(tmp_path)
    assert loaded.config.mask_token_id == mask_id
    assert loaded_tokenizer.convert_tokens_to_ids("<|mask|>") == mask_id


def test_missing_paths_give_one_clear_error(tmp_path):
    with pytest.raises(refusion.RefusionError, match="model not found"):
        refusion.load(tmp_path / "absent")
    with pytest.raises(refusion.RefusionError, match="model file not found"):
        refusion.load(tmp_path / "absent.gguf")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """The built-in SmolLM2 from its GGUF wheel (converted once into a fresh cache folder)."""
    import os

    cache = tmp_path_factory.mktemp("refusion-cache")
    old = os.environ.get("REFUSION_CACHE")
    os.environ["REFUSION_CACHE"] = str(cache)
    try:
        yield refusion.load("smollm2-135m-instruct"), cache
    finally:
        if old is None:
            os.environ.pop("REFUSION_CACHE")
        else:
            os.environ["REFUSION_CACHE"] = old


def test_builtin_gguf_loads_converts_once_and_answers(smollm2):
    (model, tokenizer), cache = smollm2
    assert builtin_gguf_path("smollm2-135m-instruct").suffix == ".gguf"
    assert model.config.model_type == "llama" and "smollm2-135m-instruct" in BUILTIN_GGUF
    assert (cache / "smollm2-135m-instruct" / "model.safetensors").is_file()
    ids = refusion.encode_prompt(tokenizer, "What is the capital of France?")
    result = refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=12)
    assert "Paris" in result.text
    # The safetensors copy is the same model: same logits.
    again, _ = refusion.load(cache / "smollm2-135m-instruct")
    with torch.no_grad():
        torch.testing.assert_close(again(ids).logits, model(ids).logits)


def test_a_gguf_file_path_loads(smollm2):
    (model, _), _ = smollm2
    gguf_model, gguf_tokenizer = refusion.load(builtin_gguf_path("smollm2-135m-instruct"))
    ids = refusion.encode_prompt(gguf_tokenizer, "Hi")
    with torch.no_grad():
        torch.testing.assert_close(gguf_model(ids).logits, model(ids).logits)


def test_shipped_refusion_checkpoint_loads_on_its_builtin_base(smollm2):
    (base, _), _ = smollm2
    model, tokenizer = refusion.load("refusion-smollm2-135m")
    assert model.config.mask_token_id == tokenizer.convert_tokens_to_ids("<|mask|>") == base.config.vocab_size
    assert model.config.refusion_objective == "refusion"
    # LoRA merged: the attention weights moved away from the base's, the MLP did not.
    layer, base_layer = model.model.layers[0], base.model.layers[0]
    assert not torch.equal(layer.self_attn.q_proj.weight, base_layer.self_attn.q_proj.weight)
    assert torch.equal(layer.mlp.up_proj.weight, base_layer.mlp.up_proj.weight)
    ids = refusion.encode_prompt(tokenizer, "What is the capital of France?")
    result = refusion.generate(model, tokenizer, ids, max_new_tokens=16)
    assert result.decoder == "refusion" and result.new_tokens > 0 and "<|mask|>" not in result.text
