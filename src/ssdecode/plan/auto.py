"""``--mode auto``: calibrate (once per machine and pair), predict every mode, start with the
fastest, and let ``AutoStrategy`` adapt K (down to AR) from what the rounds measure."""
from __future__ import annotations

import logging

from ssdecode.decoding.adaptive import PRIOR_A, AutoStrategy, KPolicy
from ssdecode.decoding.base import Strategy
from ssdecode.models.base import CausalLM
from ssdecode.plan.calibrate import K_MAX, load_or_calibrate
from ssdecode.plan.planner import Choice, rank

log = logging.getLogger(__name__)


def explain(choices: list[Choice], measured_at: str, a: float) -> str:
    """One line: the pick, its prediction and the runners-up, and what it was predicted from."""
    best, ar = choices[0], next(c for c in choices if c.mode == "ar")
    others = [c for c in choices[1:] if c.mode != best.mode][:1] + ([ar] if best is not ar else [])
    rest = ", ".join(f"{c.label} {c.tokens_per_s:.1f}" for c in others)
    return (f"{best.label}: predicted {best.tokens_per_s:.1f} tokens/s ({rest}) at acceptance {a} "
            f"from this machine's calibration of {measured_at}")


def build_auto_strategy(target: CausalLM, draft: CausalLM, draft_spec: str | None, k_max: int | None,
                        ssd, min_confidence: float | None, progress: bool = True) -> tuple[Strategy, str]:
    """The strategy ``auto`` starts with, and why. SSD when it is predicted fastest (K fixed);
    otherwise SD whose K adapts per round, AR included."""
    cal = load_or_calibrate(target, draft, progress=progress)
    k_max = k_max or K_MAX
    choices = rank(cal, PRIOR_A, k_max=k_max)
    why = explain(choices, cal.measured_at, PRIOR_A)
    log.info("auto: %s", why)
    if choices[0].mode == "ssd":
        from ssdecode.decoding.ssd.strategy import build_ssd_strategy

        return build_ssd_strategy(target, draft, draft_spec, choices[0].k, ssd), why
    return AutoStrategy(target, draft, KPolicy(cal, k_max), min_confidence, why), why
