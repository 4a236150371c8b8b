"""Lossless decoding (`decoder="lossless"`): the masked-diffusion head proposes, the AR head decides.

Speculative decoding with the model as its own drafter (Leviathan et al. 2023; Chen et al. 2023),
drafts coming from `<|mask|>` positions fed in the verifying forward itself (as TiDAR does). The
text is known up to position T; its last token (the whole prompt on the first step) is *pending*:
committed, its KV not cached. Every forward feeds, after the cache, in one sequence under a 4D mask:

    pending (.. T) | root masks T+1 .. T+g | chain j: c_j1 .. c_jd at T+1 .. | masks after each c_ji

Chain 0 is the likeliest continuation (d tokens); chains 1..b-1 are the other likeliest tokens for
T+1 alone. After each chain token sit masks that see the pending tokens and that chain up to
there: what the mask head predicts if the text went that way (g = d + 1 of them after a chain's
last token, where a chain that is right all the way ends; two after the others, enough for one
candidate when the chain breaks there). Every segment sees the cache and the
pending tokens, and nothing of the other chains.

- The AR head at the last pending token gives the token at T+1, exactly as the `ar` decoder would.
  If a chain starts with it, that chain token's own AR logits give the token after it, and so on
  down the chain while the chain keeps agreeing: accepted chain tokens + one AR token per forward.
  Greedy: agree = equal the AR argmax. Sampling: multi-candidate speculative sampling at T+1 and
  the speculative-sampling rule along the chain, so the text is distributed exactly as `ar`'s.
- The masks after the last accepted token (or the root masks when none was) give the next
  forward's candidates: their second mask onwards sits after the AR token just committed.

Greedy decoding may add lookup chains, with no masks after them: the tokens that followed the
text's last tokens where they appeared before (`lookup.py`), and what the model most often wrote
after them in its own answers (`draft_table.py`, where the model ships a table). After a lookup
chain commits, the next forward has no candidates and drafts only from its root masks; so a chain
with masks after it (or none at all, keeping the root masks' drafts) counts what those masks are
expected to add, and the chain worth the most commits.

Only the pending tokens' and the accepted chain tokens' KV is kept: the cache stays the exact
causal cache of the text. Greedy output is token-identical to `ar` (in float32, and in bf16 on a CPU under
the invariant kernels, `refusion.invariant_kernels`, the default: PyTorch's own bf16 kernels round a token
differently by the width of its forward).

How many chains (b) and how deep (d) adapt: the decoder counts how often candidates of each rank
and depth were accepted and picks the (b, d) that maximises expected tokens per forward over the
forward's cost. That cost, by tokens fed, is measured once per model (`width_cost="auto"`: on a
GPU or a bf16 CPU tens of tokens cost little more than one; in float32 on a CPU they do not), or
modelled as `1 + width_cost * (tokens fed - 1)`. b = 0 feeds nothing extra: a plain `ar` step.
So is whether to feed the fallback masks (the root masks and the two after each chain token but the
last), which only give the next forward candidates where chain 0 breaks: a lean tree feeds masks after
each chain's last token only, and where it breaks the next forward offers no candidates and feeds root
masks alone (`Shape.choose`). On the miniature, where chains are mostly accepted whole, fallback masks
were most of each forward's width.
Seeded sampling adapts from the prior with a fixed cost model instead, so that a seed gives one text.

A decode is a `LosslessRow` of a `refusion.decoding.batching.Batch`: alone, the batch has one row;
several prompts (or the server's running batch) share each forward, every row feeding its own
tree. In a batch, an unseeded row prices a wider tree by what it adds to the whole forward.
Knows nothing about tokenizers.
"""

from __future__ import annotations

import collections
import functools
import itertools
import operator
from dataclasses import dataclass, replace
from typing import Callable

import torch

from ..attention import segment_visibility
from ..errors import RefusionError
from .batching import Batch, Feed, Spare
from .generation import EventCallback
from .draft_table import DraftTable
from .lookup import TABLE_PRIOR_GAIN, LookupGain, NgramIndex
from .options import Option
from .runner import DecodeOutput, ForwardCost, ModelRunner
from .sampling import draw, greedy, tempered, verify_candidates

