"""Sampling transforms, seeded sampling and Saguaro reweighting (ssdecode.sampling)."""
import math

import pytest
import torch

from exactness import chi_square_check
from ssdecode.params import SamplingParams
from ssdecode.sampling import (
    SamplingTensors,
    draw_uniforms,
    make_generator,
    probs_from_logits,
    saguaro_reweight,
    sample,
    sample_from_uniform,
)


def st_of(*params: SamplingParams) -> SamplingTensors:
    return SamplingTensors.from_params(list(params))


def probs_of(values, **kw) -> torch.Tensor:
    """Transformed probs of one row whose temperature-1 distribution is ``values``."""
    logits = torch.tensor([values]).log()
    return probs_from_logits(logits, st_of(SamplingParams(temperature=1.0, **kw)))[0]


def test_temperature_scales_logits():
    logits = torch.randn(3, 10, generator=torch.Generator().manual_seed(0))
    for t in (0.3, 1.0, 2.5):
        got = probs_from_logits(logits, st_of(*[SamplingParams(temperature=t)] * 3))
        torch.testing.assert_close(got, (logits / t).softmax(-1))


def test_greedy_is_one_hot_lowest_index_on_ties():
    logits = torch.tensor([[0.0, 3.0, 3.0, 1.0], [5.0, -1.0, 5.0, 5.0]])
    got = probs_from_logits(logits, st_of(SamplingParams(), SamplingParams(top_k=2, top_p=0.5)))
    assert got.tolist() == [[0, 1, 0, 0], [1, 0, 0, 0]]


def test_top_k_keeps_k_best_lower_index_on_ties():
    got = probs_of([0.1, 0.3, 0.2, 0.3, 0.1], top_k=2)
    torch.testing.assert_close(got, torch.tensor([0.0, 0.5, 0.0, 0.5, 0.0]))
    got = probs_of([0.2, 0.2, 0.2, 0.2, 0.2], top_k=3)
    torch.testing.assert_close(got, torch.tensor([1 / 3, 1 / 3, 1 / 3, 0.0, 0.0]))
    assert probs_of([0.1, 0.2, 0.7], top_k=10).gt(0).all()  # k >= V keeps everything


@pytest.mark.parametrize("top_p, kept", [(0.75, 2), (0.85, 3), (0.1, 1), (0.45, 1), (0.55, 2)])
def test_top_p_keeps_smallest_prefix_reaching_mass(top_p, kept):
    got = probs_of([0.3, 0.1, 0.5, 0.1], top_p=top_p)  # descending order: 2, 0, (1, 3 tied)
    order = [2, 0, 1, 3]
    assert got[order].gt(0).tolist() == [True] * kept + [False] * (4 - kept)
    torch.testing.assert_close(got.sum(), torch.tensor(1.0))


def test_top_p_one_keeps_negligible_tail():
    got = probs_of([1.0, 1e-30, 1e-20], top_p=1.0, top_k=0)
    assert got.gt(0).all()


