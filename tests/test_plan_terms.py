"""The planner's confidence-gating and context terms (issue 12): the gating formulas against a
Monte Carlo simulation of gated drafting, and the calibration's line in context."""
from __future__ import annotations

import json

import pytest
import torch

from ssdecode.bench.predict import predicted_tokens_per_s
from ssdecode.plan import calibrate
from ssdecode.plan.calibrate import Calibration, load_or_calibrate
from ssdecode.plan.planner import gate_prior, rank, sd_round_seconds
from ssdecode.plan.theory import expected_tokens, gated_drafted, gated_lengths, gated_tokens, unconfident_fraction
from tiny import tiny_model

CASES = [(0.3, 0.9, 0.4, 4), (0.1, 0.95, 0.6, 8), (0.6, 0.8, 0.2, 3), (0.0, 0.85, 0.5, 5), (1.0, 0.9, 0.5, 4)]


def simulate(u: float, a_conf: float, a_unconf: float, k: int, rounds: int = 200_000) -> tuple:
    """Gated drafting, round by round, as decoding/sample_steps.py and verification do it: each of K
    draft tokens is below the threshold with probability u and accepted with a_unconf (else
    a_conf); the draft proposes up to and including its first unconfident token; the round
    commits the leading accepted proposals plus the target's token. Returns the mean proposals
    and committed tokens per round, each with its standard error."""
    gen = torch.Generator().manual_seed(0)
    low = torch.rand(rounds, k, generator=gen) < u
    accepted = torch.rand(rounds, k, generator=gen) < torch.where(low, a_unconf, a_conf)
    first_low = torch.where(low.any(1), low.float().argmax(1) + 1, torch.full((rounds,), k))
    proposed = torch.arange(1, k + 1)[None, :] <= first_low[:, None]
    committed = 1 + (accepted & proposed).long().cumprod(1).sum(1)
    d, e = first_low.double(), committed.double()
    return d.mean().item(), d.std().item() / rounds**0.5, e.mean().item(), e.std().item() / rounds**0.5


def agrees(drafted, tokens) -> bool:
    for u, ac, au, k in CASES:
        d, d_se, e, e_se = simulate(u, ac, au, k)
        if abs(drafted(u, k) - d) > 4 * d_se + 1e-9 or abs(tokens(u, ac, au, k) - e) > 4 * e_se + 1e-9:
            return False
    return True


def test_gating_formulas_match_a_simulation_of_gated_drafting():
    assert agrees(gated_drafted, gated_tokens)
    for u, _, _, k in CASES:
        assert sum(gated_lengths(u, k)) == pytest.approx(1.0)
        assert sum(n * p for n, p in enumerate(gated_lengths(u, k), 1)) == pytest.approx(gated_drafted(u, k))
        assert unconfident_fraction(gated_drafted(u, k), k) == pytest.approx(u, abs=1e-6)
    assert gated_tokens(0.0, 0.8, 0.3, 5) == pytest.approx(expected_tokens(0.8, 5))


def test_the_simulation_catches_a_planted_bug_in_the_formulas():
    def last_token_as_confident(u, ac, au, k):  # the bug: token i accepted with a_conf, not m
        g = (1 - u) * ac
        return 1 + ac * (1 - g**k) / (1 - g)

    def one_draft_too_many(u, k):  # the bug: the stopping token's step counted twice
        return gated_drafted(u, k) + (u > 0)

    assert not agrees(gated_drafted, last_token_as_confident)
    assert not agrees(one_draft_too_many, gated_tokens)


def fake(long: bool = True) -> Calibration:
    """Target 100 ms + 10 ms per query token after 128 cached tokens, +20% after 384; draft 10 ms/row."""
    target = {n: 0.1 + 0.01 * (n - 1) for n in range(1, 10)}
    draft = {w: 0.01 * w for w in (1, 4, 8, 16)}
    return Calibration("k", target, draft, 1.5, "", {}, {n: target[n] * 1.2 for n in (1, 5, 9)} if long else {},
                       {1: 0.012} if long else {})


def test_forward_times_are_linear_in_context():
    cal = fake()
    assert cal.target(5) == cal.target(5, calibrate.CONTEXT) == pytest.approx(0.14)
    assert cal.target(5, calibrate.LONG_CONTEXT) == pytest.approx(0.14 * 1.2)
    assert cal.target(5, 640) - cal.target(5, 384) == pytest.approx(cal.target(5, 384) - cal.target(5, 128))
    assert cal.target(3, 384) == pytest.approx(0.12 * 1.2)  # slopes interpolated between widths
    assert cal.draft(16, 384) == pytest.approx(0.16 + 16 * 0.002)  # each row attends its own context
    assert fake(long=False).target(5, 1000) == pytest.approx(0.14)  # nothing measured: no term
    slower = rank(cal, 0.84, context=600)
    assert all(a.tokens_per_s < b.tokens_per_s for a, b in zip(slower, rank(cal, 0.84)))


def test_gated_choices_are_ranked_and_predicted():
    cal = fake()
    gated = [c for c in rank(cal, 0.84, gate=gate_prior(0.5)) if c.confidence is not None]
    assert len(gated) == 8 and gated[0].label.endswith("c=0.5")
    u = 0.25
    row = {"mean_accepted_len": 2.5, "proposed_per_round": gated_drafted(u, 4)}
    seconds = gated_drafted(u, 4) * cal.draft(1, 300) + sum(
        p * cal.target(n + 1, 300) for n, p in enumerate(gated_lengths(u, 4), 1))
    assert sd_round_seconds(cal, 4, 300, u) == pytest.approx(seconds)
    assert predicted_tokens_per_s(cal, "sd", 4, row, gated=True, context=300) == pytest.approx(2.5 / seconds, rel=1e-4)
    assert predicted_tokens_per_s(cal, "sd", 4, row) == pytest.approx(2.5 / sd_round_seconds(cal, 4), rel=1e-4)


def test_context_is_calibrated_and_an_old_calibration_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path))
    target, draft = tiny_model(0, vocab=12, context=512), tiny_model(1, vocab=12, context=512)
    key = calibrate.profile_key(target, draft)
    old = {"version": 1, "key": key, "target_s": {"1": 1.0}, "draft_s": {"1": 1.0}, "contention": 1.0}
    calibrate._path(key).parent.mkdir(parents=True)
    calibrate._path(key).write_text(json.dumps(old))
    cal = load_or_calibrate(target, draft)
    assert set(cal.target_long_s) == set(calibrate.LONG_WIDTHS) and set(cal.draft_long_s) == {1}
    assert cal.target(1) != 1.0 and json.loads(calibrate._path(key).read_text())["version"] == calibrate.VERSION
