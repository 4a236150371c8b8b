"""Several prompts in one `generate` call: each row gets exactly what it gets alone.

`ar` and `lossless` decode the rows together (one forward per step for the unfinished rows); the
other decoders decode them one after another. Rows end on their own EOS, stop string or budget.
"""

import threading

import pytest
import torch

import refusion
from refusion.decoding.generation import Generation
from refusion.errors import RefusionError
from tests.decoding.oracle import EOS, PROMPT, PositionOracle, Tokenizer
from tests.tiny_models import char_tokenizer, tiny_model, tiny_model_with_mask

# The oracle's AR head predicts DRAFT[j] after generated offset j - 1, offsets counted from a
# 3-token prompt, so a prompt of length P starts writing at DRAFT[P - 3]. With a budget of 6:
SHORT = PROMPT  # 11 12 13 14 15 16: the budget ends it (6 forwards)
MIDDLE = [5, 6, 7, 8, 9, 4]  # 14 15 16 17 18: the stop string "17 18" ends it (5 forwards)
LONG = [5, 6, 7, 8, 9, 4, 3, 1, 1, 1]  # 18 EOS: ends on EOS (2 forwards), first, and it is the longest
DRAFT = [11, 12, 13, 14, 15, 16, 17, 18, EOS]
ORACLE_OPTIONS = dict(decoder="ar", max_new_tokens=6, stop="17 18", trace=True)


def oracle():
    return PositionOracle(DRAFT, mask_conf=[0.9] * len(DRAFT), ar_conf=[0.9] * len(DRAFT))


def same_generation(batched: Generation, alone: Generation) -> None:
    assert (batched.tokens, batched.text, batched.finish_reason, batched.forward_passes, batched.prompt_tokens) == \
           (alone.tokens, alone.text, alone.finish_reason, alone.forward_passes, alone.prompt_tokens)
    assert batched.settings == alone.settings and batched.trace == alone.trace


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, seed=3)], ids=["greedy", "seeded"])
def test_ar_batch_rows_equal_each_prompt_alone_on_the_oracle(sampling):
    prompts = [SHORT, MIDDLE, LONG]
    alone = [refusion.generate(oracle(), Tokenizer(), torch.tensor(prompt), **ORACLE_OPTIONS, **sampling)
             for prompt in prompts]
    batched = refusion.generate(oracle(), Tokenizer(), prompts, **ORACLE_OPTIONS, **sampling)
    assert isinstance(batched, list) and len(batched) == 3
    for row, single in zip(batched, alone):
        same_generation(row, single)
        assert row.batch_size == 3 and single.batch_size == 1
    if not sampling:
        assert [row.tokens for row in batched] == [[11, 12, 13, 14, 15, 16], [14, 15, 16, 17, 18], [18, EOS]]
        assert [row.text for row in batched] == ["11 12 13 14 15 16", "14 15 16 ", "18 2"]
        assert [row.finish_reason for row in batched] == ["length", "stop", "stop"]


def test_finished_rows_leave_the_batch_and_padding_columns_are_cut():
    model = oracle()
    batched = refusion.generate(model, Tokenizer(), [SHORT, MIDDLE, LONG], **ORACLE_OPTIONS)
    # One forward per step for the rows still running: 6 forwards where the rows alone take 6 + 5 + 2.
    assert len(model.calls) == 6 < sum(row.forward_passes for row in batched) == 13
    assert sum(count for count, _ in batched[0].forward_profile.values()) == 6
    rows = [len(call.input_ids) for call in model.calls]
    assert rows == [3, 3, 2, 2, 2, 1]
    # The longest prompt leaves after step 2: the 4 columns that only it used are cut (11 -> 7);
    # the middle one leaves after step 5 and the short one keeps only its own 3 + 4 entries.
    assert [call.past_length for call in model.calls] == [0, 10, 7, 8, 9, 7]
    alone = oracle()
    refusion.generate(alone, Tokenizer(), torch.tensor(SHORT), **ORACLE_OPTIONS)
    assert model.calls[-1].past_length == alone.calls[-1].past_length
    assert model.calls[-1].position_ids == alone.calls[-1].position_ids == [[3 + 4]]
    # Each row's prompt sits at positions 0 .. P-1, as alone (what else the first forward holds is padding).
    first = model.calls[0]
    for prompt, ids, positions in zip([SHORT, MIDDLE, LONG], first.input_ids, first.position_ids):
        assert [(t, p) for t, p in zip(ids, positions) if (t, p) != (0, 0)] == list(zip(prompt, range(len(prompt))))


