"""The objectives against slow, literal per-example implementations written from the paper's description."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from refusion.training.collate import ObjectiveCollator
from refusion.training.objectives import ar_example, mdm_example, refusion_example
from refusion.training.trainer import ObjectiveTrainer

MASK = 70
EPS = 1e-3


def literal_refusion(prompt: list[int], response: list[int], slot_sizes, g: torch.Generator, prefix_share: float = 0.0,
                     across: bool = False, horizon: int | None = None) -> dict:
    """The paper's training objective step by step, with the same draws in the same order; with `prefix_share`
    some examples are a clean prefix of slots and a masked tail (its first `horizon` tokens only, when given), with
    `across` (or in such an example) a clean token also predicts the next token of the response whenever that
    token is not visible to it."""
    P, R = len(prompt), len(response)
    k = slot_sizes[int(torch.randint(len(slot_sizes), (1,), generator=g))]
    p = (1 - EPS) * float(torch.rand(1, generator=g)) + EPS
    slots = [list(range(start, min(start + k, R))) for start in range(0, R, k)]
    prefix = prefix_share > 0 and float(torch.rand(1, generator=g)) < prefix_share
    if prefix:
        tail = math.ceil(p * len(slots))
        masked = [index >= len(slots) - tail for index in range(len(slots))]
        shuffled = [slot for slot, m in zip(slots, masked) if not m]
        kept = sum(len(slot) for slot, m in zip(slots, masked) if m)
        kept = kept if horizon is None else min(kept, horizon)
        weight = R / kept
    else:
        coins = torch.rand(len(slots), generator=g).tolist()
        masked = [coin < p for coin in coins]
        clean = [slot for slot, m in zip(slots, masked) if not m]
        shuffled = [clean[i] for i in torch.randperm(len(clean), generator=g).tolist()]
        weight = 1 / p
    out = {"input_ids": list(prompt), "position_ids": list(range(P)), "ar_labels": [-100] * P,
           "mdm_labels": [-100] * P, "mdm_weights": [0.0] * P, "p": p, "R": R}
    placed = set()
    for slot in shuffled:
        for j, q in enumerate(slot):
            placed.add(q)
            out["input_ids"].append(response[q])
            out["position_ids"].append(P + q)
            if j + 1 < len(slot):
                label = response[slot[j + 1]]
            elif (prefix or across) and q + 1 < R and q + 1 not in placed:
                label = response[q + 1]
            else:
                label = -100
            out["ar_labels"].append(label)
            out["mdm_labels"].append(-100)
            out["mdm_weights"].append(0.0)
    tail = 0
    for slot, m in zip(slots, masked):
        if m:
            for q in slot:
                if prefix and horizon is not None and tail == horizon:
                    return out
                tail += 1
                out["input_ids"].append(MASK)
                out["position_ids"].append(P + q)
                out["ar_labels"].append(-100)
                out["mdm_labels"].append(response[q])
                out["mdm_weights"].append(weight)
    return out


def literal_mdm(prompt, response, g) -> dict:
    P, R = len(prompt), len(response)
    p = (1 - EPS) * float(torch.rand(1, generator=g)) + EPS
    coins = torch.rand(R, generator=g).tolist()
    masked = [c < p for c in coins]
    return {"input_ids": prompt + [MASK if m else r for r, m in zip(response, masked)],
            "position_ids": list(range(P + R)), "ar_labels": [-100] * (P + R),
            "mdm_labels": [-100] * P + [r if m else -100 for r, m in zip(response, masked)],
            "mdm_weights": [0.0] * P + [1 / p if m else 0.0 for m in masked], "p": p, "R": R}


def literal_ar(prompt, response) -> dict:
    sequence = prompt + response
    labels = [sequence[j + 1] if j + 1 >= len(prompt) and j + 1 < len(sequence) else -100 for j in range(len(sequence))]
    return {"input_ids": sequence, "position_ids": list(range(len(sequence))), "ar_labels": labels,
            "mdm_labels": [-100] * len(sequence), "mdm_weights": [0.0] * len(sequence), "R": len(response)}


def literal_loss(model, examples: list[dict], objective: str, lam: float = 1.0, bidirectional: bool = False) -> torch.Tensor:
    """One unpadded forward per example, then CE token by token."""
    ar_terms, mdm_total = [], 0.0
    for ex in examples:
        n = len(ex["input_ids"])
        # Always an explicit mask: without one, transformers reads reordered position ids as packed sequences.
        kwargs = {"attention_mask": torch.zeros(1, 1, n, n) if bidirectional else torch.ones(1, n, dtype=torch.long)}
        logits = model(input_ids=torch.tensor([ex["input_ids"]]), position_ids=torch.tensor([ex["position_ids"]]),
                       use_cache=False, **kwargs).logits[0]
        total = 0.0
        for j in range(n):
            if ex["ar_labels"][j] != -100:
                ar_terms.append(F.cross_entropy(logits[j], torch.tensor(ex["ar_labels"][j])))
            if ex["mdm_labels"][j] != -100:
                total = total + F.cross_entropy(logits[j], torch.tensor(ex["mdm_labels"][j])) * ex["mdm_weights"][j]
        mdm_total = mdm_total + total / ex["R"]
    l_ar = torch.stack(ar_terms).mean() if ar_terms else torch.tensor(0.0)
    l_mdm = mdm_total / len(examples)
    return {"ar": l_ar, "mdm": l_mdm, "refusion": l_ar + lam * l_mdm}[objective]


def random_examples(seed: int, count: int = 5) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [{"prompt_ids": torch.randint(2, 60, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist(),
             "response_ids": torch.randint(2, 60, (int(torch.randint(1, 40, (1,), generator=g)),), generator=g).tolist() + [1]}
            for _ in range(count)]


@pytest.fixture(scope="module")
def model():
    from tests.training.conftest import tiny_llama

    return tiny_llama(vocab_size=MASK + 1, tie=False, seed=3).eval()


def assert_same_fields(built: dict, literal: dict) -> None:
    for name in ("input_ids", "position_ids", "ar_labels", "mdm_labels"):
        assert built[name].tolist() == literal[name], name
    torch.testing.assert_close(built["mdm_weights"], torch.tensor(literal["mdm_weights"]))
    assert built["response_length"] == literal["R"]


@pytest.mark.parametrize("seed", range(20))
def test_refusion_example_matches_literal(seed):
    example = random_examples(seed, 1)[0]
    sizes = (1, 2, 4, 8, 16, 32)
    built = refusion_example(torch.tensor(example["prompt_ids"]), torch.tensor(example["response_ids"]), MASK, sizes,
                             torch.Generator().manual_seed(seed))
    assert_same_fields(built, literal_refusion(example["prompt_ids"], example["response_ids"], sizes,
                                               torch.Generator().manual_seed(seed)))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("prefix_share,across,horizon", [(0.0, True, None), (0.5, False, None), (0.5, True, None),
                                                         (1.0, False, None), (1.0, False, 1), (1.0, False, 3),
                                                         (0.5, False, 5), (1.0, False, 100)])
def test_refusion_example_options_match_literal(seed, prefix_share, across, horizon):
    example = random_examples((50 if horizon is None else 80) + seed, 1)[0]
    sizes = (1, 2, 4, 8)
    built = refusion_example(torch.tensor(example["prompt_ids"]), torch.tensor(example["response_ids"]), MASK, sizes,
                             torch.Generator().manual_seed(seed), prefix_share=prefix_share, ar_across_slots=across,
                             draft_horizon=horizon)
    assert_same_fields(built, literal_refusion(example["prompt_ids"], example["response_ids"], sizes,
                                               torch.Generator().manual_seed(seed), prefix_share, across, horizon))


def test_draft_horizon_hand_worked():
    """Slot size 2, response a b c d e f g, every example a prefix, horizon 3: the clean prefix, then three masks at
    the next three positions, nothing after them; L_MDM's weight makes it the mean over those three."""
    response = [10, 11, 12, 13, 14, 15, 16]
    cuts = set()
    for seed in range(40):
        built = refusion_example(torch.tensor([9]), torch.tensor(response), MASK, (2,), torch.Generator().manual_seed(seed),
                                 prefix_share=1.0, draft_horizon=3)
        ids = built["input_ids"].tolist()[1:]
        clean = ids.index(MASK)
        kept = min(3, 7 - clean)
        assert ids == response[:clean] + [MASK] * kept
        assert built["position_ids"].tolist() == list(range(1 + clean + kept))
        assert built["ar_labels"].tolist()[1:] == response[1:clean + 1] + [-100] * kept
        assert built["mdm_labels"].tolist()[1 + clean:] == response[clean:clean + kept]
        torch.testing.assert_close(built["mdm_weights"][1 + clean:], torch.full((kept,), 7 / kept))
        assert built["response_length"] == 7
        cuts.add(clean)
    assert cuts == {0, 2, 4, 6}  # the last slot (g alone) is always masked


