"""Speedup theory of SD and SSD (ssd-algorithm.md sections 1, 4, 6, 7).

Times are in units of one target verification forward. These formulas drive the planner's
predictions and the adaptive backup policy, so they live in exactly one place.
"""
from __future__ import annotations

import math


def outcome_probs(a: float, k: int) -> list[float]:
    """P(outcome stops at j), j = 0..K, for per-token acceptance a: (1-a)a^j, and a^K for j = K."""
    return [(1 - a) * a**j for j in range(k)] + [a**k]


def expected_tokens(a: float, k: int) -> float:
    """E_SD: tokens committed per round = (1 - a^(K+1)) / (1 - a)."""
    return float(k + 1) if a >= 1.0 else (1 - a ** (k + 1)) / (1 - a)


def speedup_sd(a: float, k: int, t_sd: float) -> float:
    """SD over AR: E_SD / (1 + T_SD), T_SD = drafting time / verification time."""
    return expected_tokens(a, k) / (1 + t_sd)


def hit_rate(fanout: list[int], a: float, r: float) -> float:
    """P(hit) when a miss at position j has probability F_j^(-r) (1 if F_j = 0)."""
    return sum(p * (1 - (f ** -r if f > 0 else 1.0)) for p, f in zip(outcome_probs(a, len(fanout) - 1), fanout))


def speedup_ssd(h: float, e_hit: float, e_miss: float, t_p: float, t_b: float) -> float:
    """Theorem 7: [h E_hit + (1-h) E_miss] / [h max(1, T_p) + (1-h)(1 + T_b)]."""
    return (h * e_hit + (1 - h) * e_miss) / (h * max(1.0, t_p) + (1 - h) * (1 + t_b))


def batch_throughput(h: float, b: int, e_hit: float, e_miss: float, t_p: float, t_b: float) -> float:
    """Per-sequence tokens per verification time with batch b: the round waits if any row misses."""
    all_hit = h**b
    return (h * e_hit + (1 - h) * e_miss) / (all_hit * max(1.0, t_p) + (1 - all_hit) * (1 + t_b))


def round_throughput(batch: int, misses: int, e_hit: float, e_miss: float, t_p: float, t_b: float) -> float:
    """Expected tokens per verification-time of a round with ``misses`` of ``batch`` rows missed:
    section 6's formula for one realized round, [(b - m) E_hit + m E_miss] / [max(1, T_p) + T_b]
    (the target waits T_b for the backup; then verification and the next tree overlap)."""
    return ((batch - misses) * e_hit + misses * e_miss) / (max(1.0, t_p) + t_b)


def round_to_budget(weights: list[float], budget: int, caps: list[int]) -> list[int]:
    """Integers >= 0, each <= its cap, summing to min(budget, sum(caps)), proportional to
    ``weights`` (water-filling over the caps, then largest remainders; ties -> lower position)."""
    n = len(weights)
    budget = min(budget, sum(caps))
    real = [0.0] * n
    free = [i for i in range(n) if caps[i] > 0]
    left = float(budget)
    while free and left > 1e-9:  # proportional split; positions that hit their cap are fixed
        total = sum(weights[i] for i in free)
        share = {i: left * (weights[i] / total if total > 0 else 1 / len(free)) for i in free}
        over = [i for i in free if share[i] >= caps[i]]
        if not over:
            for i in free:
                real[i] = share[i]
            break
        for i in over:
            real[i] = float(caps[i])
            left -= caps[i]
            free.remove(i)
    out = [min(int(math.floor(x + 1e-9)), caps[i]) for i, x in enumerate(real)]
    rest = budget - sum(out)
    order = sorted(range(n), key=lambda i: (-(real[i] - out[i]), i))
    for i in order:
        if rest <= 0:
            break
        if out[i] < caps[i]:
            out[i] += 1
            rest -= 1
    return out


def geometric_fanout(budget: int, a: float, r: float, k: int, caps: list[int]) -> list[int]:
    """F_0..F_K proportional to P(k)^(1/(1+r)), rounded to integers summing to the budget."""
    weights = [p ** (1.0 / (1.0 + r)) for p in outcome_probs(a, k)]
    return round_to_budget(weights, budget, caps)


def gated_lengths(u: float, k: int) -> list[float]:
    """Confidence gating at threshold c (decoding/sample_steps.py): P(n = j), j = 1..K, of a round
    proposing n tokens when each draft token independently falls below c with probability u.
    The row stops after its first such token (which is still proposed), so n is geometric,
    truncated at K: P(n = j) = (1-u)^(j-1) u for j < K, and (1-u)^(K-1) for j = K."""
    return [(1 - u) ** (j - 1) * u for j in range(1, k)] + [(1 - u) ** (k - 1)]


def gated_drafted(u: float, k: int) -> float:
    """Expected draft forwards (= proposals) per gated round: D = sum_{j<K} (1-u)^j
    = (1 - (1-u)^K) / u (K when u = 0, the ungated case)."""
    return float(k) if u <= 0.0 else (1 - (1 - u) ** k) / u


def gated_tokens(u: float, a_conf: float, a_unconf: float, k: int) -> float:
    """Expected tokens committed per gated round, a draft token above c being accepted with
    probability a_conf and one below with a_unconf (independently, given the prefix accepted).

    Token i is proposed and accepted iff tokens 1..i-1 were confident and accepted, probability
    g^(i-1) with g = (1-u) a_conf, and token i is accepted: m = (1-u) a_conf + u a_unconf (the
    overall acceptance a). Adding the target's own token,
        E_gated = 1 + m (1 - g^K) / (1 - g).
    With u = 0 this is E_SD(a, K) = (1 - a^(K+1)) / (1 - a)."""
    g, m = (1 - u) * a_conf, (1 - u) * a_conf + u * a_unconf
    return 1 + m * (k if g >= 1.0 else (1 - g**k) / (1 - g))


def unconfident_fraction(drafted_per_round: float, k: int) -> float:
    """The u with gated_drafted(u, K) = ``drafted_per_round``."""
    return invert(lambda u: -gated_drafted(u, k), -min(max(drafted_per_round, 1.0), float(k)))


def invert(f, y: float) -> float:
    """The x in [0, 1] with f(x) = y for f rising on [0, 1] (bisection)."""
    lo, hi = 0.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < y else (lo, mid)
    return (lo + hi) / 2