def test_a_cancelled_batch_ends_every_row():
    asked = []

    def should_stop():
        asked.append(1)
        return len(asked) > 3

    batched = refusion.generate(oracle(), Tokenizer(), [SHORT, MIDDLE], decoder="ar", max_new_tokens=6,
                                should_stop=should_stop)
    assert [row.finish_reason for row in batched] == ["cancelled", "cancelled"]
    assert max(len(row.tokens) for row in batched) < 6


@pytest.mark.parametrize("single", [torch.tensor(PROMPT), torch.tensor([PROMPT]), list(PROMPT), tuple(PROMPT)],
                         ids=["[P]", "[1, P]", "list", "tuple"])
def test_one_prompt_still_gives_one_generation(single):
    result = refusion.generate(oracle(), Tokenizer(), single, decoder="ar", max_new_tokens=3)
    assert isinstance(result, Generation) and result.tokens == [11, 12, 13] and result.batch_size == 1


def test_a_list_of_tensors_and_a_list_of_one_are_batches():
    tensors = refusion.generate(oracle(), Tokenizer(), [torch.tensor(SHORT), torch.tensor([MIDDLE])], decoder="ar",
                                max_new_tokens=3)
    assert [row.tokens for row in tensors] == [[11, 12, 13], [14, 15, 16]]
    one = refusion.generate(oracle(), Tokenizer(), [SHORT], decoder="ar", max_new_tokens=3)
    assert isinstance(one, list) and one[0].tokens == [11, 12, 13]