OPTIONS = (
    Option("branches", "auto", "lossless: candidate tokens for the next position verified per forward (0 = plain "
           "ar steps); auto adapts it to the acceptance seen and the forward's cost", int, low=0, high=64, auto=True),
    Option("depth", "auto", "lossless: tokens in the likeliest candidate chain; auto adapts it", int, low=1, high=16,
           auto=True),
    Option("max_branches", 8, "lossless: the most candidates branches=auto may use", int, low=1, high=64),
    Option("max_depth", 10, "lossless: the longest chain depth=auto may use", int, low=1, high=16),
    Option("lookup", "auto", "lossless: the most tokens copied from where the text's last tokens appeared before "
           "(prompt lookup), verified beside the mask-head drafts; 0 = none; auto = up to max-depth, offered where it "
           "pays (greedy decoding only)", int, low=0, high=32, auto=True),
    Option("draft_table", "auto", "lossless: also verify up to 4 tokens from the model's n-gram draft table "
           "(draft_table.safetensors beside its weights, built by `refusion drafts`: what it most often wrote after "
           "the text's last tokens), offered where it pays (greedy decoding only); off = never", str,
           choices=("auto", "off")),
    Option("width_cost", "auto", "lossless: cost of one more fed token relative to a one-token forward; auto "
           "measures the model once", float, 0.0, 1.0, auto=True),
    Option("fallback_masks", "auto", "lossless: the masks that give the next forward its candidates where the "
           "likeliest chain breaks (after the text and after each chain token but the last); auto feeds them only "
           "where they pay for their width (where chains are mostly accepted whole, the next forward drafts anew "
           "instead), on = always (with a fixed number of branches, always: every forward offers candidates)", str,
           choices=("auto", "on")),
)

TABLE_DRAFT = 4
"""The most tokens of a draft-table chain: its drafts agree with the text for about one token on average, and
beyond that mostly where the mask chains agree too, so a longer chain mostly adds width."""
PRIOR_RANK = (0.25, 0.13, 0.07, 0.06, 0.04, 0.03, 0.03, 0.02)  # chance the rank-i candidate for T+1 is right
PRIOR_DEPTH = 0.3  # chance a chain token is right given the one before it was
PRIOR_WEIGHT, DECAY = 4.0, 0.95
# The next position's candidates are judged over a longer memory than the chain depths: whether to offer any
# (b > 0) is often a thin call (on the shipped model in bf16, mask-head candidates alone are accepted 0.29 times
# per forward, and feeding them costs 0.10 of a forward: `benchmarks/bench/smollm2-bf16/`, its
# `lossless:lookup=0,draft_table=off` row), and a plain step gathers no evidence: with a short memory a few misses
# in a row mean plain steps for a while.
RANK_DECAY = 0.99
# A plain step must beat the best tree by this much: plain steps gather no evidence about the candidates, and the
# first tree after them comes without candidates. Near the boundary both are worth about the same: replayed on
# the bench prompts with a busy machine's cost calibration (`benchmarks/shape_replay.py --decide-costs
# 1:1,2:1.05,4:1.1,8:1.25,16:1.4,32:1.8,64:2.8`), 1.49 tokens per unit of cost with the margin or without, at
# 1.75 tokens per forward with it and 1.57 without (797 plain steps); with accurate costs the same either way.
PLAIN_MARGIN = 0.1
EXPLORE_EVERY = 16  # after this many plain steps in a row, offer one candidate anyway: acceptance may have changed
PROBE_AFTER = 4  # after this many chains accepted whole in a row, feed one token deeper: it may pay too


def validate_options(options: dict, max_new_tokens: int) -> None:
    """Reject combinations that make no sense (each value alone is checked by its `Option`)."""
    if options["branches"] != "auto" and options["branches"] > options["max_branches"]:
        raise RefusionError(f"branches ({options['branches']}) must not exceed max-branches ({options['max_branches']})")
    if options["depth"] != "auto" and options["depth"] > options["max_depth"]:
        raise RefusionError(f"depth ({options['depth']}) must not exceed max-depth ({options['max_depth']})")


INNER_GROUP = 2  # masks after a chain token that is not the chain's last: a placeholder and one candidate


def tree_width(pending: int, branches: int, depth: int, lean: bool = False) -> int:
    """Tokens one forward feeds: pending, root masks, chain tokens, and masks after each chain token (a lean tree:
    after the likeliest chain's last token only, and after the other candidates)."""
    if branches == 0:
        return pending
    group = depth + 1
    inner = min(INNER_GROUP, group)
    if lean:
        return pending + depth + group + (branches - 1) * (1 + group)
    return pending + group + (depth + group + (depth - 1) * inner) + (branches - 1) * (1 + group)


