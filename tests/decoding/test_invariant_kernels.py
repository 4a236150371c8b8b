"""Invariant kernels: in bf16 on a CPU a token's logits do not hang on what else its forward feeds.

The stand-in has the shipped model's layer shapes (hidden 576, MLP 1536, 9 query heads over 3 key/value heads),
where PyTorch's own kernels do round by width (`benchmarks/width_rounding.py`), and two layers of random weights.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import refusion
from refusion import invariant_kernels, kv_cache
from refusion.attention import rows_mask, segment_mask
from refusion.decoding.runner import ModelRunner, packed_width
from tests.tiny_models import char_tokenizer, tiny_model

SHIPPED_SHAPES = dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                      num_hidden_layers=2, max_position_embeddings=1024)


def shipped_shaped_model(kernels: str, vocab_size: int = 128, attention_scale: float = 1.0):
    """`attention_scale` 30 makes queries and keys as large as a trained model's, whose scores float32 sums round."""
    model = tiny_model("llama", vocab_size=vocab_size, seed=3, **SHIPPED_SHAPES).to(torch.bfloat16)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(attention_scale)
            layer.self_attn.k_proj.weight.mul_(attention_scale)
    invariant_kernels.use(model, kernels)
    return model


def bf16_stand_in(crowded: bool):
    """(model, tokenizer): the shipped-shape stand-in with a character tokenizer and a mask token; `crowded`
    scales the LM head down so that the logits crowd together and bf16 near-ties are common."""
    tokenizer = char_tokenizer(extra_specials=["<|mask|>"])
    model = shipped_shaped_model("invariant", vocab_size=len(tokenizer))
    model.config.mask_token_id = tokenizer.convert_tokens_to_ids("<|mask|>")
    if crowded:
        with torch.no_grad():
            model.lm_head.weight.mul_(0.03)
    return model, tokenizer


def sequence(length: int) -> torch.Tensor:
    return torch.randint(0, 120, (1, length), generator=torch.Generator().manual_seed(1))


def one_at_a_time(runner: ModelRunner, ids: torch.Tensor, context: int) -> list[torch.Tensor]:
    """Each token after `context` fed alone: the logits `ar` computes."""
    cache = kv_cache.new_cache()
    runner(ids[:, :context], torch.arange(context)[None], cache, logits_to_keep=1)
    return [runner(ids[:, p:p + 1], torch.tensor([[p]]), cache, logits_to_keep=1)[0, 0]
            for p in range(context, ids.shape[1])]


