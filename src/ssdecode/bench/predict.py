"""Predicted against measured tokens/s for each of our systems in a bench run (issue 12).

Both are decode rates: the prediction models rounds, not the prompt's prefill, so it is compared
with the run's ``decode_tokens_per_s`` (generated tokens after the first over the time after
prefill), not with the whole request's tokens/s.

The prediction takes the machine's calibration (plan/calibrate.py) for the times, at the run's
mean context (prompt tokens + half the generated ones: forward times are linear in context), and
the run's own rounds for the acceptance: a is fitted so that E_SD(a, K) equals its mean tokens per
round, and with confidence gating u (the fraction of draft tokens below the threshold) so that
the drafted tokens per round D(u, K) equal its mean proposals per round. So a miss says the time
model is wrong (forward times, drafting cost, contention), not the acceptance. AR is predicted
as 1 / target(1); SD as E / (D draft steps + target(n+1) averaged over the proposals n); SSD with
the fitted a and the prior power law (plan/planner.rank); auto as the best configuration at the
fitted a.
"""
from __future__ import annotations

from ssdecode.plan.calibrate import Calibration
from ssdecode.plan.planner import rank, sd_round_seconds
from ssdecode.plan.theory import expected_tokens, invert, unconfident_fraction


def fitted_acceptance(tokens_per_round: float, k: int) -> float:
    """The a with E_SD(a, K) = ``tokens_per_round``."""
    return invert(lambda a: expected_tokens(a, k), min(max(tokens_per_round, 1.0), k + 1.0))


def predicted_tokens_per_s(cal: Calibration, mode: str, k: int, row: dict, gated: bool = False,
                           context: float | None = None) -> float | None:
    """What the calibration predicts for ``mode`` at K = ``k`` (auto: its K limit) given the bench
    ``row``'s tokens (and, ``gated``, proposals) per round, after ``context`` cached tokens."""
    per_round = row.get("mean_accepted_len")
    if mode == "ar" or not per_round:  # auto without a verification ran AR throughout
        return 1 / sd_round_seconds(cal, 0, context) if mode in ("ar", "auto") else None
    if mode == "sd":
        u = unconfident_fraction(row["proposed_per_round"], k) if gated else 0.0
        return min(max(per_round, 1.0), k + 1.0) / sd_round_seconds(cal, k, context, u)
    choices = rank(cal, fitted_acceptance(per_round, k), k_max=k, ssd=True, context=context)
    if mode == "auto":
        return choices[0].tokens_per_s
    return next(c.tokens_per_s for c in choices if c.mode == "ssd" and c.k == k)


def add_predictions(rows: list[dict], configs: dict[str, tuple], context: float | None = None) -> None:
    """Add ``predicted_tokens_per_s``, ``predicted_over_measured`` and the ``predicted_context``
    to our systems' rows; ``configs``: system name -> (the calibration of its pair, mode, K,
    confidence threshold or None)."""
    for row in rows:
        if row["system"] not in configs:
            continue
        cal, mode, k, confidence = configs[row["system"]]
        pred = predicted_tokens_per_s(cal, mode, k, row, confidence is not None, context)
        if pred:
            row["predicted_tokens_per_s"] = round(pred, 3)
            row["predicted_context"] = None if context is None else round(context, 1)
            measured = row.get("decode_tokens_per_s")
            row["predicted_over_measured"] = round(pred / measured, 3) if measured else None