@pytest.mark.parametrize("prompts, options, message", [
    ([SHORT, []], {}, "the prompt is empty"),
    ([SHORT, [[1, 2], [3, 4]]], {}, "one sequence"),
    ([SHORT, MIDDLE], dict(on_text=print), "one prompt"),
    ([SHORT, MIDDLE], dict(on_event=print), "one prompt"),
    ([SHORT, list(range(1, 510))], {}, "prompt 1 (509 tokens)"),
])
def test_bad_batches_are_refused(prompts, options, message):
    with pytest.raises(RefusionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        refusion.generate(oracle(), Tokenizer(), prompts, decoder="ar", max_new_tokens=6, **options)


# --- tiny real models -------------------------------------------------------------------------

TEXTS = ["Hi", "Add 2 and 3.", "What is the capital of France?", "Tell me a long story about a cat please",
         "Count to ten.", "Why is the sky blue? Explain."]
# Per model and sampling: an extra EOS character (None: the model's own EOS already ends some rows)
# and a stop string, picked from what these seeded random models write, so that rows end on EOS,
# on the stop string and on the budget, at different steps.
ENDINGS = {("llama", "greedy"): (None, "P+"), ("llama", "seeded"): (None, "4$J"),
           ("qwen3", "greedy"): ("I", "]("), ("qwen3", "seeded"): ("^", "ae")}
SAMPLING = {"greedy": dict(), "seeded": dict(temperature=0.03, seed=7)}


@pytest.fixture(scope="module")
def tokenizer():
    return char_tokenizer()


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_ar_batch_rows_equal_each_prompt_alone_on_real_models(kind, sampling, tokenizer):
    model = tiny_model(kind, vocab_size=len(tokenizer))
    eos_character, stop = ENDINGS[kind, sampling]
    if eos_character is not None:
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(eos_character)
    options = dict(decoder="ar", max_new_tokens=12, stop=stop, **SAMPLING[sampling])
    prompts = [refusion.encode_prompt(tokenizer, text)[0] for text in TEXTS]
    assert len({len(prompt) for prompt in prompts}) == len(prompts)
    alone = [refusion.generate(model, tokenizer, prompt, **options) for prompt in prompts]
    batched = refusion.generate(model, tokenizer, prompts, **options)
    for row, single in zip(batched, alone):
        same_generation(row, single)
    eos = refusion.special_tokens.eos_token_ids(tokenizer, model)
    endings = {"eos" if row.tokens[-1] in eos else row.finish_reason for row in batched}
    assert endings == {"eos", "stop", "length"}, [(row.finish_reason, row.text) for row in batched]
    steps = [row.forward_passes for row in batched]
    assert len(set(steps)) >= 3
    batch_forwards = sum(count for count, _ in batched[0].forward_profile.values())
    assert batch_forwards == max(steps) < sum(steps)



LOSSLESS_ORACLE = dict(decoder="lossless", max_new_tokens=6, stop="17 18", trace=True, branches=2, depth=2)


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.0, seed=3)], ids=["greedy", "seeded"])
def test_lossless_batch_rows_equal_each_prompt_alone_on_the_oracle(sampling):
    prompts = [SHORT, MIDDLE, LONG]
    alone = [refusion.generate(oracle(), Tokenizer(), torch.tensor(prompt), **LOSSLESS_ORACLE, **sampling)
             for prompt in prompts]
    model = oracle()
    batched = refusion.generate(model, Tokenizer(), prompts, **LOSSLESS_ORACLE, **sampling)
    for row, single in zip(batched, alone):
        same_generation(row, single)
        assert row.counters == single.counters
    if not sampling:  # drafts accepted: fewer forwards than tokens, and the rows shared them
        assert [row.tokens for row in batched] == [[11, 12, 13, 14, 15, 16], [14, 15, 16, 17, 18], [18, EOS]]
        assert all(row.forward_passes < len(row.tokens) for row in batched[:2])
        assert len(model.calls) == max(row.forward_passes for row in batched)


# Stop strings picked from what these seeded random models write, so that rows end at different steps.
LOSSLESS_STOPS = {("llama", "greedy"): "-P", ("llama", "seeded"): "AG", ("qwen3", "greedy"): "0-P",
                  ("qwen3", "seeded"): "|;"}


@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_lossless_batch_rows_equal_each_prompt_alone_on_real_models(kind, sampling, tokenizer):
    """Trees of different shapes and widths per row, prompts of different lengths, rows ending at different steps."""
    options = dict(decoder="lossless", max_new_tokens=14, stop=LOSSLESS_STOPS[kind, sampling], width_cost=0.1,
                   **SAMPLING[sampling])
    prompts = [refusion.encode_prompt(tokenizer, text)[0] for text in TEXTS]

    def model():  # fresh each side: the acceptance history a model keeps would shape the next trees
        return tiny_model_with_mask(kind)

    alone = [refusion.generate(model(), tokenizer, prompt, **options) for prompt in prompts]
    batched = refusion.generate(model(), tokenizer, prompts, **options)
    for row, single in zip(batched, alone):
        assert (row.tokens, row.text, row.finish_reason) == (single.tokens, single.text, single.finish_reason)
        if sampling == "seeded":  # the same trees as alone, whatever the batch: the same draws
            same_generation(row, single)
    assert {row.finish_reason for row in batched} == {"stop", "length"}
    assert len({row.forward_passes for row in batched}) >= 2
    ar = refusion.generate(model(), tokenizer, prompts, **{**options, "decoder": "ar", "width_cost": None})
    if sampling == "greedy":
        assert [row.tokens for row in batched] == [row.tokens for row in ar]


# --- the other decoders, in lockstep ------------------------------------------------------------