class Shape:
    """How many chains and how deep, from how often candidates were accepted (decayed counts; deterministic)."""

    def __init__(self, branches, depth, max_branches, max_depth, cost: Callable[[int], float] | None,
                 lean: bool = True):
        self.branches, self.depth = branches, depth
        self.lean = lean and branches == "auto"  # lean trees may be chosen; fixed branches: candidates every forward
        self.max_branches, self.max_depth, self.cost = max_branches, max_depth, cost
        rank_prior = [PRIOR_RANK[min(i, len(PRIOR_RANK) - 1)] for i in range(max_branches)]
        self.rank_hits = [PRIOR_WEIGHT * p for p in rank_prior]
        self.rank_trials = [PRIOR_WEIGHT] * max_branches
        self.depth_hits = [PRIOR_WEIGHT * PRIOR_DEPTH] * max_depth  # [i]: token i+1 of chain 0, given token i was right
        self.depth_trials = [PRIOR_WEIGHT] * max_depth
        self.plain_steps = 0
        self.exploring = 0  # steps left of an exploration: one to feed masks, one to verify their candidates
        self.whole_chains = 0  # chains accepted whole in a row: what is beyond them is never judged
        self.probing = 0  # steps left of a deeper probe: one to feed the deeper masks, one to verify the chain
        self._tree_costs: tuple = ()  # `_costs`, priced by `_costs_of`
        self._costs_of: Callable | None = None

    def update(self, branches: int, depth: int, rank: int | None, deeper: int) -> None:
        """Offered `branches` x `depth`; the T+1 candidate of `rank` matched (None: none), and `deeper` more of chain 0."""
        self.whole_chains = self.whole_chains + 1 if branches and rank == 0 and deeper == depth - 1 else 0
        for i in range(branches):
            self.rank_hits[i] = RANK_DECAY * self.rank_hits[i] + (rank == i)
            self.rank_trials[i] = RANK_DECAY * self.rank_trials[i] + 1
        if rank == 0:
            for i in range(1, depth):
                if i > deeper + 1:
                    break
                self.depth_hits[i] = DECAY * self.depth_hits[i] + (i <= deeper)
                self.depth_trials[i] = DECAY * self.depth_trials[i] + 1

    def state(self) -> dict:
        return {"rank": (self.rank_hits, self.rank_trials), "depth": (self.depth_hits, self.depth_trials)}

    def restore(self, state: dict | None) -> None:
        """Continue from counts an earlier generation with this model left (shorter lists stay as they are)."""
        if not state:
            return
        for name, (hits, trials) in state.items():
            own_hits, own_trials = getattr(self, f"{name}_hits"), getattr(self, f"{name}_trials")
            n = min(len(hits), len(own_hits))
            own_hits[:n], own_trials[:n] = hits[:n], trials[:n]

    def choose(self, reach: int, explore: bool = True) -> tuple[int, int, bool]:
        """(branches, depth, lean) for the next forward; chains no deeper than `reach`.

        A lean tree feeds no fallback masks (`tree_width`): where the likeliest chain breaks, or no candidate is
        right, the next forward has no candidates and feeds root masks alone (`_costs`), committing one token.
        Over that cycle a lean tree commits E + lack tokens for C(lean) + lack * C(cold), `lack` being the chance
        the next forward goes without. On a miniature whose chains are mostly accepted whole, fallback masks were
        most of every forward's width.

        `explore=False` never offers candidates only to see whether they pay: in a batch, one row's
        tree widens every row's share of the forward."""
        most_depth = max(1, min(self.max_depth, reach))
        if self.cost is None:  # fixed by the caller
            return self.branches, min(self.depth, most_depth), False
        sums = self._sums()
        branch_choices = [self.branches] if self.branches != "auto" else range(self.max_branches + 1)
        depth_choices = [min(self.depth, most_depth)] if self.depth != "auto" else range(1, most_depth + 1)
        # A plain step competes only when the number of branches is the decoder's to choose.
        best, shape = ((1.0 / self.cost(1) / (1 + PLAIN_MARGIN), (0, 1, False)) if self.branches == "auto"
                       else (float("-inf"), (self.branches, 1, False)))
        if self.branches == "auto" and self.plain_steps >= EXPLORE_EVERY and explore:
            self.exploring, self.plain_steps = 2, 0
        if self.exploring:  # candidates of one branch, as deep as allowed: shows whether they pay now
            self.exploring -= 1
            best, branch_choices = 0.0, [1]
        first_right, rank_sums, chain_sums, whole_chains = sums
        insured, lean, cold = self._costs()
        for b in branch_choices:
            if not b:
                continue
            offered = 1 + rank_sums[b]  # `_expected`, inlined: every step prices every shape
            for d in depth_choices:
                expected = offered + first_right * chain_sums[d]
                gain = expected / insured[b][d]
                if gain > best:
                    best, shape = gain, (b, d, False)
                if self.lean:
                    lack = max(0.0, 1.0 - first_right * whole_chains[d] - (rank_sums[b] - first_right))
                    gain = (expected + lack) / (lean[b][d] + lack * cold[d])
                    if gain > best:
                        best, shape = gain, (b, d, True)
        self.plain_steps = self.plain_steps + 1 if shape[0] == 0 else 0
        # A depth is judged only when offered: after a few early misses it would never be offered again,
        # however well the chains before it do. Whole chains in a row earn one probe a token deeper.
        if self.depth == "auto" and shape[0] and self.whole_chains >= PROBE_AFTER and explore:
            self.probing, self.whole_chains = 2, 0
        if self.probing and shape[0]:
            self.probing -= 1
            shape = (shape[0], min(shape[1] + 1, most_depth), shape[2])
        return shape

    def _costs(self) -> tuple[list[list[float]], list[list[float]], list[float]]:
        """The cost of a forward offering b x d after one pending token, [b][d], with fallback masks and lean; and
        [d] of a forward with no candidates (the pending token and the root masks for a chain of d). Remembered
        for the cost function they were priced by: every step prices every shape."""
        if self._costs_of is not self.cost:
            branches, depths = range(self.max_branches + 1), range(self.max_depth + 1)
            self._tree_costs = tuple([[self.cost(tree_width(1, b, d, lean)) for d in depths] for b in branches]
                                     for lean in (False, True)) + ([self.cost(1 + (d + 1)) for d in depths],)
            self._costs_of = self.cost
        return self._tree_costs

    def expected(self, branches: int, depth: int) -> float:
        """Tokens a forward offering `branches` x `depth` is expected to commit (the AR token included)."""
        return self._expected(self._sums(), branches, depth)

    def _sums(self) -> tuple[float, list[float], list[float], list[float]]:
        """(chance the likeliest candidate is right, [b]: candidates of the first b ranks expected right, [d]: chain
        tokens after the first expected right in a chain of d, given the first is, [d]: the chance a chain of d is
        right whole, given its first token is)."""
        ranks = [h / t for h, t in zip(self.rank_hits, self.rank_trials)]
        depths = [h / t for h, t in zip(self.depth_hits, self.depth_trials)]
        for i in range(2, len(depths)):  # a depth never tried is taken to do as well as the one before it
            if self.depth_trials[i] == PRIOR_WEIGHT:
                depths[i] = depths[i - 1]
        products = list(itertools.accumulate(depths[1:], operator.mul))
        chain_sums = [0.0, 0.0] + list(itertools.accumulate(products))
        return ranks[0], [0.0] + list(itertools.accumulate(ranks)), chain_sums, [1.0, 1.0] + products

    @staticmethod
    def _expected(sums, branches, depth) -> float:
        if not branches:
            return 1.0
        first_right, rank_sums, chain_sums, _ = sums
        return 1 + rank_sums[branches] + first_right * chain_sums[depth]


