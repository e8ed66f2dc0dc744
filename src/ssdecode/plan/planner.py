"""Predict AR / SD / SSD throughput for a latency profile from the theory (plan/theory.py).

A profile gives forward latencies: target at 1 and at K+1 query tokens, draft at 1 query token
and at the tree width B. Everything is converted to units of one verification forward, as the
formulas expect, and back to speedups over AR. SSD assumes the draft has its own hardware (the
paper's setting); on shared hardware the draft's and target's forwards slow each other down,
which the profile must then include.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from ssdecode.plan import theory
from ssdecode.plan.calibrate import Calibration


@dataclass(frozen=True)
class Profile:
    name: str
    target_1: float  # seconds: one target forward of 1 token (an AR step)
    target_verify: float  # seconds: one target forward of K+1 tokens
    draft_1: float  # seconds: one draft forward of 1 token
    draft_wide: float  # seconds: one draft forward of width B (tree step) / K+1 (glue)


# Measured on an H100 with CUDA-graph decoders (shared/docs/design.md): a 7B-shaped target and
# a 0.5B-shaped draft on its own device.
GPU_7B = Profile("gpu-7b-h100", target_1=4.9e-3, target_verify=5.6e-3, draft_1=1.3e-3, draft_wide=1.8e-3)


@dataclass(frozen=True)
class Prediction:
    fanout: list[int]
    hit_rate: float
    t_sd: float
    t_p: float
    speedup_sd: float
    speedup_ssd: float
    ssd_over_sd: float


def predict(profile: Profile, a: float, k: int, budget: int, r: float) -> Prediction:
    tv = profile.target_verify
    per_ar_token = profile.target_1 / tv  # AR: one target_1 per token, in verify units
    e = theory.expected_tokens(a, k)
    t_sd = k * profile.draft_1 / tv
    t_p = (k + 1) * profile.draft_wide / tv  # glue + K tree steps, each a wide draft forward
    fanout = theory.geometric_fanout(budget, a, r, k, caps=[budget] * (k + 1))
    h = theory.hit_rate(fanout, a, r)
    sd = theory.speedup_sd(a, k, t_sd) * per_ar_token
    ssd = theory.speedup_ssd(h, e, e, t_p, t_sd) * per_ar_token
    return Prediction(fanout, round(h, 4), round(t_sd, 4), round(t_p, 4), round(sd, 3),
                      round(ssd, 3), round(ssd / sd, 3))


def prediction_dict(profile: Profile, a: float, k: int, budget: int, r: float) -> dict:
    return {"profile": asdict(profile), "a": a, "k": k, "budget": budget, "r": r,
            **asdict(predict(profile, a, k, budget, r))}


@dataclass(frozen=True)
class Choice:
    """One configuration and its predicted single-sequence decode speed."""
    mode: str  # ar, sd, ssd
    k: int  # draft tokens per round (0 for ar)
    tokens_per_s: float

    @property
    def label(self) -> str:
        return self.mode if self.mode == "ar" else f"{self.mode} K={self.k}"


def sd_round_seconds(cal: Calibration, k: int) -> float:
    """One SD round: K draft decode steps, then a (K+1)-token verification (k = 0: an AR step)."""
    return cal.target(1) if k == 0 else k * cal.draft(1) + cal.target(k + 1)


def rank(cal: Calibration, a: float, r: float = 0.8, budget: int = 16, k_max: int = 8,
         ssd: bool = True) -> list[Choice]:
    """AR, SD for K = 1..k_max and (``ssd``) SSD for K = 1..k_max, fastest first, predicted from
    the calibration for per-token acceptance ``a`` (and miss power law ``r``, SSD's fan-out
    ``budget``). SSD's forwards run beside each other, so both are slowed by the measured
    contention; its tree steps are draft forwards of width ``budget``."""
    out = [Choice("ar", 0, 1 / cal.target(1))]
    out += [Choice("sd", k, theory.expected_tokens(a, k) / sd_round_seconds(cal, k)) for k in range(1, k_max + 1)]
    for k in range(1, k_max + 1) if ssd else ():
        c = cal.contention
        tv, d1, wide = cal.target(k + 1) * c, cal.draft(1) * c, cal.draft(budget) * c
        h = theory.hit_rate(theory.geometric_fanout(budget, a, r, k, caps=[budget] * (k + 1)), a, r)
        e = theory.expected_tokens(a, k)
        out.append(Choice("ssd", k, theory.speedup_ssd(h, e, e, (k + 1) * wide / tv, k * d1 / tv) / tv))
    return sorted(out, key=lambda ch: -ch.tokens_per_s)