def widths_that_part(kernels: str) -> list[tuple]:
    """Where a token fed among others (in chunks of each width, after masked tokens it does not see, or as the
    second row of a left-padded batch) gets logits other than fed alone."""
    torch.manual_seed(0)
    model = shipped_shaped_model(kernels, attention_scale=30.0)
    runner = ModelRunner(model)
    context, total = 40, 64
    ids = sequence(total)
    alone = one_at_a_time(runner, ids, context)
    parted = []
    for width in (2, 3, 5, 8, 12, 24):
        cache = kv_cache.new_cache()
        runner(ids[:, :context], torch.arange(context)[None], cache, logits_to_keep=1)
        for start in range(context, total, width):
            fed = ids[:, start:start + width]
            logits = runner(fed, torch.arange(start, start + fed.shape[1])[None], cache,
                            logits_to_keep=torch.arange(fed.shape[1]))[0]
            parted += [("width", width, start + i) for i in range(fed.shape[1])
                       if not torch.equal(logits[i], alone[start + i - context])]
    # Masked tokens between: token p+1 sees p but not the three filler tokens fed between them.
    for p in range(context, total - 1, 5):
        cache = kv_cache.new_cache()
        runner(ids[:, :p], torch.arange(p)[None], cache, logits_to_keep=1)
        fed = torch.cat([ids[:, p:p + 1], torch.full((1, 3), 7), ids[:, p + 1:p + 2]], dim=1)
        mask = segment_mask(p, [(1, []), (3, [(0, 1)]), (1, [(0, 1)])], model.dtype)
        logits = runner(fed, torch.tensor([[p, p + 1, p + 2, p + 3, p + 1]]), cache, mask,
                        logits_to_keep=torch.tensor([0, 4]))[0]
        parted += [("gap", p, which) for which, row in ((p, logits[0]), (p + 1, logits[1]))
                   if not torch.equal(row, alone[which - context])]
    # A batch row after 5 tokens of left padding, beside a longer prompt.
    other = sequence(total + 5).roll(3, dims=1)
    cache = kv_cache.new_cache()
    padding = torch.zeros(2, context + 5, dtype=torch.bool)
    padding[1, :5] = True
    prefix = torch.stack([other[0, :context + 5], torch.cat([torch.zeros(5, dtype=torch.long), ids[0, :context]])])
    positions = torch.stack([torch.arange(context + 5), torch.cat([torch.zeros(5, dtype=torch.long), torch.arange(context)])])
    prefix_mask = rows_mask(torch.zeros(2, 0, dtype=torch.bool), (~padding)[:, None, :].expand(-1, context + 5, -1)
                            & torch.ones(context + 5, context + 5, dtype=torch.bool).tril(), model.dtype)
    runner(prefix, positions, cache, prefix_mask, logits_to_keep=1)
    for step in range(total - context):
        fed = torch.stack([other[0, context + 5 + step:context + 6 + step], ids[0, context + step:context + step + 1]])
        mask = rows_mask(padding, torch.ones(2, 1, 1, dtype=torch.bool), model.dtype)
        logits = runner(fed, torch.tensor([[context + 5 + step], [context + step]]), cache, mask, logits_to_keep=1)
        if not torch.equal(logits[1, 0], alone[step]):
            parted.append(("batch", step))
        padding = torch.cat([padding, torch.zeros(2, 1, dtype=torch.bool)], dim=1)
    return parted


def float64_rows_seen(monkeypatch) -> list[int]:
    """A list that collects the query rows of every float64 attention call from here on."""
    rows = []
    float64 = invariant_kernels._float64_attention
    monkeypatch.setattr(invariant_kernels, "_float64_attention",
                        lambda module, query, *rest: rows.append(query.shape[2]) or float64(module, query, *rest))
    return rows


def long_and_short(tokenizer) -> list[torch.Tensor]:
    return [tokenizer(text, return_tensors="pt").input_ids[0]
            for text in ("the cat sat on the mat, the dog sat on the log, the cat", "abcabcabc")]


def test_a_token_gets_the_logits_it_gets_alone_at_every_width_gap_and_batch_row():
    assert widths_that_part("invariant") == []


def test_invariant_attention_matches_sdpa_up_to_rounding_and_never_yields_nan():
    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    query, key, value = torch.randn(2, 6, 5, 16), torch.randn(2, 3, 9, 16), torch.randn(2, 3, 9, 16)
    causal = torch.ones(5, 9, dtype=torch.bool).tril(4)
    expected = F.scaled_dot_product_attention(query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1),
                                              attn_mask=causal).transpose(1, 2)
    for mask in (None, causal[None, None].expand(2, 1, 5, 9),
                 torch.zeros(2, 1, 5, 9).masked_fill(~causal, torch.finfo(torch.float32).min)):
        output, _ = invariant_kernels.invariant_attention(module, query, key, value, mask)
        torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)
    hides_all = torch.zeros(2, 1, 5, 9, dtype=torch.bool)
    output, _ = invariant_kernels.invariant_attention(module, query, key, value, hides_all)
    assert torch.isfinite(output).all()