@dataclass
class Candidates:
    """Proposals for the positions after the pending tokens: `first` for T+1 (best first), `chain` for T+2, ..."""

    first: list[int]
    chain: list[int]
    first_q: torch.Tensor | None = None  # sampling: the distribution `first` was drawn from
    chain_q: torch.Tensor | None = None  # sampling: [len(chain), V]


NONE = Candidates([], [])


def decode(runner: ModelRunner, prompt_ids: torch.Tensor, **options) -> DecodeOutput:
    """One prompt ([1, P]) alone: a batch of one row (`LosslessRow` takes the keyword arguments)."""
    row = LosslessRow(runner, prompt_ids[0].tolist(), **options)
    batch = Batch(runner)
    batch.add(row)
    while len(batch):
        batch.step()
    return row.output(batch.cache)


class LosslessRow:
    """One prompt's lossless decode as a row of a `Batch` (see the module docstring for one step)."""

    def __init__(self, runner: ModelRunner, prompt: list[int], *, max_new_tokens: int, eos_token_ids: set[int],
                 mask_token_id: int, branches: int | str = "auto", depth: int | str = "auto", max_branches: int = 8,
                 max_depth: int = 10, lookup: int | str = "auto", draft_table: str = "auto",
                 width_cost: float | str = "auto", fallback_masks: str = "auto",
                 temperature: float = 0.0,
                 generator: torch.Generator | None = None, emit: EventCallback = lambda event: None,
                 should_stop: Callable[[], bool] = lambda: False):
        self.prompt = prompt
        self.max_new_tokens, self.eos_token_ids, self.mask_token_id = max_new_tokens, eos_token_ids, mask_token_id
        self.temperature, self.generator, self.emit, self.should_stop = temperature, generator, emit, should_stop
        self.adaptive = branches == "auto" or depth == "auto"
        # Seeded sampling gives the same text every time only if the shape (which decides the random draws) does
        # not depend on timings, earlier generations or the batch: it adapts from the prior with a fixed cost model.
        self.seeded = generator is not None and temperature > 0
        if self.seeded and width_cost == "auto":
            width_cost = SEEDED_WIDTH_COST
        if temperature > 0 and lookup not in ("auto", 0):
            raise RefusionError("lookup drafts are verified greedily: with temperature > 0 use lookup=0 or auto (none)")
        self.settings = {"branches": branches, "depth": depth, "max_branches": max_branches, "max_depth": max_depth,
                         "lookup": lookup, "draft_table": draft_table, "width_cost": width_cost,
                         "fallback_masks": fallback_masks}
        self.lookup_most = 0 if temperature > 0 else max_depth if lookup == "auto" else lookup
        self.lookup_adaptive = lookup == "auto"
        self.ngrams = NgramIndex(prompt) if self.lookup_most else None
        self.lookup_gain = LookupGain()
        self.table: DraftTable | None = (getattr(runner.model, "_refusion_draft_table", None)
                                         if draft_table == "auto" and temperature == 0 else None)
        self.table_most, self.table_gain = min(TABLE_DRAFT, max_depth), LookupGain(TABLE_PRIOR_GAIN)
        priced = self.adaptive or self.lookup_most and self.lookup_adaptive or self.table is not None
        self.forward_cost = ForwardCost(runner, width_cost) if priced else None
        self.priced: dict[int, Callable[[int], float]] = {}
        self.shape = Shape(branches, depth, max_branches, max_depth, self.forward_cost if self.adaptive else None,
                           lean=fallback_masks == "auto")
        # What this model's candidates achieved earlier with the same settings is the best prior.
        self.stats_key = (temperature == 0, *sorted((key, str(value)) for key, value in self.settings.items()))
        if self.adaptive and not self.seeded:
            self.shape.restore(getattr(runner.model, "_refusion_lossless_stats", {}).get(self.stats_key))
        self.model = runner.model
        self.pending, self.position = list(prompt), 0  # committed, KV not cached yet; the first one's position
        self.candidates = NONE
        self.text: list[int] = []
        self.steps = self.offered = self.accepted = self.forwards = 0
        self.lookup_offered = self.lookup_accepted = self.table_offered = self.table_accepted = 0
        self.done = False

    def feed(self, rows: int) -> Feed:
        cost = self._cost_in_batch(1 if self.seeded else rows) if self.forward_cost is not None else None
        if self.adaptive:
            self.shape.cost = cost
        remaining = self.max_new_tokens - len(self.text)
        # A chain of d and its masks reach T+2d+1: fed only as far as the token budget reaches.
        reach = (remaining - 1) // 2
        # Seeded rows explore whatever the batch: their trees (and so their draws) must not depend on it.
        wanted_b, wanted_d, lean = (self.shape.choose(reach, explore=rows == 1 or self.seeded) if reach >= 1
                                    else (0, 1, False))
        candidates = self.candidates
        b = min(wanted_b, len(candidates.first))  # what this forward can offer
        d = min(wanted_d, 1 + len(candidates.chain))
        self.wanted_b, self.wanted_d = wanted_b, wanted_d
        self.feed_masks = wanted_b > 0  # masks give the next forward its candidates
        g = wanted_d + 1  # masks per group: a placeholder where the AR token goes, then the next chain
        forward = Forward(self.pending, self.position + len(self.pending) - 1, self.mask_token_id)
        lean = lean and b > 0  # without candidates the root masks are what drafts the next forward
        if self.feed_masks and not lean:
            forward.root_group(g)
        chains = [[candidates.first[0]] + candidates.chain[: d - 1]] if b else []
        chains += [[token] for token in candidates.first[1:b]]
        for chain in chains:
            forward.chain(chain, g if self.feed_masks else 0, inner=not lean)
        self.spare = None
        if rows == 1:
            self.lookups = self._lookup_drafts(remaining, b, d, forward.offset, cost)
        else:  # the batch decides which drafts pay (`spare`, `fill`); a fixed lookup length is always fed
            sources = self._draft_sources(remaining)
            self.lookups = [draft for draft in sources if not draft.adaptive]
            spare = [draft for i, draft in enumerate(sources) if draft.adaptive and not _held(draft, sources[:i])]
            self.spare = self._spare(spare, b, d, cost) if spare else None  # adaptive drafts are priced: cost is set
        for draft in self.lookups:
            forward.chain(draft.tokens, 0)  # no masks after it: where it wins, the next forward drafts from root masks
        self.forward, self.chains, self.depth, self.lean = forward, chains, d if b else 0, lean
        return self._feed()

    def _feed(self) -> Feed:
        forward = self.forward
        return Feed(forward.ids(), forward.positions(), forward.visibility() if len(forward.segments) > 1 else None,
                    forward.read)

    def _draft_sources(self, remaining: int) -> list["LookupDraft"]:
        """Drafts that cost no model work: from the text itself, then from the draft table."""
        if remaining < 2:
            return []
        drafts = []
        if self.ngrams is not None:
            match, tokens = self.ngrams.draft(min(self.lookup_most, remaining - 1))
            drafts.append(LookupDraft("lookup", tokens, match, self.lookup_gain, self.lookup_adaptive))
        if self.table is not None:
            tail = self.text if len(self.text) >= self.table.longest else self.prompt + self.text  # draft() reads its end
            match, tokens = self.table.draft(tail, min(self.table_most, remaining - 1))
            drafts.append(LookupDraft("table", tokens, match, self.table_gain, True))
        return [draft for draft in drafts if draft.tokens]

    def _lookup_drafts(self, remaining: int, b: int, d: int, width: int, cost) -> list["LookupDraft"]:
        """The drafts this forward verifies beside the mask chains, each where it pays on top of what is already
        fed (alone: in a batch the batch decides, through `spare` and `fill`)."""
        drafts, expected = [], self.shape.expected(b, d)
        # Priced against what a step with one pending token gives: the first forward feeds the whole prompt, which
        # would make any draft look cheap beside it, yet it costs what it costs in any step.
        prompt_rest = len(self.pending) - 1
        for draft in self._draft_sources(remaining):
            if _held(draft, drafts):
                continue
            if draft.adaptive and not draft.gain.pays(draft.match, len(draft.tokens), expected, width, cost,
                                                      rate=expected / cost(width - prompt_rest)):
                continue
            drafts.append(draft)
            expected, width = expected + draft.gain.mean(draft.match), width + len(draft.tokens)
        return drafts

    def _spare(self, drafts: list["LookupDraft"], b: int, d: int, cost) -> Spare | None:
        """In a batch: what these drafts could add, best first; `fill` adds them in that order. A draft's tokens are
        taken to be accepted one after another with a constant chance q, q / (1 - q) being what drafts of its source
        and match added on average: its i-th token adds q^i."""
        gains = []
        for j, draft in enumerate(drafts):
            mean = max(draft.gain.mean(draft.match), 0.0)
            chance = mean / (1 + mean)
            gains += [(chance ** (i + 1), j) for i in range(len(draft.tokens))]
        gains.sort(key=lambda gain: -gain[0])  # stable, and decreasing along each draft: every prefix keeps order
        self.spare_drafts, self.spare_order = drafts, [j for _, j in gains]
        return Spare(self.shape.expected(b, d), [gain for gain, _ in gains], cost)

    def fill(self, tokens: int) -> Feed:
        """The feed grown by the first `tokens` of the spare drafts' tokens (`spare`)."""
        counts = collections.Counter(self.spare_order[:tokens])
        for j in sorted(counts):
            draft = self.spare_drafts[j]
            draft = replace(draft, tokens=draft.tokens[:counts[j]])
            self.forward.chain(draft.tokens, 0)
            self.lookups.append(draft)
        return self._feed()

    def take(self, logits: torch.Tensor) -> list[int]:
        forward, chains, candidates = self.forward, self.chains, self.candidates
        rows = dict(zip(forward.read_keys, logits))
        drafts = [draft.tokens for draft in self.lookups]
        if self.temperature == 0:
            # No masks follow a lookup chain: committing through one leaves the next forward without mask-drafted
            # candidates. So a mask chain's accepted tokens count that much more, what those add on average.
            offered_masks = self.lookups and self.feed_masks  # without lookup chains every chain carries them
            carried = self.shape.expected(self.wanted_b, self.wanted_d) - 1 if offered_masks else 0.0
            token_after, path, rank, agreed = _walk_greedy(rows, chains + drafts, len(chains), carried, self.lean)
            mask_rank = next((j for j in range(len(chains)) if agreed[j]), None)  # their first tokens differ
            mask_agreed = agreed[mask_rank] if mask_rank is not None else 0
            for i, draft in enumerate(self.lookups):
                draft.gain.update(draft.match, max(0.0, agreed[len(chains) + i] - mask_agreed - carried))
                accepted = len(path) if rank == len(chains) + i else 0
                if draft.source == "table":
                    self.table_offered += len(draft.tokens)
                    self.table_accepted += accepted
                else:
                    self.lookup_offered += len(draft.tokens)
                    self.lookup_accepted += accepted
        else:
            token_after, path, rank = _walk(rows, chains, candidates.first_q, candidates.chain_q, self.temperature,
                                            self.generator)
            mask_rank, mask_agreed = rank, len(path)
        if self.adaptive:
            self.shape.update(len(chains), self.depth, mask_rank, max(mask_agreed - 1, 0))
        self.offered += sum(len(chain) for chain in chains + drafts)
        self.accepted += len(path)
        self.steps += 1
        # Exact KV: the pending tokens and the accepted chain tokens.
        kept = list(range(len(self.pending))) + [forward.index[("chain", rank, i)] for i in path]

        new = (chains + drafts)[rank][: len(path)] + [token_after] if path else [token_after]
        eos_at = next((i for i, t in enumerate(new) if t in self.eos_token_ids), None)
        new = new[: eos_at + 1] if eos_at is not None else new
        new = new[: self.max_new_tokens - len(self.text)]
        self.emit({"event": "commit", "step": self.steps, "positions": list(range(len(self.text), len(self.text) + len(new))),
                   "tokens": new, "phase": "lossless", "branches": len(chains), "depth": self.depth,
                   "lookup": sum(len(draft) for draft in drafts), "accepted": len(path)})
        self.text += new
        if self.ngrams is not None:
            self.ngrams.extend(new)
        self.position += len(kept)
        self.pending = [new[-1]]
        self.done = eos_at is not None or len(self.text) >= self.max_new_tokens or self.should_stop()
        if self.done:
            if self.adaptive and not self.seeded:  # a seeded run started from the prior: it must not overwrite
                _remember(self.model, self.stats_key, self.shape)
        elif self.feed_masks and (node := self._last_node(path, rank)) in forward.group_size:  # lookup chains have none
            self.candidates = _next_candidates(rows, node, forward.group_size[node], self.wanted_b, self.temperature,
                                               self.generator)
        else:
            self.candidates = NONE
        return kept

    @staticmethod
    def _last_node(path: list[int], rank: int | None) -> tuple:
        """The node whose masks hold the next forward's candidates: the last accepted token, else the root."""
        return ("chain", rank, len(path) - 1) if path else ("root",)

    def _cost_in_batch(self, rows: int) -> Callable[[int], float]:
        """A tree of w tokens per row, priced against one token per row: what it adds to the whole forward.

    So a large batch spends its width on rows, not on drafts (on this CPU a forward's cost grows with
    every token it feeds; on a GPU far more slowly). Remembered per batch size: `choose` prices every
    shape at every step."""
        if rows not in self.priced:
            self.priced[rows] = functools.lru_cache(maxsize=None)(self.forward_cost.rows(rows))
        return self.priced[rows]

    def output(self, cache=None) -> DecodeOutput:
        text = self.text
        return DecodeOutput(
            tokens=text,
            forward_passes=self.forwards,
            cache=cache,
            decode_order_tokens=self.prompt + text[:-1] if text else list(self.prompt),
            decode_order_positions=list(range(len(self.prompt) + max(len(text) - 1, 0))),
            settings=dict(self.settings),
            counters={"drafts_offered": self.offered, "drafts_accepted": self.accepted,
                      "lookup_offered": self.lookup_offered, "lookup_accepted": self.lookup_accepted,
                      "table_offered": self.table_offered, "table_accepted": self.table_accepted},
        )