def test_draft_horizon_leaves_the_draws_and_the_shuffled_layout_alone():
    example = random_examples(5, 1)[0]
    prompt, response = torch.tensor(example["prompt_ids"]), torch.tensor(example["response_ids"])
    for seed in range(10):
        plain, horizon = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
        a = refusion_example(prompt, response, MASK, (2, 4), plain, prefix_share=0.5)
        b = refusion_example(prompt, response, MASK, (2, 4), horizon, prefix_share=0.5, draft_horizon=2)
        assert torch.equal(plain.get_state(), horizon.get_state())
        if a["position_ids"].tolist() != sorted(a["position_ids"].tolist()):  # the shuffled layout: untouched
            assert a["input_ids"].tolist() == b["input_ids"].tolist()


def test_prefix_layout_hand_worked():
    """Slot size 2, response a b c d e, every example a prefix: in order, clean slots first, the masked slots a
    tail of whole slots; every clean token predicts the next response token, masked or not."""
    response = [10, 11, 12, 13, 14]
    tails = set()
    for seed in range(30):
        built = refusion_example(torch.tensor([9, 9]), torch.tensor(response), MASK, (2,),
                                 torch.Generator().manual_seed(seed), prefix_share=1.0)
        ids, labels = built["input_ids"].tolist()[2:], built["ar_labels"].tolist()[2:]
        assert built["position_ids"].tolist() == list(range(7))
        clean = ids.index(MASK)
        assert clean in (0, 2, 4) and ids[:clean] == response[:clean] and set(ids[clean:]) == {MASK}
        assert labels == response[1:clean + 1] + [-100] * (5 - clean)
        assert built["mdm_labels"].tolist()[2 + clean:] == response[clean:]
        torch.testing.assert_close(built["mdm_weights"][2 + clean:], torch.full((5 - clean,), 5 / (5 - clean)))
        tails.add(clean)
    assert tails == {0, 2, 4}  # every cut of the three slots occurs


