"""Fan-out: how many forks F_j the draft prepares at each position j = 0..K (ssd-algorithm.md s. 4).

Outcome (k, t) of a round stops at position k with probability P(k) = (1 - a) a^k (k < K) and
P(K) = a^K. If a position with F forks misses with probability F^-r, the expected hit rate
sum_k P(k) (1 - F_k^-r) under sum_k F_k = B is maximized by F_k proportional to P(k)^(1/(1+r))
(geometric allocation). ``FanoutPolicy`` keeps running estimates of a and of the miss rate by
fan-out value (to fit r) and recomputes the allocation between rounds; it is cheap (K+1 floats).

Vocabulary: F_j forks at position j; for j < K a fork can't be s_{j+1} (the speculated token), so
at most V-1 forks exist there and V at j = K.
"""
from __future__ import annotations

import math
from collections import defaultdict

from ssdecode.config.ssd import SSDConfig
from ssdecode.plan.theory import geometric_fanout


def position_caps(k: int, vocab: int, cap: int | None = None) -> list[int]:
    """Most forks per position: V-1 where the speculated token is excluded, V at j = K."""
    caps = [vocab - 1] * k + [vocab]
    return caps if cap is None else [min(c, cap) for c in caps]


def fit_power(miss_by_fanout: dict[int, tuple[int, int]], min_count: int = 8) -> float | None:
    """r from least squares of log(miss rate) on log(F) over fan-out values seen >= min_count
    times (slope = -r; intercept free when two or more values, through the origin otherwise)."""
    pts = [(math.log(f), math.log(min(max(miss / n, 0.5 / n), 1.0 - 0.5 / n)))
           for f, (miss, n) in miss_by_fanout.items() if f >= 1 and n >= min_count]
    if not pts:
        return None
    if len({x for x, _ in pts}) >= 2:
        mx = sum(x for x, _ in pts) / len(pts)
        my = sum(y for _, y in pts) / len(pts)
        sxx = sum((x - mx) ** 2 for x, _ in pts)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
    else:
        sxx = sum(x * x for x, _ in pts)
        if sxx == 0:
            return None
        slope = sum(x * y for x, y in pts) / sxx
    return min(max(-slope, 0.05), 10.0)


class FanoutPolicy:
    """The current allocation F_0..F_K plus the online statistics that refine it."""

    PRIOR_TRIALS = 20.0  # pseudo-observations behind the configured acceptance prior

    def __init__(self, config: SSDConfig, vocab: int):
        self.config, self.k = config, config.k
        self.caps = position_caps(config.k, vocab, config.fanout_cap)
        self.accepted = 0  # draft tokens accepted
        self.rejections = 0  # rounds that stopped before their last draft token
        self.miss_by_fanout: dict[int, list[int]] = defaultdict(lambda: [0, 0])  # F -> [misses, rounds]
        self.fanout = self._allocate()

    @property
    def acceptance(self) -> float:
        prior = self.config.acceptance * self.PRIOR_TRIALS
        a = (self.accepted + prior) / (self.accepted + self.rejections + self.PRIOR_TRIALS)
        return min(max(a, 1e-3), 1 - 1e-3)

    @property
    def power(self) -> float:
        fitted = fit_power({f: (m, n) for f, (m, n) in self.miss_by_fanout.items()})
        return self.config.power if fitted is None else fitted

    def record_outcome(self, accepted: int, num_draft: int) -> None:
        """A verified round: ``accepted`` of ``num_draft`` draft tokens (geometric MLE of a)."""
        self.accepted += accepted
        self.rejections += accepted < num_draft

    def record_fork(self, fanout: int, hit: bool) -> None:
        """The outcome landed at a position with ``fanout`` forks; was it among them?"""
        cell = self.miss_by_fanout[fanout]
        cell[0] += not hit
        cell[1] += 1

    def update(self) -> list[int]:
        """Recompute the allocation between rounds (geometric with adapt only)."""
        if self.config.fanout_mode == "geometric" and self.config.adapt:
            self.fanout = self._allocate()
        return self.fanout

    def _allocate(self) -> list[int]:
        c = self.config
        if c.fanout_mode == "uniform":
            return [min(c.fanout_uniform, cap) for cap in self.caps]
        if c.fanout_mode == "list":
            return [min(f, cap) for f, cap in zip(c.fanout_list, self.caps)]
        return geometric_fanout(c.total_budget, self.acceptance, self.power, self.k, self.caps)

    def stats(self) -> dict:
        return {
            "fanout": list(self.fanout),
            "acceptance_estimate": round(self.acceptance, 4),
            "power_estimate": round(self.power, 4),
            "miss_rate_by_fanout": {f: round(m / n, 4) for f, (m, n) in sorted(self.miss_by_fanout.items()) if n},
            "rounds_by_fanout": {f: n for f, (_, n) in sorted(self.miss_by_fanout.items())},
        }
