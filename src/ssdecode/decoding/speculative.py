"""Speculative decoding (SD): the draft proposes K tokens, the target verifies them in one forward.

Cache invariants between rounds, per sequence:
- target cache: every committed token except the last one (``seq.last_token``), which the next
  verification forward feeds first: [t_prev, s_1..s_K] -> K+1 target distributions.
- draft cache: every committed token except the last ``uncached`` ones (1, or 2 when all K were
  accepted: drafting never fed s_K). ``autoregress`` feeds those first.
After verification with k accepted, both caches roll back to the accepted length.
"""
from __future__ import annotations

import time

import torch

from ssdecode.decoding.autoregressive import prefill_target
from ssdecode.decoding.base import StepOutput, Strategy
from ssdecode.decoding.sample_steps import autoregress, feed_logits
from ssdecode.decoding.sequence import Sequence
from ssdecode.decoding.verify import verify
from ssdecode.models.base import CausalLM
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors


class SDStrategy(Strategy):
    name = "sd"

    def __init__(self, target: CausalLM, draft: CausalLM, k: int, min_confidence: float | None = None,
                 backend: str | None = None):
        """``k``: draft tokens per round (at most, with ``min_confidence``: see sample_steps.py); the
        settings were validated (config/settings.py)."""
        self.target, self.draft, self.k, self.min_confidence = target, draft, k, min_confidence
        self.backend = backend
        self.trunner = self.drunner = None
        self.uncached: dict[int, int] = {}  # slot -> trailing committed tokens the draft cache lacks

    def setup(self, num_slots: int, max_len: int, trunner: ModelRunner | None = None) -> None:
        """``trunner``: a target runner (and its cache) to share (an SSD strategy whose draft
        worker failed hands its sequences over to SD this way), else a new one."""
        self.trunner = trunner or ModelRunner(self.target, num_slots, max_len, self.backend)
        self.drunner = ModelRunner(self.draft, num_slots, min(max_len, self.draft.max_context), self.backend)
        # CUDA graphs at start-up: verification of 1..K tokens (K may vary: auto, gating), AR
        # steps (auto), and the draft's steps (feeding 1, or 2 after a fully accepted round)
        k_max = self.cache_tokens_needed() - 1
        self.trunner.capture(num_slots, list(range(2, k_max + 2)))
        self.trunner.capture(num_slots, [1], last_only=True)
        self.drunner.capture(num_slots, [1, 2], last_only=True)

    def cache_tokens_needed(self) -> int:
        return self.k + 1

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        first = prefill_target(self.trunner, seqs)
        self.adopt(seqs)
        return first

    def adopt(self, seqs: list[Sequence]) -> None:
        """Take over sequences whose target cache holds every committed token but the last: fill
        the draft cache likewise (at prefill, before the first token is committed: the prompt)."""
        prefill_draft(self.drunner, seqs)
        for s in seqs:
            self.uncached[s.slot] = 1

    def step(self, seqs: list[Sequence]) -> StepOutput:
        k, slots = self.k, [s.slot for s in seqs]
        st = SamplingTensors.from_params([s.params for s in seqs], self.target.device)
        gens = [s.generator for s in seqs]
        feed = [(s.prompt_ids + s.output_ids)[-self.uncached[s.slot]:] for s in seqs]
        dstart = [self.drunner.cache.lengths[x] for x in slots]
        t0 = time.perf_counter()
        draft = autoregress(self.drunner, slots, feed, k, st, gens,
                            keep_probs=not all(s.params.greedy for s in seqs),
                            min_confidence=self.min_confidence)
        t1 = time.perf_counter()
        n = draft.num_draft
        num_draft = None if min(n) == draft.tokens.shape[1] else n
        accepted, nxt = verify_proposals(self.trunner, seqs, draft.tokens, draft.probs, st,
                                         num_draft=num_draft)
        t2 = time.perf_counter()
        tokens, steps = draft.tokens.tolist(), draft.tokens.shape[1]
        self.drunner.check()
        for b, s in enumerate(seqs):
            # the draft cache holds feed + s_1..s_{steps-1}; keep the accepted ones
            self.drunner.cache.truncate(s.slot, dstart[b] + len(feed[b]) + min(accepted[b], steps - 1))
            self.uncached[s.slot] = 2 if accepted[b] == steps else 1
        return StepOutput(
            tokens=[tokens[b][: accepted[b]] + [nxt[b]] for b in range(len(seqs))],
            proposed=n, accepted=accepted, time_draft=t1 - t0, time_verify=t2 - t1)


def prefill_draft(draft: ModelRunner, seqs: list[Sequence]) -> None:
    """Fill the draft cache with each sequence's prompt and output but its last token (no
    sampling: the target samples every committed token)."""
    for s in seqs:
        draft.cache.reset(s.slot)
    feed_logits(draft, [s.slot for s in seqs], [s.prompt_ids + s.output_ids[:-1] for s in seqs])


def verify_proposals(target: ModelRunner, seqs: list[Sequence], tokens: torch.Tensor,
                     probs: torch.Tensor | None, st: SamplingTensors, point_mass: torch.Tensor | None = None,
                     num_draft: list[int] | None = None) -> tuple[list[int], list[int]]:
    """One verification round, for SD and SSD alike: ONE target forward over [t_prev, s_1..s_n]
    per row, exact verification (verify.py), target cache rollback to the committed tokens.

    ``num_draft`` [B]: real draft tokens per row (default: all of ``tokens``' width); a shorter
    row is ragged and writes no padding into its cache. Returns (accepted count, next token) per
    row; the target cache then holds the committed tokens except the new last one."""
    slots, cache, device = [s.slot for s in seqs], target.cache, target.device
    start = [cache.lengths[x] for x in slots]
    # built on the device: the draft tokens stay where they are (no host round trip)
    last = torch.tensor([[s.last_token] for s in seqs], dtype=torch.long).to(device)
    ids = torch.cat([last, tokens.to(device)], 1)
    # Padding positions of short rows are clamped into the RoPE table; their outputs are unused.
    positions = (torch.tensor(start)[:, None] + torch.arange(ids.shape[1])[None, :]).clamp(max=target.max_context - 1)
    num_new = None if num_draft is None else [n + 1 for n in num_draft]
    logits = target.forward(ids, positions.to(device), slots, num_new=num_new)
    res = verify(logits, tokens, probs, st, [s.generator for s in seqs], point_mass=point_mass,
                 num_draft=None if num_draft is None else torch.tensor(num_draft).to(device))
    accepted, nxt = res.accepted.tolist(), res.next_token.tolist()
    target.check()
    for b, x in enumerate(slots):
        cache.truncate(x, start[b] + 1 + accepted[b])
    return accepted, nxt