@dataclass
class LookupDraft:
    """A draft copied from the text (`source` "lookup") or the draft table ("table"), with the length of the match it
    came from and the gain record that prices drafts from that source."""

    source: str
    tokens: list[int]
    match: int
    gain: LookupGain
    adaptive: bool = True
    """Offered where it pays (False: the user fixed the lookup length)."""


def _held(draft: LookupDraft, others: list[LookupDraft]) -> bool:
    """Is the draft the start of one of the others (feeding it would add nothing)?"""
    return any(other.tokens[:len(draft.tokens)] == draft.tokens for other in others)


class Forward:
    """One lossless forward's segments: pending tokens, root masks, candidate chains and their masks."""

    def __init__(self, pending: list[int], last: int, mask_id: int):
        self.mask_id, self.last = mask_id, last
        first = last - len(pending) + 1
        self.segments = [(list(pending), list(range(first, last + 1)), [])]  # (ids, positions, sees)
        self.index: dict[tuple, int] = {}  # ("chain", j, i) -> offset of that chain token
        self.read: list[int] = [len(pending) - 1]  # offsets whose logits are read
        self.read_keys: list[tuple] = [("ar", "root")]
        self.offset = len(pending)
        self.chains = 0
        self.group_size: dict[tuple, int] = {}  # masks after each node (root or chain token)

    def _add(self, ids, positions, sees) -> int:
        start = self.offset
        self.segments.append((ids, positions, sees))
        self.offset += len(ids)
        return start

    def _group(self, after: tuple, first_position: int, size: int, sees) -> None:
        self.group_size[after] = size
        start = self._add([self.mask_id] * size, list(range(first_position, first_position + size)), sees)
        for i in range(1, size):  # the first mask sits where the AR token goes: not read
            self.read.append(start + i)
            self.read_keys.append(("mask", after, i))

    def root_group(self, size: int) -> None:
        self._group(("root",), self.last + 1, size, [(0, len(self.segments[0][0]))])

    def chain(self, tokens: list[int], group: int, inner: bool = True) -> None:
        """The chain's tokens, and `group` masks after its last (with `inner`, a few after each of the others too)."""
        j = self.chains
        self.chains += 1
        pending = (0, len(self.segments[0][0]))
        segment = len(self.segments)
        start = self._add(list(tokens), list(range(self.last + 1, self.last + 1 + len(tokens))), [pending])
        for i in range(len(tokens)):
            self.index[("chain", j, i)] = start + i
            self.read.append(start + i)
            self.read_keys.append(("ar", ("chain", j, i)))
        if group:
            for i in range(0 if inner else len(tokens) - 1, len(tokens)):
                size = group if i == len(tokens) - 1 else min(INNER_GROUP, group)
                self._group(("chain", j, i), self.last + i + 2, size, [pending, (segment, i + 1)])

    def ids(self) -> list[int]:
        return [t for ids, _, _ in self.segments for t in ids]

    def positions(self) -> list[int]:
        return [p for _, positions, _ in self.segments for p in positions]

    def visibility(self) -> torch.Tensor:
        return segment_visibility([(len(ids), sees) for ids, _, sees in self.segments])