def test_paper_recipe_draws_unchanged_by_the_options():
    """Off, the options leave the paper's recipe draw for draw: the same generator state after each example."""
    example = random_examples(3, 1)[0]
    prompt, response = torch.tensor(example["prompt_ids"]), torch.tensor(example["response_ids"])
    plain, with_across = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
    a = refusion_example(prompt, response, MASK, (2, 4), plain)
    b = refusion_example(prompt, response, MASK, (2, 4), with_across, ar_across_slots=True)
    assert a["input_ids"].tolist() == b["input_ids"].tolist()
    assert torch.equal(plain.get_state(), with_across.get_state())


@pytest.mark.parametrize("share", [0.3, 0.7])
def test_next_token_share(share):
    """One extra coin first: under the share, the example is `ar_example` (every response token predicts the next,
    no masks, nothing more drawn); otherwise the example the other options build from the draws after that coin."""
    example = random_examples(7, 1)[0]
    prompt, response = torch.tensor(example["prompt_ids"]), torch.tensor(example["response_ids"])
    next_token = 0
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        built = refusion_example(prompt, response, MASK, (2, 4), g, prefix_share=0.5, ar_across_slots=True,
                                 next_token_share=share)
        replay = torch.Generator().manual_seed(seed)
        if float(torch.rand(1, generator=replay)) < share:
            next_token += 1
            expected = ar_example(prompt, response)
        else:
            expected = refusion_example(prompt, response, MASK, (2, 4), replay, prefix_share=0.5, ar_across_slots=True)
        for name in ("input_ids", "position_ids", "ar_labels", "mdm_labels", "mdm_weights"):
            assert torch.equal(built[name], expected[name]), name
        assert torch.equal(g.get_state(), replay.get_state())
    assert 0 < next_token < 40


