"""Speedup theory of SD and SSD (ssd-algorithm.md sections 1, 4, 6, 7).

Times are in units of one target verification forward. These formulas drive the planner's
predictions and the adaptive backup policy, so they live in exactly one place.
"""
from __future__ import annotations


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
