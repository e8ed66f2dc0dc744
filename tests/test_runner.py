"""The model runner's static backend (fixed shapes by bucket, device-side lengths: what CUDA
graphs capture; runtime/graphs.py) against the eager one, on CPU where it runs uncaptured.

Greedy AR/SD/SSD through static runners must equal eager AR token for token (ragged batches
whose padding rows only write the scratch slot), and sampled SD/SSD through them must follow
the exact target distribution; a planted off-by-one in the static causal mask must fail it.
"""
from __future__ import annotations

import pytest
import torch

from exactness import chi_square_check, exact_target_distribution
from ssd_support import greedy_reference, prompts_for
from ssdecode.engine.llm import LLM
from ssdecode.kv import forward_meta
from ssdecode.params import SamplingParams
from ssdecode.runtime.graphs import BATCH_BUCKETS, TOKEN_BUCKETS, bucket
from ssdecode.runtime.runner import ModelRunner
from tiny import tiny_tokenizer

TOKENS = 12
MODES = [("ar", {}), ("sd", {"k": 3}), ("ssd", {"k": 3, "ssd": {"transport": "thread"}})]


def _generate(target, draft, prompts, mode, params, cuda_graphs, vocab=24, **settings):
    llm = LLM.from_models(tiny_tokenizer(vocab), target, draft, mode=mode, max_num_seqs=len(prompts),
                          cuda_graphs=cuda_graphs, **settings)
    try:
        out = [c.token_ids for c in llm.generate(prompts, params)]
        return out, llm
    finally:
        llm.close()


@pytest.mark.parametrize("mode,settings", MODES, ids=[m for m, _ in MODES])
def test_static_greedy_equals_eager_ar(target, draft, mode, settings):
    """Three prompts of different lengths (batch bucket 4: one padding row)."""
    prompts = prompts_for(3, seed=5)
    params = SamplingParams(max_tokens=TOKENS, ignore_eos=True)
    want = [greedy_reference(target, p, TOKENS) for p in prompts]
    got, llm = _generate(target, draft, prompts, mode, params, cuda_graphs=True, **settings)
    assert got == want
    runners = [getattr(llm.strategy, n, None) for n in ("runner", "trunner", "drunner")]
    assert all(r.backend == "static" for r in runners if r is not None)


def test_static_buckets_and_scratch_slot(target):
    """Calls of different shapes share buckets; padding never touches a caller's slot."""
    runner = ModelRunner(target, 3, 64, backend="static")
    assert runner.cache.num_slots == 3 and runner.cache.k[0].shape[0] == 4  # + the scratch slot
    eager = ModelRunner(target, 3, 64, backend="eager")
    ids = torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]])
    pos = torch.arange(5).expand(2, 5)
    for r in (runner, eager):
        r.forward(ids, pos, [2, 0], num_new=[5, 3])
    for t in (1, 2, 3):  # decode and verify widths: buckets 1, 2, 3
        step = torch.tensor([[9] * t, [10] * t])
        at = torch.tensor([[5], [3]]) + torch.arange(t)
        a, b = runner.forward(step, at, [2, 0]), eager.forward(step, at, [2, 0])
        assert torch.allclose(a, b, atol=1e-5)
        for r in (runner, eager):
            r.cache.truncate(2, 5)
            r.cache.truncate(0, 3)
    assert runner.cache.lengths == eager.cache.lengths == [3, 0, 5]
    assert set(runner.graphs.entries) == {(2, 5, False, False), (2, 1, False, False), (2, 2, False, False),
                                          (2, 3, False, False)}
    for layer in range(len(runner.cache.k)):  # slot 1 never used: only zeros
        assert not runner.cache.k[layer][1].any()
    assert bucket(BATCH_BUCKETS, 3) == 4 and bucket(TOKEN_BUCKETS, 10) == 12 and bucket(TOKEN_BUCKETS, 65) is None
    runner.graphs.prepare(3, [1, 10, 100], tree=True, last_only=False)  # what start-up capture makes
    assert {k for k in runner.graphs.entries if k[2]} == {(b, t, True, False) for b in (1, 2, 4) for t in (1, 12)}


VOCAB8, N = 8, 2000
T1 = SamplingParams(temperature=1.0)


def _sampled(pair8, mode, n, seed, **settings):
    params = [SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True, seed=seed + i) for i in range(n)]
    llm = LLM.from_models(tiny_tokenizer(VOCAB8), *pair8, mode=mode, max_num_seqs=16, max_model_len=4,
                          cuda_graphs=True, **settings)
    try:
        return [tuple(c.token_ids) for c in llm.generate([[3]] * n, params)]
    finally:
        llm.close()


@pytest.fixture(scope="module")
def exact3(pair8):
    return exact_target_distribution(pair8[0], T1, [3], 3)


@pytest.mark.parametrize("mode,settings", [("sd", {"k": 2}), ("ssd", {"k": 2, "ssd": {"transport": "thread"}})],
                         ids=["sd", "ssd"])
def test_static_sampled_exact(pair8, exact3, mode, settings):
    """3 sampled tokens of a tiny 8-token pair, 16 rows a batch (full batch buckets), against the
    exact distribution (512 outcomes, enumerated from single uncached forwards)."""
    chi_square_check(_sampled(pair8, mode, N, 40_000, **settings), exact3)


def test_planted_static_mask_bug_fails(pair8, exact3, monkeypatch):
    """A causal mask that hides each token's own key (keys < start + i instead of <=)."""
    plan = forward_meta.StaticMeta.plan

    def off_by_one(base, buffers):
        meta = plan(base, buffers)
        if buffers.tree_mask is None:
            meta.mask = buffers.keys < (buffers.starts[:, None] + buffers.offsets)[:, :, None]
            meta.mask[..., 0] |= ~meta.mask.any(-1)  # keep every softmax row non-empty
        return meta

    monkeypatch.setattr(forward_meta.StaticMeta, "plan", staticmethod(off_by_one))
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(_sampled(pair8, "sd", N, 50_000, k=2), exact3)
