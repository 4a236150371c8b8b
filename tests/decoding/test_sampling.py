"""Sampling at extreme temperatures: the tiniest positive temperature is greedy, never NaN or a wrong tie."""

import pytest
import torch

from refusion.decoding.sampling import choose, tempered


@pytest.mark.parametrize("temperature", [5e-324, 1e-300, 1e-8])
def test_a_tiny_temperature_samples_the_top_token(temperature):
    logits = torch.tensor([[3.0, 5.0, 4.0, float("-inf")], [1.0, 0.5, 0.9, 0.2]])
    probs = tempered(logits, temperature)
    assert not probs.isnan().any()
    assert probs.argmax(-1).tolist() == [1, 0] and probs.max(-1).values.tolist() == [1.0, 1.0]
    tokens, _ = choose(logits, temperature, torch.Generator().manual_seed(0))
    assert tokens.tolist() == [1, 0]
