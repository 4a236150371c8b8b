"""The collator: turns a list of `{"prompt_ids", "response_ids"}` features into one padded batch.

It applies the objective's input construction (random slots, masks, shuffles) to every example
with its own seeded generator, then right-pads. Knows nothing about models or the Trainer's loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .objectives import IGNORE, build_example, eos_padded

PADDED = {"input_ids": None, "position_ids": 0, "ar_labels": IGNORE, "mdm_labels": IGNORE, "mdm_weights": 0.0}


@dataclass
class ObjectiveCollator:
    """Build and pad a batch for one objective.

    >>> collate = ObjectiveCollator("ar", pad_id=0)
    >>> batch = collate([{"prompt_ids": [5, 6], "response_ids": [7, 1]}, {"prompt_ids": [5], "response_ids": [1]}])
    >>> batch["input_ids"].tolist(), batch["ar_labels"].tolist(), batch["attention_mask"].tolist()
    ([[5, 6, 7, 1], [5, 1, 0, 0]], [[-100, 7, 1, -100], [1, -100, -100, -100]], [[1, 1, 1, 1], [1, 1, 0, 0]])
    """

    objective: str
    pad_id: int
    mask_id: int | None = None
    slot_sizes: tuple[int, ...] = (4, 8, 16, 32)
    prefix_share: float = 0.0
    """refusion only: the share of examples laid out as a clean left-to-right prefix and a masked tail."""
    ar_across_slots: bool = False
    """refusion only: next-token labels across slot boundaries where the next token is hidden."""
    draft_horizon: int | None = None
    """refusion only: prefix-layout examples keep this many masked tokens and drop the rest of the response."""
    next_token_share: float = 0.0
    """refusion only: the share of examples that are plain next-token examples over the whole response."""
    seed: int = 0
    eos_id: int | None = None
    """mdm only: when set, responses are padded with EOS to the batch's longest response (LLaDA's SFT)."""
    pad_responses_to: int | None = None
    """mdm only: pad every response with EOS to at least this many tokens (e.g. the generation length used later)."""
    generator: torch.Generator = field(init=False, repr=False)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)
        if self.objective != "ar" and self.mask_id is None:
            raise ValueError(f"the {self.objective} objective needs a mask token id")
        if self.pad_responses_to is not None and (self.objective != "mdm" or self.eos_id is None):
            raise ValueError("pad_responses_to applies to the mdm objective and needs eos_id")

    def __call__(self, features: list[dict]) -> dict:
        responses = [torch.as_tensor(f["response_ids"], dtype=torch.long) for f in features]
        if self.objective == "mdm" and self.eos_id is not None:
            length = max([r.shape[0] for r in responses] + [self.pad_responses_to or 0])
            responses = [eos_padded(r, length, self.eos_id) for r in responses]
        built = [
            build_example(self.objective, torch.as_tensor(f["prompt_ids"], dtype=torch.long), response,
                          mask_id=self.mask_id, slot_sizes=self.slot_sizes, generator=self.generator,
                          prefix_share=self.prefix_share, ar_across_slots=self.ar_across_slots,
                          draft_horizon=self.draft_horizon, next_token_share=self.next_token_share)
            for f, response in zip(features, responses)
        ]
        return pad_batch(built, self.pad_id)


def pad_batch(built: list[dict], pad_id: int) -> dict:
    """Right-pad built examples to one length: tensors [B, S], attention_mask [B, S] (1 = real), response_lengths [B]."""
    longest = max(b["input_ids"].shape[0] for b in built)
    batch = {}
    for name, fill in PADDED.items():
        fill = pad_id if fill is None else fill
        rows = [b[name] for b in built]
        batch[name] = torch.stack([torch.cat([r, r.new_full((longest - r.shape[0],), fill)]) for r in rows])
    batch["attention_mask"] = torch.stack(
        [torch.arange(longest) < b["input_ids"].shape[0] for b in built]).long()
    batch["response_lengths"] = torch.tensor([b["response_length"] for b in built], dtype=torch.float32)
    return batch