def _walk_greedy(rows, chains, masked: int = 0, carried: float = 0.0, lean: bool = False):
    """Follow the AR argmax down every chain: (the AR token after the longest agreeing chain, that chain's accepted
    path, its index or None, and how many tokens of each chain agreed). On a tie the earlier chain wins.

    The root masks and the first `masked` chains have masks after them, which draft the next forward: committing
    through them (or through no chain) is worth `carried` more tokens than committing through a chain without. A
    lean tree has masks only after each masked chain's last token: only a chain accepted whole carries them.
    Any agreeing chain gives `ar`'s text: the choice decides only how much of it this forward and the next commit."""
    keys = [("ar", "root")] + [("ar", ("chain", j, i)) for j, chain in enumerate(chains) for i in range(len(chain))]
    picks = dict(zip(keys, greedy(torch.stack([rows[key] for key in keys])).tolist()))  # one host sync
    token = after = picks[("ar", "root")]
    agreed, best, best_worth = [], None, 0.0 if lean else carried
    for j, chain in enumerate(chains):
        length, following = 0, token
        while length < len(chain) and chain[length] == following:
            following = picks[("ar", ("chain", j, length))]
            length += 1
        agreed.append(length)
        worth = length + (carried if j < masked and (not lean or length == len(chain)) else 0.0)
        if length and worth > best_worth:
            best, best_worth, after = j, worth, following
    return after, list(range(agreed[best])) if best is not None else [], best, agreed