# rides="always": with "auto" which forwards carry the next plan hangs on forward costs timed per model
# instance, so forward counts could differ between the batch's model and the ones decoding alone.
OTHER_DECODERS = {
    "refusion": dict(max_new_tokens=16, slot_size=4, blocks=2, slot_threshold=0.012, token_threshold=0.012,
                     rides="always"),
    "refusion-exact": dict(decoder="refusion", max_new_tokens=16, slot_size=2, slot_threshold=0.012,
                           token_threshold=0.012, kv="exact", rides="always"),
    "refusion-recompute": dict(decoder="refusion", max_new_tokens=12, slot_size=4, slot_threshold=0.012,
                               token_threshold=0.5, kv="recompute", rides="always"),
    "mdm": dict(max_new_tokens=16, steps=8),
    "fast-dllm": dict(max_new_tokens=16, block_length=8),
}


class Counting:
    """A model whose forwards are counted."""

    def __init__(self, model):
        self.calls = 0
        model.register_forward_pre_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        self.model = model


@pytest.mark.parametrize("attention", ["causal", "bidirectional"])
@pytest.mark.parametrize("sampling", list(SAMPLING))
@pytest.mark.parametrize("setting", list(OTHER_DECODERS))
def test_every_other_decoder_takes_a_list_and_gives_what_each_prompt_gets_alone(setting, sampling, attention, tokenizer):
    """Each prompt's decode runs as written; their model calls share forwards (fewer than the rows' own)."""
    if attention == "bidirectional" and not setting.startswith(("mdm", "fast-dllm")):
        pytest.skip("only the masked-diffusion baselines attend both ways")
    prompts = [refusion.encode_prompt(tokenizer, text)[0].tolist() for text in TEXTS[:4]]
    options = {"decoder": setting, **OTHER_DECODERS[setting], **SAMPLING[sampling], "stop": "ab"}

    def model():
        model = tiny_model_with_mask("qwen3")
        if attention == "bidirectional":
            model.config.refusion_objective = "mdm"
        return model

    alone = [refusion.generate(model(), tokenizer, prompt, **options) for prompt in prompts]
    counting = Counting(model())
    batched = refusion.generate(counting.model, tokenizer, prompts, **options)
    assert len(batched) == len(prompts)
    for row, single in zip(batched, alone):
        same_generation(row, single)
    if sampling == "seeded":  # (greedy, this random model writes one token over and over)
        assert len({tuple(row.tokens) for row in batched}) > 1
    assert counting.calls == max(row.forward_passes for row in batched) < sum(row.forward_passes for row in batched)


def test_the_paper_mode_in_lockstep_matches_the_oracle_alone():
    """Prompts of different lengths whose rows end at different steps (EOS, stop string, budget)."""
    options = dict(decoder="refusion", max_new_tokens=6, slot_size=2, slot_threshold=0.5, token_threshold=0.5,
                   stop="17 18", trace=True)
    prompts = [SHORT, MIDDLE, LONG]

    def unsure():  # drafts rejected here and there: rows need different numbers of forwards
        return PositionOracle(DRAFT, mask_conf=[0.9, 0.4, 0.9, 0.2, 0.9, 0.9, 0.4, 0.9, 0.9],
                              ar_conf=[0.9, 0.9, 0.4, 0.9, 0.9, 0.2, 0.9, 0.9, 0.9])

    alone = [refusion.generate(unsure(), Tokenizer(), torch.tensor(prompt), **options) for prompt in prompts]
    model = unsure()
    batched = refusion.generate(model, Tokenizer(), prompts, **options)
    for row, single in zip(batched, alone):
        same_generation(row, single)
    assert [row.forward_passes for row in batched] == [5, 4, 2]
    assert [row.finish_reason for row in batched] == ["length", "stop", "stop"]
    assert len(model.calls) == 5
    assert [len(call.input_ids) for call in model.calls] == [3, 3, 2, 2, 1]  # finished rows leave the forwards


