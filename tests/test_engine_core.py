"""The persistent engine core (engine/core.py): slots and the waiting queue, abort, requests that
join at any step, refusals (detokenization and stop strings: test_detokenizer.py). Tiny random
models only; ``target`` and ``draft`` are conftest's tiny pair.

Greedy outputs are compared with ``greedy_reference`` (the target run from scratch per token,
no cache): a request must get exactly the tokens it gets alone, whatever else is in the batch.
Seeded sampled requests must too: every row draws from its own generator (sampling.py).
"""
from __future__ import annotations

import random

import pytest

from core_support import VOCAB, K, Tracker, greedy, make_core
from ssd_support import CONTEXT, greedy_reference, prompts_for, ssd_strategy
from ssdecode.decoding.autoregressive import ARStrategy
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.kv.cache import ContextOverflow
from ssdecode.params import InvalidParams, SamplingParams
from ssdecode.transport.messages import Outcome, Setup, Start
from tiny import tiny_tokenizer

_REFERENCES: dict[tuple, list[int]] = {}


def reference(model, prompt: list[int], n: int) -> list[int]:
    """The greedy continuation of ``prompt`` alone (memoized: tests reuse prompts)."""
    key = (id(model), tuple(prompt), n)
    if key not in _REFERENCES:
        _REFERENCES[key] = greedy_reference(model, list(prompt), n)
    return list(_REFERENCES[key])


class RecordingClient:
    """Wraps a strategy's draft client and keeps every request it sends (transport-agnostic)."""

    def __init__(self, inner):
        self.inner, self.sent = inner, []

    def request(self, msg, timeout_s=None):
        self.sent.append(msg)
        return self.inner.request(msg, timeout_s)

    def close(self):
        self.inner.close()

    def abandon(self):
        self.inner.abandon()

    def count(self, kind) -> int:
        return sum(isinstance(m, kind) for m in self.sent)

    def released(self) -> set[int]:
        return {i for m in self.sent if isinstance(m, (Start, Outcome)) for i in m.released}


def make_strategy(kind: str, target, draft):
    """``kind``: ar | sd | ssd (thread transport) | ssd-process. SSD strategies record
    what they send: their client is wrapped in a RecordingClient (``strategy.worker.client`` after setup)."""
    if kind == "ar":
        return ARStrategy(target)
    if kind == "sd":
        return SDStrategy(target, draft, K)
    transport = "process" if kind == "ssd-process" else "thread"
    strategy = ssd_strategy(target, draft, K,
                                  {"fanout": "uniform:2", "transport": transport, "draft_threads": 1})
    strategy._new_client = lambda cancel, new=strategy._new_client: RecordingClient(new(cancel))
    return strategy


# -- slots and the waiting queue ---------------------------------------------------------------
def test_requests_beyond_max_num_seqs_wait_for_a_slot(target):
    core = make_core(ARStrategy(target), max_num_seqs=2)
    tr = Tracker(core)
    assert core.step() == [] and not core.has_unfinished()
    prompts = prompts_for(5, seed=11)
    lengths = [6, 4, 2, 3, 5]
    rids = [tr.add(p, greedy(n)) for p, n in zip(prompts, lengths)]
    assert len(set(rids)) == 5
    assert (core.num_waiting, core.num_running, core.num_free_slots) == (5, 0, 2) and core.has_unfinished()
    tr.step()
    assert (core.num_waiting, core.num_running, core.num_free_slots) == (3, 2, 0)
    while core.has_unfinished():
        tr.step()
    assert (core.num_waiting, core.num_running, core.num_free_slots) == (0, 0, 2)
    # first come, first served: a later request never starts before an earlier one
    firsts = [tr.first_step[r] for r in rids]
    assert firsts == sorted(firsts) and firsts[:2] == [0, 0] and firsts[2] > 0
    for r, p, n in zip(rids, prompts, lengths):
        assert tr.finished[r].output_ids == reference(target, p, n)
        assert tr.finished[r].finish_reason == "length"
    assert core.step() == []
    # the core stays usable after it went idle
    rid = tr.add(prompts[0], greedy(3))
    tr.run()
    assert tr.finished[rid].output_ids == reference(target, prompts[0], 3)


def test_request_ids_are_unique_across_cores(target):
    a, b = make_core(ARStrategy(target)), make_core(ARStrategy(target))
    ids = []
    for i in range(6):
        ids.append((a if i % 2 else b).add_request([1, 2, 3], greedy(2)))
    assert len(set(ids)) == len(ids)
    # an id of one core is unknown to the other
    assert not a.abort(ids[0]) and b.abort(ids[0])


