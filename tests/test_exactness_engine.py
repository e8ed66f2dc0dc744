"""Engine-level exactness where the shorter cases are blind: later rounds and rare kinds of rows.

Most cases of test_sd_exactness.py emit 2 tokens: the first comes from prefill, the second from
the first round, so what a round leaves behind for the next one (the target KV rollback) never
reaches their samples, and rows that are rare there (point masses next to sampled rows, rows
drafting fewer than K tokens) weigh too little. Here every case runs K >= 2 and 4 generated
tokens with a poor draft (most rounds reject early, so rows take 2 or 3 rounds), thousands of
seeded rows of one prompt in ONE batch through the engine, against the exact 4-token
distribution (vocabulary 8, about 100 chi-square bins). Each case also checks that the situation
it exists for really occurred. Planted bugs (a rollback keeping the rejected token, a top-p
transform keeping one token too few) must fail the same check.
"""
from __future__ import annotations

import pytest

from exactness import chi_square_check, exact_target_distribution
from ssd_support import greedy_reference
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams
from tiny import tiny_tokenizer

VOCAB, TOKENS, N = 8, 4, 4000
PROMPT = [3]  # short: a stale KV row is a large part of the context
FAST_PROMPT = [6, 5, 4, 3, 2, 1, 0]  # every token but EOS once: the fast backup always finds a continuation
T1 = SamplingParams(temperature=1.0)


@pytest.fixture(scope="module")
def exact(pair8):
    return exact_target_distribution(pair8[0], T1, PROMPT, TOKENS)


def rows(n_sampled: int, n_greedy: int = 0, seed: int = 0, sampling: SamplingParams = T1) -> list[SamplingParams]:
    """Sampled rows (one seed each) with greedy rows spread among them."""
    out = [SamplingParams(temperature=sampling.temperature, top_k=sampling.top_k, top_p=sampling.top_p,
                          max_tokens=TOKENS, ignore_eos=True, seed=seed + i) for i in range(n_sampled)]
    for i in range(n_greedy):
        out.insert(i * (n_sampled + n_greedy) // n_greedy, SamplingParams(max_tokens=TOKENS, ignore_eos=True))
    return out


def generate(pair8, params: list[SamplingParams], mode: str, prompt=PROMPT, **settings):
    """One batch through the engine: (sampled rows' tokens, greedy rows' tokens, engine metrics,
    strategy stats)."""
    llm = LLM.from_models(tiny_tokenizer(VOCAB), *pair8, mode=mode, max_num_seqs=len(params),
                          max_model_len=len(prompt) + TOKENS, **settings)
    try:
        out = [tuple(c.token_ids) for c in llm.generate([prompt] * len(params), params)]
        metrics, stats = llm.core.run_metrics.summary(), llm.strategy.stats()
    finally:
        llm.close()
    sampled = [o for o, p in zip(out, params) if not p.greedy]
    return sampled, [o for o, p in zip(out, params) if p.greedy], metrics, stats


def test_sd_greedy_rows_mixed_with_sampled_rows(pair8, exact):
    """K = 3; the greedy rows' p and q are one-hot, the sampled rows' are not."""
    sampled, greedy, metrics, _ = generate(pair8, rows(N, N // 4), "sd", k=3)
    assert set(greedy) == {tuple(greedy_reference(pair8[0], PROMPT, TOKENS))}
    assert metrics["acceptance_rate"] < 0.5  # rejections, so rollbacks, in most rounds
    chi_square_check(sampled, exact)


def test_sd_rows_drafting_fewer_than_k(pair8, exact):
    """Confidence gating: rows stop drafting at different lengths below K = 4, in one batch."""
    sampled, _, metrics, _ = generate(pair8, rows(N, seed=10_000), "sd", k=4, min_confidence=0.5)
    assert metrics["draft_proposed"] < 0.7 * 4 * metrics["verifications"]
    chi_square_check(sampled, exact)


def test_ssd_hits_next_to_fast_backup_misses(pair8):
    """K = 2, fan-out "0,7,8": an outcome rejecting at position 0 misses (fast backup: point-mass
    n-gram proposals of 0..2 tokens), every other outcome hits (sampled branches with their q's);
    greedy rows add point masses of their own. All of them meet in the same rounds."""
    sampled, greedy, _, stats = generate(pair8, rows(N, N // 4, seed=20_000), "ssd", prompt=FAST_PROMPT, k=2,
                                         ssd={"fanout": "0,7,8", "backup": "fast"})
    assert 0.2 < stats["hit_rate"] < 0.8 and stats["backup_rows"]["fast"] > N, stats
    assert set(greedy) == {tuple(greedy_reference(pair8[0], FAST_PROMPT, TOKENS))}
    chi_square_check(sampled, exact_target_distribution(pair8[0], T1, FAST_PROMPT, TOKENS))


def test_a_rollback_that_keeps_the_rejected_token_fails(pair8, exact, monkeypatch):
    """The target cache keeps s_{k+1} after a rejection (truncated one row too late): the next
    round's tokens are sampled after a context with a stale token in it."""
    import ssdecode.decoding.speculative as sd

    verify_proposals = sd.verify_proposals

    def keeps_rejected(target, seqs, tokens, *args, num_draft=None, **kwargs):
        accepted, nxt = verify_proposals(target, seqs, tokens, *args, num_draft=num_draft, **kwargs)
        n = [tokens.shape[1]] * len(seqs) if num_draft is None else num_draft
        for s, a, m in zip(seqs, accepted, n):
            target.cache.lengths[s.slot] += a < m
        return accepted, nxt

    monkeypatch.setattr(sd, "verify_proposals", keeps_rejected)
    samples, _, _, _ = generate(pair8, rows(N // 2, seed=30_000), "sd", k=3)
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(samples, exact)


def test_a_top_p_that_keeps_one_token_too_few_fails(pair8, monkeypatch):
    """A bug in the engine's transforms must not move the reference along (exactness.py builds it
    independently): top-p dropping the least likely token of every nucleus wider than one."""
    import torch

    import ssdecode.sampling as sampling

    top_p = SamplingParams(temperature=1.0, top_p=0.8)
    exact = exact_target_distribution(pair8[0], top_p, PROMPT, TOKENS)
    filter_top_k_top_p = sampling._filter_top_k_top_p

    def one_too_few(scaled, top_k, p):
        kept = filter_top_k_top_p(scaled, top_k, p)
        finite = kept.isfinite()
        least = kept.masked_fill(~finite, float("inf")).argmin(-1, keepdim=True)
        drop = (finite.sum(-1, keepdim=True) > 1) & (p < 1.0)
        return kept.scatter(-1, least, torch.where(drop, float("-inf"), kept.gather(-1, least)))

    monkeypatch.setattr(sampling, "_filter_top_k_top_p", one_too_few)
    samples, _, _, _ = generate(pair8, rows(N // 2, seed=40_000, sampling=top_p), "sd", k=3)
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(samples, exact)
