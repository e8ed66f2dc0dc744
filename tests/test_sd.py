"""SD on tiny models: greedy equals AR token for token; stops land mid-run; bad input is refused."""
from __future__ import annotations

import logging

import pytest

from ssdecode.decoding.vocab import IncompatibleModels
from ssdecode.engine.llm import LLM
from ssdecode.kernels import ggml
from ssdecode.kv.cache import ContextOverflow
from ssdecode.params import InvalidParams, SamplingParams
from tiny import tiny_model, tiny_tokenizer

PROMPTS = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10], [11]]


@pytest.fixture(scope="module")
def models():
    return tiny_model(0), tiny_model(1)


def run(target, draft, mode, params, k=3, prompts=PROMPTS):
    llm = LLM.from_models(tiny_tokenizer(), target, draft, mode=mode, k=k)
    return llm.generate(prompts, params)


@pytest.mark.parametrize("k", [1, 3, 5])
@pytest.mark.parametrize("same_draft", [True, False])
def test_greedy_sd_equals_ar(models, k, same_draft):
    target, poor = models
    draft = target if same_draft else poor
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    ar = run(target, draft, "ar", params)
    sd = run(target, draft, "sd", params, k=k)
    assert [c.token_ids for c in sd] == [c.token_ids for c in ar]
    if same_draft:  # a perfect draft: every proposal accepted
        assert sd[0].stats["acceptance_rate"] == 1.0


Q4K = ggml.is_available() and ggml.interleaves("Q4_K", "int8")


@pytest.mark.parametrize("fmt", ["int8", "int4",
                                 pytest.param("q4k", marks=pytest.mark.skipif(not Q4K, reason="no VNNI"))])
def test_greedy_sd_with_a_quantized_draft_equals_ar(models, fmt):
    target, _ = models
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    out = run(target, tiny_model(0, weights=fmt), "sd", params, k=4)
    assert [c.token_ids for c in out] == [c.token_ids for c in run(target, None, "ar", params)]
    assert 0 < out[0].stats["acceptance_rate"] < 1  # the draft differs from the target


@pytest.mark.parametrize("threshold", [0.3, 0.9])
def test_confidence_gated_draft_length_keeps_greedy_equal(models, threshold):
    target, poor = models
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    llm = LLM.from_models(tiny_tokenizer(), target, poor, mode="sd", k=6, min_confidence=threshold)
    out = llm.generate(PROMPTS, params)
    assert [c.token_ids for c in out] == [c.token_ids for c in run(target, poor, "ar", params)]
    m = llm.core.run_metrics
    assert m.draft_proposed < 6 * m.verifications  # some rounds stopped drafting early


def test_max_tokens_inside_an_accepted_run(models):
    target, _ = models
    params = SamplingParams(max_tokens=4, ignore_eos=True)
    out = run(target, target, "sd", params, k=5)
    assert all(len(c.token_ids) == 4 and c.finish_reason == "length" for c in out)
    assert [c.token_ids for c in out] == [c.token_ids for c in run(target, target, "ar", params)]


def test_stop_string_and_eos_inside_an_accepted_run(models):
    target, _ = models
    free = run(target, target, "ar", SamplingParams(max_tokens=16, ignore_eos=True))[0]
    words = free.text.split()
    stop = words[5]  # a word the greedy output produces mid-way
    params = SamplingParams(max_tokens=16, ignore_eos=True, stop=(stop,))
    ar, sd = run(target, target, "ar", params)[0], run(target, target, "sd", params, k=5)[0]
    assert sd.token_ids == ar.token_ids and sd.text == ar.text
    assert sd.finish_reason == "stop" and stop not in sd.text
    assert sd.token_ids == free.token_ids[: words.index(stop) + 1]


def test_eos_stops_generation(models):
    target, _ = models
    free = run(target, target, "ar", SamplingParams(max_tokens=16, ignore_eos=True))[0]
    eos_like = free.token_ids[4]
    llm = LLM.from_models(tiny_tokenizer(), target, target, mode="sd", k=5)
    llm.core.stopper.eos_ids = {eos_like}
    out = llm.generate([PROMPTS[0]], SamplingParams(max_tokens=16))[0]
    assert out.token_ids == free.token_ids[: free.token_ids.index(eos_like) + 1]
    assert out.finish_reason == "stop"


def test_padded_draft_vocabulary_is_accepted(models):
    target, _ = models
    wide = tiny_model(2, vocab=30)  # ids 0..23 agree with the target's; 24..29 are padding
    params = SamplingParams(max_tokens=12, ignore_eos=True)
    assert [c.token_ids for c in run(target, wide, "sd", params)] == \
        [c.token_ids for c in run(target, wide, "ar", params)]


def test_bad_input(models, caplog):
    target, draft = models
    with pytest.raises(InvalidParams, match="K"):
        LLM.from_models(tiny_tokenizer(), target, draft, mode="sd", k=0)
    with pytest.raises(IncompatibleModels, match="tokenizers differ"):
        LLM.from_models(tiny_tokenizer(), target, draft, mode="sd", draft_tokenizer=tiny_tokenizer(20))
    with pytest.raises(ContextOverflow, match="context"):
        run(target, draft, "sd", SamplingParams(), prompts=[[1] * 300])
    with pytest.raises(InvalidParams):
        SamplingParams(temperature=-1)
    with pytest.raises(InvalidParams):
        SamplingParams(top_p=0.0)
    with pytest.raises(InvalidParams):
        SamplingParams(max_tokens=0)
    with pytest.raises(InvalidParams, match="confidence"):
        LLM.from_models(tiny_tokenizer(), target, draft, mode="sd", min_confidence=1.5)
    with caplog.at_level(logging.WARNING):
        LLM.from_models(tiny_tokenizer(), draft, tiny_model(3, hidden=64), mode="sd")
    assert "larger than the target" in caplog.text
