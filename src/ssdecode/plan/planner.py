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
    k: int  # draft tokens per round (0 for ar; at most, with confidence gating)
    tokens_per_s: float
    confidence: float | None = None  # sd: the draft confidence threshold (gating), None = none

    @property
    def label(self) -> str:
        gate = "" if self.confidence is None else f" c={self.confidence}"
        return self.mode if self.mode == "ar" else f"{self.mode} K={self.k}{gate}"


@dataclass(frozen=True)
class Gate:
    """Confidence gating at ``threshold``: a draft token the draft gives at least that probability
    is accepted with probability ``a_conf``, one below with ``a_unconf``. Taken as properties of
    the pair at that threshold; the text's overall acceptance a then sets the fraction u below
    it, a = (1-u) a_conf + u a_unconf."""
    threshold: float
    a_conf: float
    a_unconf: float

    def split(self, a: float) -> tuple[float, float, float]:
        """(u, a_conf, a_unconf) for overall acceptance a (u clipped to [0, 1], the rates then
        both a, so that the overall acceptance is always a)."""
        u = (self.a_conf - a) / (self.a_conf - self.a_unconf) if self.a_conf > self.a_unconf else 0.0
        return (u, self.a_conf, self.a_unconf) if 0.0 < u < 1.0 else (min(max(u, 0.0), 1.0), a, a)


# threshold -> (a_conf, a_unconf): the demo pair (int8 draft), teacher-forced on 3 HumanEval and 3
# stdlib prompts x 96 greedy target tokens (scripts/gate_priors.py, docs/lab/benchmarks.md section
# 12; 4, 20 and 51 of 570 tokens below 0.3, 0.5 and 0.7); a prior for any pair.
GATE_PRIORS = {0.3: (0.952, 0.25), 0.5: (0.969, 0.35), 0.7: (0.985, 0.57)}


def gate_prior(threshold: float) -> Gate:
    """The prior Gate at ``threshold``: GATE_PRIORS, linear between its thresholds (the nearest outside)."""
    xs = sorted(GATE_PRIORS)
    t = min(max(threshold, xs[0]), xs[-1])
    lo, hi = max(x for x in xs if x <= t), min(x for x in xs if x >= t)
    w = (t - lo) / (hi - lo) if hi > lo else 0.0
    return Gate(threshold, *((1 - w) * p + w * q for p, q in zip(GATE_PRIORS[lo], GATE_PRIORS[hi])))


def sd_round_seconds(cal: Calibration, k: int, context: float | None = None, u: float = 0.0) -> float:
    """One SD round: K draft decode steps, then a (K+1)-token verification (k = 0: an AR step),
    after ``context`` cached tokens. With gating (u > 0: the fraction of draft tokens below the
    threshold), D(u, K) draft steps and a verification of n+1 tokens, n as theory.gated_lengths."""
    if k == 0:
        return cal.target(1, context)
    verify = sum(p * cal.target(n + 1, context) for n, p in enumerate(theory.gated_lengths(u, k), 1))
    return theory.gated_drafted(u, k) * cal.draft(1, context) + verify


def gated_tokens_per_s(cal: Calibration, a: float, k: int, gate: Gate, context: float | None = None) -> float:
    u, a_conf, a_unconf = gate.split(a)
    return theory.gated_tokens(u, a_conf, a_unconf, k) / sd_round_seconds(cal, k, context, u)


def rank(cal: Calibration, a: float, r: float = 0.8, budget: int = 16, k_max: int = 8,
         ssd: bool = True, gate: Gate | None = None, context: float | None = None) -> list[Choice]:
    """AR, SD for K = 1..k_max, (``gate``) SD gated at its threshold for each K and (``ssd``) SSD
    for K = 1..k_max, fastest first, predicted from the calibration after ``context`` cached
    tokens for per-token acceptance ``a`` (and miss power law ``r``, SSD's fan-out ``budget``).
    SSD's forwards run beside each other, so both are slowed by the measured contention; its
    tree steps are draft forwards of width ``budget``."""
    ks = range(1, k_max + 1)
    out = [Choice("ar", 0, 1 / cal.target(1, context))]
    out += [Choice("sd", k, theory.expected_tokens(a, k) / sd_round_seconds(cal, k, context)) for k in ks]
    out += [Choice("sd", k, gated_tokens_per_s(cal, a, k, gate, context), gate.threshold) for k in ks if gate]
    for k in ks if ssd else ():
        c = cal.contention
        tv, d1, wide = cal.target(k + 1, context) * c, cal.draft(1, context) * c, cal.draft(budget, context) * c
        h = theory.hit_rate(theory.geometric_fanout(budget, a, r, k, caps=[budget] * (k + 1)), a, r)
        e = theory.expected_tokens(a, k)
        out.append(Choice("ssd", k, theory.speedup_ssd(h, e, e, (k + 1) * wide / tv, k * d1 / tv) / tv))
    return sorted(out, key=lambda ch: -ch.tokens_per_s)