def test_kernels_are_chosen_per_model_and_native_restores_pytorchs_own():
    model = shipped_shaped_model("invariant")
    assert model.config._attn_implementation == invariant_kernels.NAME
    invariant_kernels.use(model, "native")
    assert model.config._attn_implementation == "sdpa"
    assert not any("forward" in m.__dict__ for m in model.modules())
    float32 = tiny_model("llama")
    ModelRunner(float32)  # the first decode's default: invariant, which float32 does not need
    assert float32.config._attn_implementation == "sdpa"
    with pytest.raises(refusion.RefusionError, match="kernels must be one of"):
        invariant_kernels.use(float32, "fast")


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_in_bf16_lossless_writes_ars_text_and_batch_rows_their_text_alone(decoder):
    """The LM head is scaled down so that the logits crowd together and bf16 near-ties are common: with PyTorch's
    own kernels lossless and the batch part from `ar` here (on this project's CPU), with the invariant ones not."""
    model, tokenizer = bf16_stand_in(crowded=True)
    prompts = [tokenizer(text, return_tensors="pt").input_ids[0] for text in
               ("the cat sat on the mat, the cat sat on", "abcabcabcabc", "1, 2, 3, 4, 5, 6")]
    alone = [refusion.generate(model, tokenizer, ids, decoder="ar", max_new_tokens=40).tokens for ids in prompts]
    mine = [refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=40).tokens for ids in prompts]
    together = [g.tokens for g in refusion.generate(model, tokenizer, prompts, decoder=decoder, max_new_tokens=40)]
    assert mine == alone
    assert together == alone


def test_packed_segments_attend_each_to_itself_exactly_as_alone(monkeypatch):
    """Sequences laid end to end in one row (`packed`): each segment's output is bitwise what the segment gets fed
    alone, under a causal mask or a layout of its own, and its sums span its own keys only."""
    keys_summed = []
    float64 = invariant_kernels._float64_attention
    monkeypatch.setattr(invariant_kernels, "_float64_attention", lambda module, query, key64, *rest: keys_summed.append(
        key64.shape[2]) or float64(module, query, key64, *rest))
    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    lengths = (5, 1, 9, 3)
    query = torch.randn(1, 6, sum(lengths), 16).to(torch.bfloat16)
    key, value = (torch.randn(1, 3, sum(lengths), 16).to(torch.bfloat16) for _ in range(2))
    layouts = [torch.ones(n, n, dtype=torch.bool).tril() for n in lengths]
    layouts[2][5:, 2:5] = False  # a tree: the last tokens do not see a branch fed before them
    starts = [0, 5, 6, 15]
    packed_mask = torch.block_diag(*layouts)[None, None]
    with invariant_kernels.packed([(start, start + n) for start, n in zip(starts, lengths)]):
        together, _ = invariant_kernels.invariant_attention(module, query, key, value, packed_mask)
    assert keys_summed == list(lengths)
    for start, n, layout in zip(starts, lengths, layouts):
        piece = slice(start, start + n)
        alone, _ = invariant_kernels.invariant_attention(module, query[:, :, piece], key[:, :, piece],
                                                         value[:, :, piece], layout[None, None])
        assert torch.equal(together[:, piece], alone)
    unpacked, _ = invariant_kernels.invariant_attention(module, query, key, value, packed_mask)
    assert torch.equal(unpacked, together)  # the mask alone hides the same keys: packing only skips their work


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_a_batchs_first_step_feeds_its_prompts_end_to_end_and_every_row_writes_its_text_alone(decoder, monkeypatch):
    """Under the invariant attention a batch's first forward feeds one row holding every prompt, not one padded
    row per prompt; the rows' texts are those they write alone."""
    model, tokenizer = bf16_stand_in(crowded=True)
    prompts = [tokenizer(text, return_tensors="pt").input_ids[0] for text in
               ("the cat sat on the mat, the cat sat on", "abc", "1, 2, 3, 4, 5, 6")]
    alone = [refusion.generate(model, tokenizer, ids, decoder=decoder, max_new_tokens=30).tokens for ids in prompts]
    fed = []
    forward = ModelRunner.__call__
    monkeypatch.setattr(ModelRunner, "__call__",
                        lambda self, ids, *rest, **named: fed.append(tuple(ids.shape)) or forward(self, ids, *rest, **named))
    together = refusion.generate(model, tokenizer, prompts, decoder=decoder, max_new_tokens=30)
    assert [g.tokens for g in together] == alone
    assert fed[0][0] == 1 and fed[0][1] >= sum(len(ids) for ids in prompts)
    if decoder == "ar":  # the prompts, filled up to one of a few widths
        assert fed[0] == (1, packed_width(sum(len(ids) for ids in prompts))) and fed[1] == (len(prompts), 1)


