"""The exactness harness's own guarantees (exactness.py).

Its reference distribution is written from the definitions of the transforms, independently of
ssdecode.sampling, so that a bug in the engine's transforms fails the statistical tests instead
of moving their reference along. Two independent implementations must then agree, and this is
the one place where a divergence shows as such (an engine-level failure would only say "biased").
And a case whose binned test has fewer than 2 degrees of freedom must fail rather than pass.
"""
from __future__ import annotations

import pytest
import torch

from exactness import distribution_distance, reference_probs
from ssdecode.params import SamplingParams
from ssdecode.sampling import SamplingTensors, probs_from_logits

PARAMS = [SamplingParams(), SamplingParams(temperature=1.0), SamplingParams(temperature=0.6),
          SamplingParams(temperature=1.0, top_k=3), SamplingParams(temperature=1.0, top_p=0.8),
          SamplingParams(temperature=1.4, top_k=5, top_p=0.9), SamplingParams(temperature=0.5, top_p=0.5)]


@pytest.mark.parametrize("params", PARAMS, ids=lambda p: f"t{p.temperature}-k{p.top_k}-p{p.top_p}")
def test_reference_transforms_agree_with_the_engine(params):
    """Random logits, half of them rounded to steps of 0.5 so that ties occur (both break them
    towards the lower token id, at the argmax and at the top-k and top-p boundaries)."""
    logits = 2 * torch.randn(400, 10, generator=torch.Generator().manual_seed(0))
    logits[::2] = (logits[::2] * 2).round() / 2
    engine = probs_from_logits(logits, SamplingTensors.from_params([params] * len(logits))).double()
    ours = torch.tensor([reference_probs(row, params.temperature, params.top_k, params.top_p)
                         for row in logits.double().tolist()], dtype=torch.float64)
    assert torch.equal(engine > 0, ours > 0)
    assert torch.allclose(engine, ours, atol=1e-6)


@pytest.mark.parametrize("exact", [{(1,): 1.0}, {(1,): 0.5, (2,): 0.5}, {(1,): 0.5, (2,): 0.4999, (3,): 1e-4}])
def test_a_case_with_fewer_than_two_degrees_of_freedom_fails(exact):
    """One outcome, two, or a third too rare to fill a bin: nothing or too little to test."""
    with pytest.raises(AssertionError, match="cannot detect anything"):
        distribution_distance([(1,)] * 500 + [(2,)] * 500, exact)


def test_two_degrees_of_freedom_are_enough():
    p_value, tv = distribution_distance([(1,)] * 400 + [(2,)] * 300 + [(3,)] * 300, {(1,): 0.4, (2,): 0.3, (3,): 0.3})
    assert p_value == pytest.approx(1.0) and tv == pytest.approx(0.0)