@pytest.mark.parametrize("seed", range(10))
def test_mdm_and_ar_examples_match_literal(seed):
    example = random_examples(seed, 1)[0]
    prompt, response = example["prompt_ids"], example["response_ids"]
    built = mdm_example(torch.tensor(prompt), torch.tensor(response), MASK, torch.Generator().manual_seed(seed))
    assert_same_fields(built, literal_mdm(prompt, response, torch.Generator().manual_seed(seed)))
    assert_same_fields(ar_example(torch.tensor(prompt), torch.tensor(response)), literal_ar(prompt, response))


def test_refusion_example_hand_worked():
    """Slot size 2, response a b c d e: whatever is masked, clean slots come first, masks after in order."""
    g = torch.Generator().manual_seed(0)
    built = refusion_example(torch.tensor([9, 9]), torch.tensor([10, 11, 12, 13, 14]), MASK, (2,), g)
    ids, positions = built["input_ids"].tolist(), built["position_ids"].tolist()
    assert ids[:2] == [9, 9] and positions[:2] == [0, 1]
    assert sorted(positions) == list(range(7))
    for i, (token, position) in enumerate(zip(ids[2:], positions[2:]), start=2):
        assert token in (MASK, 10 + position - 2)
        if token == MASK:
            assert all(t == MASK for t in ids[i:])  # no clean token after the first mask
            assert built["mdm_labels"][i] == 10 + position - 2
        elif position in (2, 4) and i + 1 < len(ids) and ids[i + 1] != MASK:
            assert built["ar_labels"][i] == 10 + position - 1  # a slot's first token predicts its second
        else:
            assert built["ar_labels"][i] == -100  # a slot's last token (or the last one, e) has no label


