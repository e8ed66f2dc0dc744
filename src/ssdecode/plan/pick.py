"""``--mode auto``'s choices: calibrate (once per machine and pair), predict every mode and
start with the fastest (``choose``; decoding/build.py builds it, and ``AutoStrategy`` adapts K
from what the rounds measure); and which draft weights to load (``pick_draft``)."""
from __future__ import annotations

import logging
from types import SimpleNamespace

from ssdecode.config.settings import ACCEPTANCE_PRIOR
from ssdecode.models.base import CausalLM
from ssdecode.models.linear import resolve_format
from ssdecode.models.loader import load_model
from ssdecode.plan.calibrate import Calibration, cached, load_or_calibrate
from ssdecode.plan.planner import Choice, rank

log = logging.getLogger(__name__)
REQUANTIZED = ("q4k", "int4")  # the draft formats auto weighs against the draft's own, first that runs


def explain(choices: list[Choice], measured_at: str, a: float) -> str:
    """One line: the pick, its prediction and the runners-up, and what it was predicted from."""
    best, ar = choices[0], next(c for c in choices if c.mode == "ar")
    others = [c for c in choices if c.mode not in (best.mode, "ar")][:1] + ([ar] if best is not ar else [])
    rest = ", ".join(f"{c.label} {c.tokens_per_s:.1f}" for c in others)
    return (f"{best.label}: predicted {best.tokens_per_s:.1f} tokens/s ({rest}) at acceptance {a} "
            f"from this machine's calibration of {measured_at}")


def choose(target: CausalLM, draft: CausalLM, k_max: int, a: float = ACCEPTANCE_PRIOR,
           progress: bool = True) -> tuple[Calibration, Choice, str]:
    """What ``auto`` starts with: this machine's calibration of the pair, the mode and K
    predicted fastest at the prior acceptance ``a``, and why (one line)."""
    cal = load_or_calibrate(target, draft, progress=progress)
    choices = rank(cal, a, k_max=k_max)
    why = (f"{explain(choices, cal.measured_at, a)}; weights: target "
           f"{getattr(target, 'weight_format', '-')}, draft {getattr(draft, 'weight_format', '-')}")
    log.info("auto: %s", why)
    return cal, choices[0], why


def pick_draft(target: CausalLM, draft: CausalLM, spec: str | None, a: float = ACCEPTANCE_PRIOR,
               progress: bool = True) -> tuple[CausalLM, str]:
    """For auto with the draft's weights left to ``auto`` on a CPU: also weigh the draft's fp32
    conversion in a REQUANTIZED form (the first this machine runs: q4k, Q4_K blocks on the
    interleaved int8 kernel; int4, half int8's bytes at about its acceptance, docs/lab/benchmarks.md
    section 11) and keep the draft whose pair is predicted faster, with its format.

    Why a draft may be re-quantized when the target never is: speculation stays exact whatever
    the draft computes (the verifier uses the distribution the draft sampled from), so its format
    changes only speed. Calibrations are cached, so after the first run only the winner loads."""
    def runs(fmt: str) -> bool:
        try:
            resolve_format(fmt, draft.device, draft.dtype)
        except ValueError:  # not a CPU where the kernel runs
            return False
        return True

    fmt = next((f for f in REQUANTIZED if runs(f)), None)
    if spec is None or fmt is None or getattr(draft, "weight_format", fmt) in REQUANTIZED:
        return draft, "auto"
    requantized = None
    other = cached(target, SimpleNamespace(name=draft.name, weight_format=fmt, dtype=draft.dtype,
                                           device=draft.device))
    if other is None:
        requantized = load_model(spec, device=draft.device, dtype=draft.dtype, weights=fmt)
        other = load_or_calibrate(target, requantized, progress=progress)
    own = load_or_calibrate(target, draft, progress=progress)
    if rank(other, a)[0].tokens_per_s <= rank(own, a)[0].tokens_per_s:
        return draft, "auto"
    log.info("auto: the %s draft is predicted faster than its %s weights", fmt, draft.weight_format)
    return requantized or load_model(spec, device=draft.device, dtype=draft.dtype, weights=fmt), fmt
