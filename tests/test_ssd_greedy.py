"""Greedy SSD equals greedy AR token for token, whatever the fan-out, backup, batch and transport;
sampling SSD is reproducible and identical across transports; failures shut the worker down."""
import pytest
import torch

from ssd_support import greedy_reference, prompts_for, run, ssd_strategy, tiny_model
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.models.base import CausalLM
from ssdecode.params import SamplingParams

MAX_TOKENS = 16


@pytest.fixture(scope="module")
def references(target):
    cache = {}

    def get(prompts):
        return [cache.setdefault(tuple(p), greedy_reference(target, p, MAX_TOKENS)) for p in prompts]
    return get


def _ssd(target, draft, **cfg):
    return ssd_strategy(target, draft, cfg.pop("k", 3), cfg)


def _check(strategy, prompts, references):
    try:
        out = run(strategy, prompts, SamplingParams(max_tokens=MAX_TOKENS))
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == references(prompts)
    return stats


@pytest.mark.parametrize("backup", ["neural", "fast", "adaptive"])
@pytest.mark.parametrize("fanout", ["uniform:2", "geometric", "2,1,0,3"])
def test_greedy_matches_ar_thread(target, draft, references, backup, fanout):
    _check(_ssd(target, draft, fanout=fanout, backup=backup), prompts_for(3), references)


@pytest.mark.parametrize("fmt", ["int8", "int4"])
def test_greedy_matches_ar_with_a_quantized_draft_in_a_process(target, references, fmt):
    """The draft's packed weights travel to the spawned worker; exactness is the verifier's."""
    draft = tiny_model(1, weights=fmt)
    _check(_ssd(target, draft, transport="process", draft_threads=1), prompts_for(2), references)


@pytest.mark.parametrize("batch", [1, 2, 4])
def test_greedy_batch_sizes(target, draft, references, batch):
    _check(_ssd(target, draft, k=4, fanout="geometric", budget=10), prompts_for(batch, seed=batch), references)


@pytest.mark.parametrize("backup", ["neural", "fast"])
def test_forced_hits_and_forced_misses(target, draft, references, backup):
    stats = _check(_ssd(target, draft, fanout="uniform:99", backup=backup), prompts_for(2), references)
    assert stats["hit_rate"] == 1.0  # every outcome is cached: F = V-1 (V at the bonus)
    stats = _check(_ssd(target, draft, fanout=0, backup=backup), prompts_for(2), references)
    assert stats["hit_rate"] == 0.0


def test_draft_equal_to_target_hits_the_bonus(target, references):
    stats = _check(_ssd(target, target, k=4, fanout="uniform:1"), prompts_for(3), references)
    assert stats["hit_rate"] == 1.0 and set(stats["hit_rate_by_k"]) == {"4"}


def test_saguaro_reweighting_keeps_greedy_exact(target, draft, references):
    _check(_ssd(target, draft, saguaro_c=0.3, fanout="uniform:2"), prompts_for(2), references)


def test_context_end_with_capped_draft_cache():
    """tests/tiny.py's models hold 256 positions: the draft cache can't fit full trees near the end,
    a row near the end verifies fewer draft tokens (ragged with a row that has room), and both
    rows still equal AR, one up to the last position of the context."""
    from tiny import tiny_model as tiny256

    target, draft = tiny256(0), tiny256(1)
    prompts = [(prompts_for(1, seed=5)[0] * 240)[:240], [3, 1, 4]]
    strategy = SSDStrategy(target, SSDConfig(k=4, fanout="uniform:3"), draft=draft)
    try:
        out = dict(enumerate(run(strategy, prompts, SamplingParams(max_tokens=40), context=256)))
    finally:
        strategy.close()
    # the engine keeps the K+1 lookahead inside the context: 256 - (K + 1) tokens in all
    assert out[0] == greedy_reference(target, prompts[0], 256 - 5 - 240)
    assert out[1] == greedy_reference(target, prompts[1], 40)