def test_a_decode_that_fails_in_lockstep_raises_and_ends_the_others(tokenizer):
    model = tiny_model_with_mask("qwen3")
    prompts = [refusion.encode_prompt(tokenizer, text)[0].tolist() for text in TEXTS[:3]]
    calls = []

    def should_stop():  # the third forward of the batch raises inside one row's decode
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("a row failed")
        return False

    before = threading.active_count()
    with pytest.raises(RuntimeError, match="a row failed"):
        refusion.generate(model, tokenizer, prompts, decoder="mdm", max_new_tokens=8, steps=8, should_stop=should_stop)
    assert threading.active_count() <= before + 1  # the other rows' threads ended (or are ending)


@pytest.mark.parametrize("decoder", ["ar", "lossless"])
def test_rows_that_join_a_running_batch_get_what_they_get_alone(decoder, tokenizer):
    """The server's continuous batching: rows join between steps (one of them a one-token prompt) and leave."""
    from refusion.decoding.batching import Batch
    from refusion.decoding.dispatch import open_row
    from refusion.decoding.runner import ModelRunner

    model = tiny_model_with_mask("llama")
    options = dict(decoder=decoder, max_new_tokens=10, **({"branches": 2, "depth": 2} if decoder == "lossless" else {}))
    prompts = [refusion.encode_prompt(tokenizer, text)[0] for text in TEXTS[:4]] + [torch.tensor([5])]
    alone = [refusion.generate(model, tokenizer, prompt, **options) for prompt in prompts]
    runner = ModelRunner(model, suppress_token_id=model.config.mask_token_id)
    batch = Batch(runner)
    opened = [open_row(model, tokenizer, runner, prompt, **options) for prompt in prompts]
    results = {}
    joins = {0: [0, 1], 2: [2], 3: [3, 4]}  # step -> rows that join before it
    step = 0
    while len(batch) or any(later > step for later in joins):
        batch.add(*(opened[index].state for index in joins.get(step, [])))  # rows arriving together join together
        for state in batch.step() if len(batch) else []:
            index = next(i for i, row in enumerate(opened) if row.state is state)
            results[index] = opened[index].result()
        step += 1
    assert sorted(results) == list(range(len(prompts)))
    for index, single in enumerate(alone):
        assert (results[index].tokens, results[index].text) == (single.tokens, single.text), index


def test_rows_whose_joining_forward_fails_leave_the_batch_as_it_was(tokenizer, monkeypatch):
    """The server retries rows one by one when their shared joining forward fails: the failed join must have changed
    nothing, so that the rows can join again and every row still gets what it gets alone."""
    from refusion.decoding import batching
    from refusion.decoding.dispatch import open_row
    from refusion.decoding.runner import ModelRunner

    model = tiny_model_with_mask("llama")
    options = dict(decoder="ar", max_new_tokens=8)
    prompts = [refusion.encode_prompt(tokenizer, text)[0] for text in TEXTS[:3]]
    alone = [refusion.generate(model, tokenizer, prompt, **options).tokens for prompt in prompts]
    runner = ModelRunner(model, suppress_token_id=model.config.mask_token_id)
    opened = [open_row(model, tokenizer, runner, prompt, **options) for prompt in prompts]
    batch = batching.Batch(runner)
    batch.add(opened[0].state)
    batch.step()

    def failing(*args):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as patch:
        patch.setattr(batching, "cache_prefixes", failing)
        with pytest.raises(RuntimeError, match="out of memory"):
            batch.add(opened[1].state, opened[2].state)
    assert len(batch) == 1
    batch.add(opened[1].state, opened[2].state)
    while len(batch):
        batch.step()
    assert [row.result().tokens for row in opened] == alone


def test_packed_forwards_are_filled_up_to_a_few_widths():
    from refusion.decoding.runner import packed_width

    assert [packed_width(n) for n in (1, 32, 33, 500, 511, 512, 513, 700)] == [32, 32, 64, 512, 512, 512, 640, 768]
    assert len({packed_width(n) for n in range(1, 4097)}) == 16 + 28  # 32 .. 512 by 32, then 640 .. 4096 by 128