def _walk(rows, chains, first_q, chain_q, temperature, generator):
    """Sampling: follow the AR head down the candidates with the speculative-sampling rule: (the AR token after the
    accepted path, the accepted path, its chain)."""
    ar_root = rows[("ar", "root")]
    p = tempered(ar_root, temperature)
    token, rank = verify_candidates(p, [chain[0] for chain in chains], first_q, generator)
    if rank is None:
        return token, [], None
    path = [0]
    while True:
        p = tempered(rows[("ar", ("chain", rank, path[-1]))], temperature)
        nxt = path[-1] + 1
        if rank == 0 and nxt < len(chains[0]):
            after, taken = verify_candidates(p, [chains[0][nxt]], chain_q[nxt - 1], generator)
            if taken is not None:
                path.append(nxt)
                continue
            return after, path, rank
        return draw(p, 1, generator)[0], path, rank


def _next_candidates(rows, node, group, count, temperature, generator) -> Candidates:
    """Candidates for the next forward from the masks after the last accepted token (or the root masks)."""
    masks = [rows[("mask", node, i)] for i in range(1, group)]  # T'+1 (alternatives), then the chain
    if temperature == 0:
        first = masks[0].topk(count).indices.tolist()
        chain = greedy(torch.stack(masks[1:])).tolist() if len(masks) > 1 else []
        return Candidates(first, chain)
    qs = torch.stack([tempered(m, temperature) for m in masks])
    first = draw(qs[0], count, generator)
    chain = [draw(q, 1, generator)[0] for q in qs[1:]]
    return Candidates(first, chain, qs[0], qs[1:])