def test_rows_that_round_alike_are_measured_once_per_machine_then_read(tmp_path, monkeypatch):
    monkeypatch.setenv("REFUSION_CACHE", str(tmp_path))
    monkeypatch.setattr(invariant_kernels, "_MEASURED", {})
    measured = []
    monkeypatch.setattr(invariant_kernels, "rows_alike", lambda weight, bias: measured.append(weight.shape) or 3)
    model = shipped_shaped_model("native")
    invariant_kernels.use(model, "invariant")
    shapes = {tuple(m.weight.shape) for m in model.modules() if type(m) is torch.nn.Linear}
    assert len(measured) == len(shapes)  # one measurement per weight shape
    padded = [m for m in model.modules() if isinstance(m.__dict__.get("forward"), invariant_kernels._PaddedRows)]
    assert len(padded) == sum(type(m) is torch.nn.Linear for m in model.modules())
    x = torch.randn(1, 1, 576, dtype=torch.bfloat16)
    layer = model.model.layers[0].self_attn.q_proj
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight))  # padding rows leave the row's product
    monkeypatch.setattr(invariant_kernels, "_MEASURED", {})  # a new process: read from the file
    invariant_kernels.use(shipped_shaped_model("native"), "invariant")
    assert len(measured) == len(shapes)