def test_sampling_reproducible_and_same_across_transports(target, draft):
    prompts = prompts_for(3, seed=7)
    params = [SamplingParams(temperature=t, top_p=0.9, max_tokens=12, seed=10 + i)
              for i, t in enumerate((0.5, 1.0, 1.0))]
    runs = []
    for transport in ("thread", "thread", "process"):
        s = _ssd(target, draft, fanout="geometric", saguaro_c=0.7, transport=transport, draft_threads=1)
        try:
            runs.append(run(s, prompts, params))
        finally:
            s.close()
    assert runs[0] == runs[1] == runs[2]


def test_greedy_process_transport(target, draft, references):
    """The spawned gloo worker (draft shared through shared memory), two runs on one worker."""
    s = _ssd(target, draft, fanout="uniform:2", backup="adaptive", transport="process", draft_threads=1)
    try:
        assert run(s, prompts_for(2), SamplingParams(max_tokens=MAX_TOKENS)) == references(prompts_for(2))
        assert (run(s, prompts_for(3, seed=1), SamplingParams(max_tokens=MAX_TOKENS))
                == references(prompts_for(3, seed=1)))
        proc = s.worker.client.proc
    finally:
        s.close()
    assert not proc.is_alive()


def test_build_from_cli_options(target, draft, references):
    s = ssd_strategy(target, draft, 3, {"fanout": "uniform:2", "budget": None, "saguaro_c": 1.0,
                                                    "backup": "fast", "transport": "thread", "draft_device": None,
                                                    "draft_threads": 1})
    _check(s, prompts_for(1), references)


class _Exploding(CausalLM):
    """A target whose n-th forward raises ``error``."""

    def __init__(self, model, n, error):
        self.model, self.n, self.error = model, n, error
        self.vocab_size, self.max_context, self.device, self.dtype = (model.vocab_size, model.max_context,
                                                                      model.device, model.dtype)

    def new_cache(self, *a, **kw):
        return self.model.new_cache(*a, **kw)

    def forward(self, *a, **kw):
        self.n -= 1
        if self.n == 0:
            raise self.error
        return self.model.forward(*a, **kw)


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_interrupt_shuts_the_worker_down(target, draft, transport):
    s = _ssd(_Exploding(target, 3, KeyboardInterrupt()), draft, transport=transport, draft_threads=1)
    with pytest.raises(KeyboardInterrupt):
        run(s, prompts_for(2), SamplingParams(max_tokens=MAX_TOKENS))
    assert s.worker.client is None  # closed
    s.close()  # idempotent


def test_a_draft_that_fails_everywhere_fails_the_request_clearly(target):
    """The worker fails, the in-process SD fallback runs the same broken draft: the error is the
    draft's own (a worker that fails alone is survived: test_ssd_failover.py)."""
    class Broken(CausalLM):
        vocab_size, max_context, device, dtype, supports_tree_mask = 24, 1024, torch.device("cpu"), torch.float32, True

        def new_cache(self, *a):
            return target.new_cache(*a)

        def forward(self, *a, **kw):
            raise RuntimeError("draft exploded")

    s = _ssd(target, Broken())
    with pytest.raises(RuntimeError, match="draft exploded"):
        run(s, prompts_for(1), SamplingParams(max_tokens=4))
    assert s.worker.client is None and s.stats()["fallback"] == "sd"


def test_two_process_workers_at_once(target, draft, references):
    """Each spawned worker has a private process group, so strategies can coexist (benchmarks)."""
    a = _ssd(target, draft, transport="process", draft_threads=1)
    b = _ssd(target, draft, k=2, transport="process", draft_threads=1)
    try:
        prompts = prompts_for(2)
        params = SamplingParams(max_tokens=MAX_TOKENS)
        assert run(a, prompts, params) == run(b, prompts, params) == references(prompts)
    finally:
        a.close()
        b.close()