@pytest.mark.parametrize("objective", ["refusion", "mdm", "ar"])
def test_batched_loss_matches_literal(model, objective):
    features = random_examples(100 + len(objective), 6)
    sizes = (2, 4, 8)
    collate = ObjectiveCollator(objective, pad_id=0, mask_id=MASK, slot_sizes=sizes, seed=5)
    batch = collate(features)
    g = torch.Generator().manual_seed(5)
    literal = []
    for f in features:
        if objective == "refusion":
            literal.append(literal_refusion(f["prompt_ids"], f["response_ids"], sizes, g))
        elif objective == "mdm":
            literal.append(literal_mdm(f["prompt_ids"], f["response_ids"], g))
        else:
            literal.append(literal_ar(f["prompt_ids"], f["response_ids"]))
    for row, ex in enumerate(literal):
        n = len(ex["input_ids"])
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]
        assert batch["position_ids"][row, :n].tolist() == ex["position_ids"]
        assert batch["ar_labels"][row, :n].tolist() == ex["ar_labels"]
        assert batch["mdm_labels"][row, :n].tolist() == ex["mdm_labels"]
        assert batch["attention_mask"][row].sum() == n
    trainer = SimpleNamespace(objective=objective, mdm_weight=0.7)
    with torch.no_grad():
        loss = ObjectiveTrainer.compute_loss(trainer, model, batch)
        expected = literal_loss(model, literal, objective, lam=0.7, bidirectional=objective == "mdm")
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pad_to", [None, 50])
def test_mdm_pads_responses_with_eos_as_llada(model, pad_to):
    """Every response is EOS-padded to the batch's longest (at least pad_to); the padding is masked and scored."""
    EOS = 1
    features = random_examples(31, 5)
    collate = ObjectiveCollator("mdm", pad_id=0, mask_id=MASK, seed=4, eos_id=EOS, pad_responses_to=pad_to)
    batch = collate(features)
    longest = max(len(f["response_ids"]) for f in features)
    target = max(longest, pad_to or 0)
    g = torch.Generator().manual_seed(4)
    literal = [literal_mdm(f["prompt_ids"], f["response_ids"] + [EOS] * (target - len(f["response_ids"])), g)
               for f in features]
    for row, ex in enumerate(literal):
        n = len(ex["input_ids"])
        assert n == len(features[row]["prompt_ids"]) + target
        assert batch["input_ids"][row, :n].tolist() == ex["input_ids"]
        assert batch["mdm_labels"][row, :n].tolist() == ex["mdm_labels"]
        assert batch["attention_mask"][row].sum() == n  # the padding EOS are real, attended tokens
    assert batch["response_lengths"].tolist() == [target] * len(features)
    assert (batch["mdm_labels"] == EOS).sum() > len(features)  # padding is scored, not only each response's own EOS
    trainer = SimpleNamespace(objective="mdm", mdm_weight=1.0)
    with torch.no_grad():
        loss = ObjectiveTrainer.compute_loss(trainer, model, batch)
    torch.testing.assert_close(loss, literal_loss(model, literal, "mdm", bidirectional=True), rtol=1e-4, atol=1e-5)


def test_only_mdm_pads_responses():
    features = random_examples(32, 3)
    plain = ObjectiveCollator("refusion", pad_id=0, mask_id=MASK, seed=4)(features)
    with_eos = ObjectiveCollator("refusion", pad_id=0, mask_id=MASK, seed=4, eos_id=1)(features)
    assert all(torch.equal(plain[name], with_eos[name]) for name in plain)
    with pytest.raises(ValueError):
        ObjectiveCollator("ar", pad_id=0, eos_id=1, pad_responses_to=8)


def test_mdm_attention_is_bidirectional_and_refusion_causal(model):
    collate = {name: ObjectiveCollator(name, pad_id=0, mask_id=MASK, slot_sizes=(4,), seed=1) for name in ("mdm", "ar")}
    features = [{"prompt_ids": [5, 6, 7], "response_ids": [8, 9, 1]}]
    for name, bidirectional in (("mdm", True), ("ar", False)):
        batch = collate[name](features)
        changed = {k: v.clone() for k, v in batch.items()}
        changed["input_ids"][0, -1] = 42  # the last token changes
        logits = []
        for b in (batch, changed):
            recorder = SimpleNamespace(objective=name, mdm_weight=1.0)
            with torch.no_grad():
                _, out = ObjectiveTrainer.compute_loss(recorder, model, b, return_outputs=True)
            logits.append(out.logits[0, 0])
        assert (not torch.allclose(*logits)) == bidirectional


def test_no_ar_targets_gives_finite_loss_and_gradient(model):
    """Slots of one token have no AR labels at all; the loss is then L_MDM alone (or 0), still finite."""
    batch = ObjectiveCollator("refusion", pad_id=0, mask_id=MASK, slot_sizes=(1,), seed=2)(random_examples(7, 3))
    assert (batch["ar_labels"] == -100).all()
    model.zero_grad()
    loss = ObjectiveTrainer.compute_loss(SimpleNamespace(objective="refusion", mdm_weight=1.0), model, batch)
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.zero_grad()
