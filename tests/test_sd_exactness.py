"""SD's output distribution equals the target's: whole-generation chi-square tests on tiny models.

Thousands of sequences of the same prompt run as one batch (each row with its own seed), and the
empirical distribution of their first tokens is compared with the exactly enumerated target
distribution (exactness.py: built from raw logits, independently of ssdecode.sampling). Longer
generations and rarer kinds of rows: test_exactness_engine.py.
"""
from __future__ import annotations

import pytest

from exactness import chi_square_check, exact_target_distribution
from ssdecode.engine.llm import LLM
from ssdecode.kernels import ggml
from ssdecode.models.base import CausalLM
from ssdecode.params import SamplingParams
from tiny import tiny_model, tiny_tokenizer

VOCAB, PROMPT, N = 12, [3, 7, 1], 4000


class Adversarial(CausalLM):
    """A draft that puts its mass where the target has little (negated target logits)."""

    def __init__(self, model):
        self.model, self.vocab_size, self.max_context = model, model.vocab_size, model.max_context
        self.device, self.dtype, self.config = model.device, model.dtype, model.config

    def new_cache(self, num_slots, max_len=None):
        return self.model.new_cache(num_slots, max_len)

    def forward(self, *args, **kwargs):
        return -self.model.forward(*args, **kwargs)


@pytest.fixture(scope="module")
def target():
    return tiny_model(0, vocab=VOCAB)


def sd_samples(target, draft, params: SamplingParams, k: int, n_tokens: int, n: int = N,
               min_confidence: float | None = None) -> list[tuple]:
    llm = LLM.from_models(tiny_tokenizer(VOCAB), target, draft, mode="sd", k=k, min_confidence=min_confidence,
                          max_num_seqs=n, max_model_len=len(PROMPT) + n_tokens)
    rows = [SamplingParams(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p,
                           max_tokens=n_tokens, ignore_eos=True, seed=1000 + i) for i in range(n)]
    return [tuple(c.token_ids) for c in llm.generate([PROMPT] * n, rows)]


CASES = {
    "same-draft-t1-k5": dict(draft="same", temperature=1.0, k=5),
    "poor-draft-t1-k1": dict(draft="poor", temperature=1.0, k=1),
    "poor-draft-t07-k5": dict(draft="poor", temperature=0.7, k=5),
    "adversarial-t1-k5": dict(draft="adversarial", temperature=1.0, k=5),
    "poor-draft-topk3-k5": dict(draft="poor", temperature=1.0, top_k=3, k=5),
    "poor-draft-t15-topp08-k1": dict(draft="poor", temperature=1.5, top_p=0.8, k=1),
    "int8-draft-t1-k5": dict(draft="int8", temperature=1.0, k=5),
    "int4-draft-t07-k3": dict(draft="int4", temperature=0.7, k=3),
    "q4k-draft-t1-k4": dict(draft="q4k", temperature=1.0, k=4),
}


def make_draft(kind: str, target):
    return {"same": lambda: target, "poor": lambda: tiny_model(1, vocab=VOCAB),
            "adversarial": lambda: Adversarial(target),
            "int8": lambda: tiny_model(0, vocab=VOCAB, weights="int8"),
            "int4": lambda: tiny_model(0, vocab=VOCAB, weights="int4"),
            "q4k": lambda: tiny_model(0, vocab=VOCAB, weights="q4k")}[kind]()


@pytest.mark.parametrize("name", sorted(CASES))
def test_sd_matches_target_distribution(name, target):
    case = dict(CASES[name])
    if case["draft"] == "q4k" and not (ggml.is_available() and ggml.interleaves("Q4_K", "int8")):
        pytest.skip("no interleaved Q4_K kernel here (AVX-512 VNNI)")
    draft, k = make_draft(case.pop("draft"), target), case.pop("k")
    params = SamplingParams(**case)
    samples = sd_samples(target, draft, params, k, n_tokens=2)
    chi_square_check(samples, exact_target_distribution(target, params, PROMPT, 2))


def test_confidence_gated_draft_length_is_exact(target):
    params = SamplingParams(temperature=1.0)
    samples = sd_samples(target, tiny_model(1, vocab=VOCAB), params, k=4, n_tokens=3, n=6000,
                         min_confidence=0.5)
    chi_square_check(samples, exact_target_distribution(target, params, PROMPT, 3))


def test_three_token_joint_distribution(target):
    params = SamplingParams(temperature=1.0)
    samples = sd_samples(target, tiny_model(1, vocab=VOCAB), params, k=2, n_tokens=3, n=6000)
    chi_square_check(samples, exact_target_distribution(target, params, PROMPT, 3))


def test_wrong_verifier_fails_the_suite(target, monkeypatch):
    """Argmax-match acceptance at temperature 1 (the reference engine's bug) must be caught."""
    import ssdecode.decoding.speculative as sd
    from ssdecode.decoding.verify import VerifyResult

    def greedy_match(target_logits, draft_tokens, draft_probs, st, generators, **_):
        best = target_logits.argmax(-1)
        ok = (draft_tokens == best[:, :-1]).long().cumprod(-1)
        acc = ok.sum(-1)
        return VerifyResult(acc, best.gather(1, acc[:, None])[:, 0], None)

    monkeypatch.setattr(sd, "verify", greedy_match)
    params = SamplingParams(temperature=1.0)
    samples = sd_samples(target, tiny_model(1, vocab=VOCAB), params, k=3, n_tokens=2)
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(samples, exact_target_distribution(target, params, PROMPT, 2))
