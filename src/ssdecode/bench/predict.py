"""Predicted against measured tokens/s for each of our systems in a bench run (issue 12).

Both are decode rates: the prediction models rounds, not the prompt's prefill, so it is compared
with the run's ``decode_tokens_per_s`` (generated tokens after the first over the time after
prefill), not with the whole request's tokens/s.

The prediction takes the machine's calibration (plan/calibrate.py) for the times and the run's
own mean tokens per round for the acceptance: a is fitted so that E_SD(a, K) equals it. So a miss
says the time model is wrong (forward times, drafting cost, contention), not the acceptance. AR
is predicted as 1 / target(1); SD as E / (K draft steps + target(K+1)); SSD with the fitted a
and the prior power law (plan/planner.rank); auto as the best configuration at the fitted a.
"""
from __future__ import annotations

from ssdecode.plan.calibrate import Calibration
from ssdecode.plan.planner import rank, sd_round_seconds
from ssdecode.plan.theory import expected_tokens


def fitted_acceptance(tokens_per_round: float, k: int) -> float:
    """The a with E_SD(a, K) = ``tokens_per_round`` (bisection; E rises with a)."""
    lo, hi = 0.0, 1.0
    target = min(max(tokens_per_round, 1.0), k + 1.0)
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if expected_tokens(mid, k) < target else (lo, mid)
    return (lo + hi) / 2


def predicted_tokens_per_s(cal: Calibration, mode: str, k: int, tokens_per_round: float | None) -> float | None:
    """What the calibration predicts for ``mode`` at K = ``k`` (auto: its K limit) given the run's
    tokens per round (None for AR)."""
    if mode == "ar" or not tokens_per_round:  # auto without a verification ran AR throughout
        return 1 / sd_round_seconds(cal, 0) if mode in ("ar", "auto") else None
    a = fitted_acceptance(tokens_per_round, k)
    if mode == "sd":
        return expected_tokens(a, k) / sd_round_seconds(cal, k)
    choices = rank(cal, a, k_max=k, ssd=True)
    if mode == "auto":
        return choices[0].tokens_per_s
    return next(c.tokens_per_s for c in choices if c.mode == "ssd" and c.k == k)


def add_predictions(rows: list[dict], configs: dict[str, tuple[Calibration, str, int]]) -> None:
    """Add ``predicted_tokens_per_s`` and ``predicted_over_measured`` to our systems' rows;
    ``configs``: system name -> (the calibration of its pair, mode, K)."""
    for row in rows:
        if row["system"] not in configs:
            continue
        cal, mode, k = configs[row["system"]]
        pred = predicted_tokens_per_s(cal, mode, k, row.get("mean_accepted_len"))
        if pred:
            row["predicted_tokens_per_s"] = round(pred, 3)
            measured = row.get("decode_tokens_per_s")
            row["predicted_over_measured"] = round(pred / measured, 3) if measured else None
