"""A request's output does not depend on who else is served (issue 26, step 0).

Prompts admitted together are prefilled one at a time (``sample_steps.feed_logits``): a padded
batch of prompts attends and multiplies in other blocks than one prompt alone, and on ``gguf-a8``
the ~1e-5 fp32 differences become other greedy tokens (measured: 2 of 6 stdlib prompts diverged
at tokens 29 and 33 when prefilled together). Decode and verification rows already compute each
row alone (the CPU attention kernel, batch-invariant products).
"""
from __future__ import annotations

import pytest
import torch

from ssdecode.bench.prompts import load_prompts
from ssdecode.decoding.sample_steps import feed_logits
from ssdecode.decoding.sequence import Sequence
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.engine.llm import LLM
from ssdecode.models.demo import pull_demo
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import make_generator
from tiny import tiny_model

# ragged: shorter and longer than the attention kernel's 16 query tokens, one a single token
LENGTHS = (5, 40, 1, 23, 16, 61)


def _prompts(vocab: int = 24) -> list[list[int]]:
    gen = torch.Generator().manual_seed(7)
    return [torch.randint(0, vocab - 1, (n,), generator=gen).tolist() for n in LENGTHS]


def _caches_equal(a: ModelRunner, b: ModelRunner, slot_a: int, slot_b: int, n: int) -> bool:
    return all(torch.equal(x[slot_a, :n], y[slot_b, :n]) for x, y in zip(a.cache.k + a.cache.v, b.cache.k + b.cache.v))


def test_prompts_fed_together_compute_the_bits_of_each_alone():
    model = tiny_model(0, hidden=64)
    prompts = _prompts()
    together = ModelRunner(model, len(prompts), 80)
    logits = feed_logits(together, list(range(len(prompts))), prompts)
    for i, p in enumerate(prompts):
        alone = ModelRunner(model, 1, 80)
        assert torch.equal(feed_logits(alone, [0], [p])[0], logits[i]), f"prompt {i} ({len(p)} tokens)"
        assert _caches_equal(alone, together, 0, i, len(p))


def test_sd_prefill_of_target_and_draft_is_batch_invariant():
    """Through a strategy's prefill: both caches hold each prompt's bits whatever else came in."""
    target, draft = tiny_model(0, hidden=64), tiny_model(1)
    prompts = _prompts()

    def prefilled(ps: list[list[int]]) -> SDStrategy:
        sd = SDStrategy(target, draft, 3)
        sd.setup(len(ps), 96)
        params = SamplingParams()
        sd.prefill([Sequence(i, i, p, params, make_generator(params)) for i, p in enumerate(ps)])
        return sd

    together = prefilled(prompts)
    for i, p in enumerate(prompts):
        alone = prefilled([p])
        assert _caches_equal(alone.trunner, together.trunner, 0, i, len(p))
        assert _caches_equal(alone.drunner, together.drunner, 0, i, len(p))


@pytest.mark.real
def test_real_prompts_alone_and_together_give_the_same_tokens():
    """The demo target as llama.cpp computes it (gguf-a8), 6 stdlib prompts x 48 greedy tokens:
    each alone, then all six at once in AR and in SD. Before the fix 2 of the 6 diverged."""
    torch.set_num_threads(2)
    demo = pull_demo(progress=False)
    llm = LLM(target=str(demo.target_dir), draft=str(demo.draft_dir), mode="ar", weights="gguf-a8",
              device="cpu", max_num_seqs=6)
    try:
        ids = [llm.encode(p.text, chat=p.chat) for p in load_prompts("stdlib", 6)]
        params = SamplingParams(max_tokens=48, ignore_eos=True)
        alone = [llm.generate([p], params)[0].token_ids for p in ids]
        assert [c.token_ids for c in llm.generate(ids, params)] == alone
        llm.configure("sd", k=3)
        assert [c.token_ids for c in llm.generate(ids, params)] == alone
    finally:
        llm.close()