def test_long_feeds_are_attended_in_query_chunks_with_the_same_result():
    torch.manual_seed(0)
    module = torch.nn.Module().eval()
    queries = invariant_kernels.QUERY_CHUNK + 44
    query, key, value = torch.randn(1, 6, queries, 16), torch.randn(1, 3, queries, 16), torch.randn(1, 3, queries, 16)
    expected = F.scaled_dot_product_attention(query, key.repeat_interleave(2, 1), value.repeat_interleave(2, 1),
                                              is_causal=True).transpose(1, 2)
    output, _ = invariant_kernels.invariant_attention(module, query, key, value, None)
    torch.testing.assert_close(output, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_a_long_prompt_is_cached_apart_under_pytorchs_attention_and_every_row_still_writes_its_text(
        decoder, monkeypatch):
    """A prompt of LONG_PREFIX tokens or more (but its last) is cached by a forward of its own under PyTorch's
    attention, never in float64, wherever it goes: alone and beside short prompts (before or after them), each
    row writes the text it writes alone, and lossless still writes `ar`'s."""
    monkeypatch.setattr(invariant_kernels, "LONG_PREFIX", 30)
    model, tokenizer = bf16_stand_in(crowded=True)
    float64_rows = float64_rows_seen(monkeypatch)
    long, short = long_and_short(tokenizer)
    assert len(long) - 1 >= 30 > len(short)
    ar_long = refusion.generate(model, tokenizer, long, decoder="ar", max_new_tokens=24)
    ar_short = refusion.generate(model, tokenizer, short, decoder="ar", max_new_tokens=24)
    assert ar_long.forward_passes == len(ar_long.tokens) + 1  # the prompt but its last token, then one per token
    refusion.generate(model, tokenizer, short, decoder=decoder, max_new_tokens=2)  # lossless times its widths once
    float64_rows.clear()
    mine = refusion.generate(model, tokenizer, long, decoder=decoder, max_new_tokens=24)
    assert mine.tokens == ar_long.tokens
    assert float64_rows and max(float64_rows) < 30  # the long prompt never went through float64 attention
    for prompts in ([short, long, short], [long, short]):
        together = refusion.generate(model, tokenizer, prompts, decoder=decoder, max_new_tokens=24)
        assert [g.tokens for g in together] == [(ar_long if p is long else ar_short).tokens for p in prompts]


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_a_long_prompt_joining_a_running_batch_is_cached_apart_and_writes_its_text_alone(decoder, monkeypatch):
    """The server's continuous batching: a long prompt joins after a short row's second step."""
    from refusion.decoding.batching import Batch
    from refusion.decoding.dispatch import open_row

    monkeypatch.setattr(invariant_kernels, "LONG_PREFIX", 30)
    model, tokenizer = bf16_stand_in(crowded=True)
    long, short = long_and_short(tokenizer)
    alone = [refusion.generate(model, tokenizer, prompt, decoder=decoder, max_new_tokens=16).tokens
             for prompt in (short, long)]
    float64_rows = float64_rows_seen(monkeypatch)
    runner = ModelRunner(model, suppress_token_id=model.config.mask_token_id)
    opened = [open_row(model, tokenizer, runner, prompt, decoder=decoder, max_new_tokens=16) for prompt in (short, long)]
    batch = Batch(runner)
    batch.add(opened[0].state)
    batch.step(), batch.step()
    assert len(batch) == 1  # still running: the long prompt joins it
    batch.add(opened[1].state)
    while len(batch):
        batch.step()
    assert [row.result().tokens for row in opened] == alone
    assert max(float64_rows) < len(long) - 1  # the long prompt never went through float64 attention


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_rows_joining_a_running_batch_together_have_their_prompts_cached_by_one_forward(decoder, monkeypatch):
    """The server's continuous batching: requests that arrive during a step join before the next one. Their prompts
    but the last token are cached by one forward, laid end to end (a long one apart), and each row still writes the
    text it writes alone."""
    from refusion.decoding.batching import Batch
    from refusion.decoding.dispatch import open_row

    monkeypatch.setattr(invariant_kernels, "LONG_PREFIX", 30)
    model, tokenizer = bf16_stand_in(crowded=True)
    long, short = long_and_short(tokenizer)
    prompts = [short] + [tokenizer(text, return_tensors="pt").input_ids[0] for text in ("abc", "1, 2, 3, 4, 5, 6")]
    prompts += [long, tokenizer("x", return_tensors="pt").input_ids[0]]  # cached apart; nothing to cache
    alone = [refusion.generate(model, tokenizer, prompt, decoder=decoder, max_new_tokens=16).tokens
             for prompt in prompts]
    runner = ModelRunner(model, suppress_token_id=model.config.mask_token_id)
    opened = [open_row(model, tokenizer, runner, prompt, decoder=decoder, max_new_tokens=16) for prompt in prompts]
    batch = Batch(runner)
    batch.add(opened[0].state)
    batch.step()
    fed = []
    forward = ModelRunner.__call__
    monkeypatch.setattr(ModelRunner, "__call__",
                        lambda self, ids, *rest, **named: fed.append(tuple(ids.shape)) or forward(self, ids, *rest, **named))
    batch.add(*(row.state for row in opened[1:]))
    assert fed == [(1, packed_width(len(prompts[1]) - 1 + len(prompts[2]) - 1)), (1, len(long) - 1)]
    while len(batch):
        batch.step()
    assert [row.result().tokens for row in opened] == alone


@pytest.mark.parametrize("decoder", ["refusion", "mdm", "fast-dllm"])
def test_a_long_prompt_is_cached_apart_by_the_other_decoders_too_and_batch_rows_still_write_their_text(
        decoder, monkeypatch):
    """Their rows share forwards in lockstep; a long prompt is cached by a forward of its own all the same."""
    monkeypatch.setattr(invariant_kernels, "LONG_PREFIX", 30)
    model, tokenizer = bf16_stand_in(crowded=False)
    float64_rows = float64_rows_seen(monkeypatch)
    long, short = long_and_short(tokenizer)
    alone = {len(short): refusion.generate(model, tokenizer, short, decoder=decoder, max_new_tokens=16).tokens}
    float64_rows.clear()  # after the first decode, which may time the model's forwards once
    alone[len(long)] = refusion.generate(model, tokenizer, long, decoder=decoder, max_new_tokens=16).tokens
    assert float64_rows and max(float64_rows) < len(long) - 1  # the long prompt never went through float64 attention
    together = refusion.generate(model, tokenizer, [short, long], decoder=decoder, max_new_tokens=16)
    assert [g.tokens for g in together] == [alone[len(short)], alone[len(long)]]