# -- abort -------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sd", "ssd"])
def test_abort_a_waiting_request(kind, target, draft):
    strategy = make_strategy(kind, target, draft)
    try:
        core = make_core(strategy, max_num_seqs=1)
        tr = Tracker(core)
        prompts = prompts_for(3, seed=12)
        rids = [tr.add(p, greedy(8)) for p in prompts]
        tr.step()
        assert core.num_waiting == 2
        assert tr.abort(rids[1]) and core.num_waiting == 1 and core.num_free_slots == 0
        assert not core.abort(rids[1]) and not core.abort(10 ** 9)
        tr.run()
        assert rids[1] not in tr.ids  # never ran, never produced anything
        assert tr.finished[rids[0]].output_ids == reference(target, prompts[0], 8)
        assert tr.finished[rids[2]].output_ids == reference(target, prompts[2], 8)
        assert tr.first_step[rids[2]] > tr.first_step[rids[0]]
    finally:
        strategy.close()


@pytest.mark.parametrize("kind", ["sd", "ssd"])
def test_abort_a_running_request(kind, target, draft):
    strategy = make_strategy(kind, target, draft)
    try:
        core = make_core(strategy, max_num_seqs=2)
        tr = Tracker(core)
        prompts = prompts_for(4, seed=13)
        a = tr.add(prompts[0], greedy(30))
        b = tr.add(prompts[1], greedy(12))
        c = tr.add(prompts[2], greedy(10))
        tr.step()
        tr.step()
        assert a in tr.ids and not tr.finished and core.num_waiting == 1
        slot = core.scheduler.running[a].seq.slot
        assert tr.abort(a) and not core.abort(a)
        assert (core.num_running, core.num_free_slots, core.num_waiting) == (1, 1, 1)
        outputs = tr.step()  # c takes a's slot
        assert {o.request_id for o in outputs} >= {c} and core.scheduler.running[c].seq.slot == slot
        tr.run()
        assert tr.finished[b].output_ids == reference(target, prompts[1], 12)
        assert tr.finished[c].output_ids == reference(target, prompts[2], 10)
        # abort the only running request: the core goes idle, then a new request reuses the slot
        d = tr.add(prompts[3], greedy(20))
        tr.step()
        assert tr.abort(d) and not core.has_unfinished() and core.num_free_slots == 2
        assert core.step() == []
        e = tr.add(prompts[0], greedy(9))
        tr.run()
        assert tr.finished[e].output_ids == reference(target, prompts[0], 9)
        assert d not in tr.finished and len(tr.ids[d]) < 20
        if kind == "ssd":
            client = strategy.worker.client
            assert client.count(Setup) == 1
            assert {a, b, c, d} <= client.released()  # the worker dropped their state
    finally:
        strategy.close()


# -- requests joining at any step --------------------------------------------------------------
JOIN_SCHEDULE = {  # step -> [(prompt index, max_tokens)]
    0: [(0, 14), (1, 3)],
    2: [(2, 9)],
    3: [(3, 1), (4, 7)],  # max_tokens 1: finishes at its prefill, never runs a round
    5: [(5, 11), (6, 5), (7, 2)],  # more than the free slots: some wait
    9: [(8, 6)],
}


@pytest.mark.parametrize("kind", ["ar", "sd", "ssd", "ssd-process"])
def test_requests_joining_at_different_steps_equal_running_alone(kind, target, draft):
    strategy = make_strategy(kind, target, draft)
    try:
        core = make_core(strategy, max_num_seqs=3)
        tr = Tracker(core)
        prompts = prompts_for(10, seed=14)
        tr.run({s: [(prompts[i], greedy(n), i) for i, n in adds] for s, adds in JOIN_SCHEDULE.items()})
        for adds in JOIN_SCHEDULE.values():
            for i, n in adds:
                assert tr.output(i) == reference(target, prompts[i], n), (kind, i)
        # idle for a while, then more requests on the same core (and the same SSD worker)
        for _ in range(3):
            assert tr.step() == []
        tr.run({0: [(prompts[9], greedy(8), "late")], 1: [(prompts[0], greedy(5), "late2")]})
        assert tr.output("late") == reference(target, prompts[9], 8)
        assert tr.output("late2") == reference(target, prompts[0], 5)
        if kind.startswith("ssd"):
            assert strategy.worker.client.count(Setup) == 1 and strategy.worker.client.count(Start) >= 6
            stats = strategy.stats()
            assert stats["rounds"] > 0
    finally:
        strategy.close()