def test_top_p_applies_to_top_k_renormalized_distribution():
    # After top-2: [4/7, 3/7]; top_p 0.5 keeps only the first (on the raw distribution 0.4 < 0.5).
    got = probs_of([0.4, 0.3, 0.2, 0.1], top_k=2, top_p=0.5)
    torch.testing.assert_close(got, torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_minus_inf_logits_get_zero_mass():
    logits = torch.tensor([[0.0, float("-inf"), 1.0, float("-inf")]] * 2)
    st = st_of(SamplingParams(temperature=0.7), SamplingParams(temperature=0.7, top_p=0.99))
    got = probs_from_logits(logits, st)
    assert got[:, [1, 3]].eq(0).all() and torch.isfinite(got).all()


def test_mixed_batch_equals_per_row():
    params = [SamplingParams(), SamplingParams(temperature=0.5),
              SamplingParams(temperature=1.3, top_k=4), SamplingParams(temperature=1.0, top_p=0.6),
              SamplingParams(temperature=0.8, top_k=7, top_p=0.9), SamplingParams(top_k=3)]
    logits = torch.randn(len(params), 50, generator=torch.Generator().manual_seed(1))
    batched = probs_from_logits(logits, SamplingTensors.from_params(params))
    for i, p in enumerate(params):
        assert torch.equal(batched[i], probs_from_logits(logits[i:i + 1], st_of(p))[0])
    sub = SamplingTensors.from_params(params).rows([2, 3])
    assert torch.equal(batched[2:4], probs_from_logits(logits[2:4], sub))


def test_middle_dims_share_the_row_parameters():
    params = [SamplingParams(temperature=0.7, top_k=5), SamplingParams(),
              SamplingParams(temperature=1.2, top_p=0.8)]
    logits = torch.randn(3, 4, 20, generator=torch.Generator().manual_seed(6))
    st = SamplingTensors.from_params(params)
    flat = probs_from_logits(logits.view(12, 20), st.repeat_interleave(4))
    assert torch.equal(probs_from_logits(logits, st), flat.view(3, 4, 20))


def test_flags_and_row_expansion():
    st = SamplingTensors.from_params([SamplingParams(), SamplingParams(temperature=1.0, top_p=0.9)])
    assert (st.any_greedy, st.all_greedy, st.any_filtered) == (True, False, True)
    sub = st.rows([0])
    assert (sub.all_greedy, sub.any_filtered, len(sub)) == (True, False, 1)
    rep = st.repeat_interleave(3)
    assert rep.greedy == (True,) * 3 + (False,) * 3
    assert rep.top_p.tolist() == pytest.approx([1] * 3 + [0.9] * 3)
    # A greedy row with top-k/top-p set does not count as filtered (its probs are one-hot anyway).
    assert not st_of(SamplingParams(top_k=5)).any_filtered


def test_sample_from_uniform_inverts_cdf_and_skips_zero_mass():
    probs = torch.tensor([[0.0, 0.25, 0.0, 0.75, 0.0]] * 5)
    # u = 1 stands for u * total rounding up to the total: the last positive token, not index V.
    u = torch.tensor([0.0, 0.2499, 0.25, 1 - 2 ** -53, 1.0], dtype=torch.float64)
    assert sample_from_uniform(probs, u).tolist() == [1, 1, 3, 3, 3]
    unnormalized = torch.tensor([[0.0, 2.0, 6.0]])
    assert sample_from_uniform(unnormalized, torch.tensor([0.3])).tolist() == [2]


def test_sample_matches_distribution():
    probs = probs_from_logits(torch.randn(1, 8, generator=torch.Generator().manual_seed(2)),
                              st_of(SamplingParams(temperature=0.9, top_k=6)))
    n = 20000
    tokens = sample(probs.expand(n, -1), torch.Generator().manual_seed(3))
    exact = {(v,): float(q) for v, q in enumerate(probs[0])}
    chi_square_check([(t,) for t in tokens.tolist()], exact)


def test_sample_reproducible_per_row_and_greedy_consumes_nothing():
    probs = torch.rand(4, 30, generator=torch.Generator().manual_seed(4))
    params = [SamplingParams(temperature=1.0, seed=s) for s in (7, 8, 9)]
    first = sample(probs[:3], [make_generator(p) for p in params])
    assert torch.equal(first, sample(probs[:3], [make_generator(p) for p in params]))
    # Row 1 alone, and row 1 next to a greedy row, draw the same token: rows never share randomness.
    assert sample(probs[1:2], [make_generator(params[1])]).item() == first[1].item()
    both = sample(probs[[3, 1]], [make_generator(SamplingParams()), make_generator(params[1])])
    assert both.tolist() == [probs[3].argmax().item(), first[1].item()]
    assert make_generator(SamplingParams(seed=5)) is None  # greedy requests need no generator


def test_draw_uniforms_rejects_missing_generator_on_sampling_row():
    with pytest.raises(ValueError, match="row 1"):
        draw_uniforms([None, None], 2, 1, "cpu", greedy=[True, False])


def test_saguaro_reweight_definition():
    q = torch.tensor([[0.1, 0.4, 0.05, 0.25, 0.2], [0.1, 0.4, 0.05, 0.25, 0.2]])
    out = saguaro_reweight(q, 0.3, torch.tensor([2, 0]))
    top = [1, 3, 4]  # top-(F+1) = top-3 for F = 2
    w = torch.tensor([1.0, 0.3, 1.0, 0.3, 0.3]) * q[0]
    torch.testing.assert_close(out[0], w / w.sum())
    assert torch.equal(out[1], q[1])  # F = 0: nothing cached, nothing reweighted
    assert math.isclose(out[0, top].sum(), 0.3 * 0.85 / (0.3 * 0.85 + 0.15), rel_tol=1e-6)
    torch.testing.assert_close(out.sum(-1), torch.ones(2))
    torch.testing.assert_close(saguaro_reweight(q, 0.3, [2, 0]), out)
    assert torch.equal(saguaro_reweight(q[:1], 0.3, 2), out[:1])


def test_saguaro_reweight_identity_cases():
    q = torch.rand(3, 7, generator=torch.Generator().manual_seed(5)).softmax(-1)
    assert saguaro_reweight(q, 1.0, 3) is q
    one_hot = torch.eye(7)[[2, 5]]
    assert torch.equal(saguaro_reweight(one_hot, 0.2, 3), one_hot)
    torch.testing.assert_close(saguaro_reweight(q, 0.5, 6), q)  # all scaled: same distribution
    with pytest.raises(ValueError):
        saguaro_reweight(q, 0.0, 3)