SEEDED_WIDTH_COST = 0.02
"""Cost of one more fed token, relative to a one-token forward, assumed by seeded sampling (no timing)."""


def prepare(runner: ModelRunner, options: dict, rows: int = 1) -> None:
    """Measure the model's forward cost by width now (once per model and batch size), outside the decode's timing."""
    if options["width_cost"] == "auto" and "auto" in (options["branches"], options["depth"], options["lookup"],
                                                      options["draft_table"]):
        cost = ForwardCost(runner, "auto")
        for bucket in range(1, rows + 1):  # rows leave as they finish: every smaller batch is priced too
            cost.rows(bucket, measure=True)


def forget(model) -> None:
    """Drop the acceptance counts earlier generations left on the model: the next ones start from the prior."""
    model.__dict__.pop("_refusion_lossless_stats", None)


def _remember(model, key: tuple, shape: Shape) -> None:
    """Keep the acceptance counts on the model for the next generation with the same settings (greedy or not)."""
    try:
        known = getattr(model, "_refusion_lossless_stats", {})
        model._refusion_lossless_stats = {**known, key: {name: (list(h), list(t)) for name, (h, t) in shape.state().items()}}
    except AttributeError:
        pass  # a model object that takes no attributes: each generation starts from the prior


ROW = LosslessRow