@pytest.mark.parametrize("kind", ["ar", "sd", "ssd"])
def test_seeded_sampling_does_not_depend_on_the_batch(kind, target, draft):
    """A row's randomness is its own generator's: the same seeded request gives the same tokens
    alone and while other requests (greedy and sampled) join and leave around it."""
    prompts = prompts_for(8, seed=15)
    params = [SamplingParams(temperature=(0.0, 1.0, 0.7, 1.3)[i % 4], top_k=(0, 0, 5, 0)[i % 4],
                             top_p=(1.0, 1.0, 1.0, 0.9)[i % 4], max_tokens=4 + 3 * (i % 3), seed=100 + i)
              for i in range(8)]
    alone = []
    for p, sp in zip(prompts, params):
        strategy = make_strategy(kind, target, draft)
        try:
            tr = Tracker(make_core(strategy, max_num_seqs=1))
            tr.run({0: [(p, sp, 0)]})
            alone.append(tr.output(0))
        finally:
            strategy.close()
    strategy = make_strategy(kind, target, draft)
    try:
        tr = Tracker(make_core(strategy, max_num_seqs=3))
        rng = random.Random(0)
        schedule: dict[int, list] = {}
        step = 0
        for i in range(8):
            step += rng.choice((0, 1, 2))
            schedule.setdefault(step, []).append((prompts[i], params[i], i))
        tr.run(schedule)
        assert [tr.output(i) for i in range(8)] == alone
    finally:
        strategy.close()


def test_ssd_worker_is_set_up_once_for_many_requests(target, draft, monkeypatch):
    """Through the LLM API: several generate calls and a stream, one Setup (counted by the
    worker itself) for all of them."""
    import ssdecode.decoding.ssd.strategy as strategy_module
    from ssdecode.engine.llm import LLM

    handled = []

    class CountingWorker(strategy_module.DraftWorker):
        def handle(self, msg):
            handled.append(type(msg))
            return super().handle(msg)

    monkeypatch.setattr(strategy_module, "DraftWorker", CountingWorker)
    llm = LLM.from_models(tiny_tokenizer(VOCAB), target, draft, mode="ssd", k=K, max_num_seqs=2,
                          max_model_len=40, ssd={"fanout": "uniform:2", "transport": "thread"})
    try:
        prompts = prompts_for(5, seed=16)
        out = llm.generate(prompts, SamplingParams(max_tokens=6, ignore_eos=True))
        assert [c.token_ids for c in out] == [reference(target, p, 6) for p in prompts]
        out += llm.generate(prompts[:3], [SamplingParams(temperature=1.0, max_tokens=5, seed=i) for i in range(3)])
        pieces = list(llm.stream(prompts[4], SamplingParams(max_tokens=7, ignore_eos=True)))
        final = pieces.pop()
        assert "".join(pieces) == final.text and final.token_ids == reference(target, prompts[4], 7)
        assert handled.count(Setup) == 1 and handled[0] is Setup
        assert handled.count(Start) >= 3 and handled.count(Outcome) > 5
        assert not llm.core.has_unfinished() and llm.core.num_free_slots == 2
    finally:
        llm.close()


# -- refusals ----------------------------------------------------------------------------------
def test_refused_prompts(target):
    core = make_core(ARStrategy(target), max_model_len=16)
    with pytest.raises(InvalidParams, match="empty"):
        core.add_request([], greedy(4))
    for bad in ([1, VOCAB], [-1, 2], [3, 2.0], [None]):
        with pytest.raises(InvalidParams, match=rf"\[0, {VOCAB}\)"):
            core.add_request(bad, greedy(4))
    with pytest.raises(ContextOverflow, match="16 tokens.*holds 16"):
        core.add_request(list(range(16)), greedy(4))
    with pytest.raises(ContextOverflow, match="30 tokens.*holds 16"):
        core.add_request([1] * 30, greedy(4))
    assert core.num_waiting == 0 and not core.has_unfinished()
    # one token of room: exactly one token, cut by the context
    tr = Tracker(core)
    rid = tr.add(list(range(15)), greedy(4))
    tr.run()
    req = tr.finished[rid]
    assert req.output_ids == reference(target, list(range(15)), 1) and req.finish_reason == "length"


def test_refused_construction(target, draft):
    for bad in (0, -2, 2.5, "4", None):
        with pytest.raises(InvalidParams, match="max_num_seqs"):
            make_core(ARStrategy(target), max_num_seqs=bad)
    lookahead = K + 1  # SD verifies K draft tokens past the last committed one
    limit = CONTEXT - lookahead
    for bad in (1, 0, 3.5):  # refused before any model is looked at
        with pytest.raises(InvalidParams, match=rf"max_model_len must be an integer >= 2, got {bad}"):
            make_core(SDStrategy(target, draft, K), max_model_len=bad)
    with pytest.raises(InvalidParams, match=rf"max_model_len must be in \[2, {limit}\].*{CONTEXT}.*"
                                            rf"{lookahead} lookahead.*got {limit + 1}"):
        make_core(SDStrategy(target, draft, K), max_model_len=limit + 1)
    assert make_core(SDStrategy(target, draft, K), max_num_seqs=1, max_model_len=limit).max_model_len == limit
    assert make_core(SDStrategy(target, draft, K), max_num_seqs=1, max_model_len=None).max_model_len == limit
