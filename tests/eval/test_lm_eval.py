"""The lm-eval adapter: the `refusion` model class and the offline task YAMLs, on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch

from refusion import add_mask_token
from refusion.lm_eval import TASKS_DIR, export_tasks
from tests.tiny_models import char_tokenizer, tiny_model

lm_eval = pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'refusion[lm-eval]')")


class Request:  # what lm-eval hands a model: an object with .args
    def __init__(self, *args):
        self.args = args


@pytest.fixture(scope="module")
def lm():
    from refusion.lm_eval.harness import RefusionLM

    tokenizer = char_tokenizer()
    model = tiny_model("llama", vocab_size=len(tokenizer) + 1)
    model.config.max_position_embeddings = 4096
    add_mask_token(model, tokenizer)
    return RefusionLM(model=model, tokenizer=tokenizer, decoder="refusion", slot_size=4, blocks=2, max_new_tokens=16)


def test_loglikelihood_is_the_sum_of_next_token_logprobs(lm):
    (logprob, greedy), = lm.loglikelihood([Request("ab", "cd")], disable_tqdm=True)
    ids = lm.tokenizer("abcd")["input_ids"]  # one token per character
    with torch.no_grad():
        logprobs = torch.log_softmax(lm.model(torch.tensor([ids])).logits[0].float(), -1)
    expected = logprobs[1, ids[2]] + logprobs[2, ids[3]]
    assert logprob == pytest.approx(expected.item(), abs=1e-4)
    assert greedy == bool(logprobs[1].argmax() == ids[2] and logprobs[2].argmax() == ids[3])
    # A trailing space of the context moves to the continuation; an empty context is conditioned on EOS.
    (spaced, _), = lm.loglikelihood([Request("ab ", "c")], disable_tqdm=True)
    (joined, _), = lm.loglikelihood([Request("ab", " c")], disable_tqdm=True)
    assert spaced == pytest.approx(joined, abs=1e-5)
    (rolling,) = lm.loglikelihood_rolling([Request("abcd")], disable_tqdm=True)
    (from_eos, _), = lm.loglikelihood([Request("", "abcd")], disable_tqdm=True)
    assert rolling == pytest.approx(from_eos, abs=1e-4) and rolling < 0 and math.isfinite(rolling)


def test_generate_until_cuts_at_stop_strings_and_counts_speed(lm):
    (free,) = lm.generate_until([Request("Hi", {"until": [], "max_gen_toks": 512})], disable_tqdm=True)
    assert 0 < len(free) <= 16  # model_args' max_new_tokens wins over the task's max_gen_toks
    assert lm.speed["new_tokens"] > 0 and lm.speed["forward_passes"] >= 1
    assert len(free) > 3
    free_tokens = lm.speed["new_tokens"]
    (cut,) = lm.generate_until([Request("Hi", {"until": [free[1:3]]})], disable_tqdm=True)
    assert cut == free[: free.index(free[1:3])]
    assert lm.speed["new_tokens"] - free_tokens < free_tokens  # the decode itself ended at the stop string


def test_unknown_model_arg_is_an_error():
    from refusion.errors import RefusionError
    from refusion.lm_eval.harness import RefusionLM

    with pytest.raises(RefusionError, match="do not include slotsize"):
        RefusionLM(model=object(), tokenizer=object(), decoder="ar", slotsize=4)


def test_simple_evaluate_runs_an_offline_task(lm, tmp_path):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    assert {p.name for p in export_tasks(tmp_path)} >= {"refusion_gsm8k.yaml", "refusion_mbpp.yaml", "utils.py"}
    manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False)
    results = simple_evaluate(model=lm, tasks=["refusion_gsm8k", "refusion_arc_challenge"], limit=2,
                              task_manager=manager, apply_chat_template=True)
    for task in ("refusion_gsm8k", "refusion_arc_challenge"):
        scores = results["results"][task]
        assert 0.0 <= scores["acc,none"] <= 1.0
    assert len(results["samples"]["refusion_gsm8k"]) == 2
    sample = results["samples"]["refusion_gsm8k"][0]
    assert sample["doc"]["answer"] == "18" and "Janet" in sample["arguments"][0][0]
