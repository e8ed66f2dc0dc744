"""``--mode auto``'s strategy: SD whose K is chosen before each round, K = 0 being an AR step.

``KPolicy`` keeps, per sequence, an estimate of the per-token acceptance a (accepted draft tokens
are successes; a round that rejects one is a failure; a prior counts as a few tokens and old rounds
fade), and per K the seconds a round takes (what rounds of that K measured; for a K not run yet,
the calibration's prediction scaled by how far measured rounds were from theirs, since a machine
busier than at calibration slows every K; predictions are at the batch's current mean context).
It picks the K with the most expected tokens per second for the batch.

Why this stays exact: a round's K is decided before the round from acceptance already observed and
from timings, never from the round's own random numbers. Verification is exact for any K fixed in
advance, so every token is still sampled from the target's distribution.

After AR rounds the draft cache lacks the tokens committed meanwhile (``uncached`` grows); the next
SD round feeds them to the draft first, in one forward. While AR wins, every ``PROBE_EVERY``-th
round drafts anyway (when SD could pay at a high acceptance), so a prompt that becomes easy for
the draft is noticed.
"""
from __future__ import annotations

import time
from collections import Counter

from ssdecode.config.settings import ACCEPTANCE_PRIOR
from ssdecode.decoding.autoregressive import ar_step
from ssdecode.decoding.base import StepOutput
from ssdecode.decoding.sequence import Sequence
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.models.base import CausalLM
from ssdecode.plan.calibrate import Calibration
from ssdecode.plan.planner import sd_round_seconds
from ssdecode.plan.theory import expected_tokens

PRIOR_TOKENS = 8.0  # the prior's weight, in draft tokens
FADE = 0.97  # per round: what an old round still counts
TIME_WEIGHT = 0.2  # a measured round's weight in its K's running time
PROBE_EVERY = 16
PROBE_A = 0.95


class KPolicy:
    def __init__(self, cal: Calibration, k_max: int, prior_a: float = ACCEPTANCE_PRIOR):
        self.k_max, self.prior_a, self.cal = k_max, prior_a, cal
        self.context: float | None = None  # the batch's mean cached tokens at the last choice
        self.measured: dict[int, float] = {}  # K -> running seconds of its rounds
        self.scale = 1.0  # running measured / predicted: corrects the Ks not run yet
        self.counts: dict[int, list[float]] = {}  # slot -> [successes, failures]
        self.ar_rounds = 0

    def predicted(self, k: int) -> float:
        return sd_round_seconds(self.cal, k, self.context)

    def seconds(self, k: int) -> float:
        return self.measured.get(k, self.predicted(k) * self.scale)

    def acceptance(self, slot: int) -> float:
        s, f = self.counts.get(slot, (0.0, 0.0))
        return (s + PRIOR_TOKENS * self.prior_a) / (s + f + PRIOR_TOKENS)

    def best(self, rates: list[float]) -> int:
        return max(range(self.k_max + 1),
                   key=lambda k: sum(expected_tokens(a, k) for a in rates) / self.seconds(k))

    def choose(self, slots: list[int], context: float | None = None) -> int:
        self.context = context
        k = self.best([self.acceptance(s) for s in slots])
        self.ar_rounds = self.ar_rounds + 1 if k == 0 else 0
        if k == 0 and self.ar_rounds >= PROBE_EVERY:
            self.ar_rounds = 0
            return self.best([PROBE_A] * len(slots))
        return k

    def record(self, slots: list[int], out: StepOutput, k: int, seconds: float) -> None:
        self.measured[k] = self.seconds(k) + TIME_WEIGHT * (seconds - self.seconds(k))
        self.scale += TIME_WEIGHT * (seconds / self.predicted(k) - self.scale)
        for slot, n, acc in zip(slots, out.proposed, out.accepted):
            c = self.counts.setdefault(slot, [0.0, 0.0])
            c[0] = FADE * c[0] + acc
            c[1] = FADE * c[1] + (acc < n)

    def forget(self, slots: list[int]) -> None:
        for s in slots:
            self.counts.pop(s, None)


class AutoStrategy(SDStrategy):
    name = "auto"

    def __init__(self, target: CausalLM, draft: CausalLM, policy: KPolicy, min_confidence: float | None = None,
                 why: str = "", backend: str | None = None):
        super().__init__(target, draft, policy.k_max, min_confidence, backend)
        self.policy, self.why = policy, why
        self.rounds: Counter[int] = Counter()

    def cache_tokens_needed(self) -> int:
        return self.policy.k_max + 1

    def step(self, seqs: list[Sequence]) -> StepOutput:
        slots = [s.slot for s in seqs]
        k = self.policy.choose(slots, sum(len(s.prompt_ids) + len(s.output_ids) for s in seqs) / len(seqs))
        t0 = time.perf_counter()
        if k == 0:
            out = ar_step(self.trunner, seqs)
            for s in slots:
                self.uncached[s] += 1
        else:
            self.k = k
            out = super().step(seqs)
        self.policy.record(slots, out, k, time.perf_counter() - t0)  # AR rounds: no proposals
        self.rounds[k] += 1
        return out

    def release(self, seqs: list[Sequence]) -> None:
        self.policy.forget([s.slot for s in seqs])

    def stats(self) -> dict:
        return {"chosen": self.why, "rounds_by_k": {k: self.rounds[k] for k in sorted(self.rounds)},
                "round_seconds_by_k": {k: round(self.policy.seconds(k), 4) for k in range(self.policy.k_max + 1)}}
