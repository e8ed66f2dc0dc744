"""Continuous batching keeps sampling exact: a request's tokens follow the target distribution
while other requests join and leave the batch around it, in SD and in SSD.

One engine core per strategy, with far fewer slots (MAX_NUM_SEQS) than requests: thousands of
"measured" requests (one prompt, each with its own seed) arrive in bursts between steps, mixed
with "other" requests (different prompts, greedy and sampled with other transforms, other
max_tokens, EOS allowed, some aborted while waiting or running), so rows are admitted into freed
slots, retire and get aborted at almost every step, and the core now and then runs dry and
restarts. The joint distribution of the measured requests' first three tokens is compared with
the exactly enumerated target distribution (vocabulary 8: hundreds of outcomes, dozens of
chi-square bins). A planted continuous-batching bug (rows handed back in slot order instead of
the callers' order, invisible in a static batch) shows that the check catches row bookkeeping
errors.
"""
from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass

import pytest

from exactness import chi_square_check, exact_target_distribution
from ssd_support import CONTEXT, ssd_strategy
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.engine.core import EngineCore
from ssdecode.params import SamplingParams
from tiny import tiny_tokenizer

VOCAB, PROMPT, K, TOKENS = 8, [3, 7, 1], 2, 3
EOS = VOCAB - 1  # tiny_tokenizer's EOS: ends "other" requests early; measured ones ignore it
N_MEASURED, N_OTHER = 4000, 1500
MAX_NUM_SEQS, MAX_MODEL_LEN = 24, 24
MEASURED = SamplingParams(temperature=1.0)


@dataclass
class Job:
    prompt: list[int]
    params: SamplingParams
    measured: bool
    # others only (aborting measured requests by outcome-dependent timing would bias the sample):
    abort_after: int | None = None  # abort this many steps after it was added ...
    abort_running: bool = False  # ... or after its first token


def make_jobs(n_measured: int, n_other: int, seed: int) -> list[Job]:
    rng = random.Random(seed)
    jobs = [Job(PROMPT, SamplingParams(temperature=MEASURED.temperature, max_tokens=rng.choice((3, 3, 4, 7)),
                                       ignore_eos=True, seed=10_000 * seed + i), True)
            for i in range(n_measured)]
    others = (dict(temperature=0.0), dict(temperature=0.5, top_k=3), dict(temperature=1.3, top_p=0.8))
    for i in range(n_other):
        prompt = [rng.randrange(VOCAB - 1) for _ in range(rng.randint(1, 8))]
        params = SamplingParams(**rng.choice(others), max_tokens=rng.randint(1, 12), seed=rng.randrange(1 << 30))
        abort = rng.random()
        jobs.append(Job(prompt, params, False, rng.randint(0, 3) if abort < 0.35 else None, abort < 0.25))
    rng.shuffle(jobs)
    return jobs


@dataclass
class Churn:
    samples: list[tuple[int, ...]]
    joined_running: int = 0  # requests admitted while others were mid-generation
    left_running: int = 0  # requests that finished or were aborted while others kept running
    aborted_running: int = 0
    aborted_waiting: int = 0
    slot_reuses: int = 0  # admissions into a slot some earlier request had held
    max_waiting: int = 0
    idle_restarts: int = 0


def churn(strategy, jobs: list[Job], seed: int, max_model_len: int = MAX_MODEL_LEN) -> Churn:
    """Drive one core through ``jobs`` arriving in random bursts; the measured requests' first
    TOKENS tokens, and how much joining and leaving happened."""
    core = EngineCore(strategy, tiny_tokenizer(VOCAB), {EOS}, CONTEXT, VOCAB, MAX_NUM_SEQS, max_model_len)
    rng = random.Random(seed)
    pending = deque(jobs)
    live: dict[int, tuple[Job, int]] = {}  # request id -> (job, step it was added)
    started: dict[int, int] = {}  # request id -> step of its first token
    done: set[int] = set()
    used_slots: set[int] = set()
    out = Churn([])
    step, drain = 0, False
    while pending or core.has_unfinished():
        if drain and not core.has_unfinished():  # the core ran dry: idle steps, then restart
            assert core.step() == [] and core.num_free_slots == MAX_NUM_SEQS
            drain, out.idle_restarts = False, out.idle_restarts + 1
        if not drain:
            for _ in range(min(rng.choice((0, 1, 2, 6, 12, 30)), len(pending))):
                job = pending.popleft()
                live[core.add_request(job.prompt, job.params)] = (job, step)
            drain = rng.random() < 0.01
        for rid, (job, added) in list(live.items()):
            since = started.get(rid) if job.abort_running else added
            if job.abort_after is not None and since is not None and step - since >= job.abort_after:
                running = rid in started
                assert core.abort(rid) and not core.abort(rid)
                out.aborted_running += running
                out.aborted_waiting += not running
                out.left_running += running and core.num_running > 0
                del live[rid]
                done.add(rid)
        out.max_waiting = max(out.max_waiting, core.num_waiting)
        was_running = core.num_running
        outputs = core.step()
        assert core.num_running + core.num_free_slots == MAX_NUM_SEQS
        for o in outputs:
            assert o.request_id in live and o.request_id not in done, "output of a finished request"
            if o.request_id not in started:
                started[o.request_id] = step
                slot = o.request.seq.slot
                out.slot_reuses += slot in used_slots
                used_slots.add(slot)
                out.joined_running += was_running > 0
            if o.finished:
                job, _ = live.pop(o.request_id)
                done.add(o.request_id)
                out.left_running += core.num_running > 0
                if job.measured:
                    assert len(o.request.output_ids) == job.params.max_tokens
                    out.samples.append(tuple(o.request.output_ids[:TOKENS]))
        step += 1
    assert not live and core.num_free_slots == MAX_NUM_SEQS
    return out


def check_churned(c: Churn, n_measured: int) -> None:
    """The run really exercised continuous batching (the sample itself is checked separately)."""
    assert len(c.samples) == n_measured
    assert c.joined_running > n_measured // 2 and c.left_running > n_measured // 2
    assert c.slot_reuses > n_measured // 2
    assert c.aborted_running > 20 and c.aborted_waiting > 5
    assert c.max_waiting > MAX_NUM_SEQS and c.idle_restarts >= 2


@pytest.fixture(scope="module")
def exact(pair8):
    return exact_target_distribution(pair8[0], MEASURED, PROMPT, TOKENS)


def test_sd_exact_while_requests_join_and_leave(pair8, exact):
    target, draft = pair8
    c = churn(SDStrategy(target, draft, K), make_jobs(N_MEASURED, N_OTHER, seed=1), seed=1)
    check_churned(c, N_MEASURED)
    chi_square_check(c.samples, exact)


def test_ssd_exact_while_requests_join_and_leave(pair8, exact):
    """uniform:2 fan-out over 8 tokens: some outcomes are cached (hits), many are not (neural
    backup), so both kinds of speculation meet joining and leaving rows."""
    target, draft = pair8
    strategy = ssd_strategy(target, draft, K, {"fanout": "uniform:2", "transport": "thread"})
    try:
        c = churn(strategy, make_jobs(N_MEASURED, N_OTHER, seed=2), seed=2)
        stats = strategy.stats()
    finally:
        strategy.close()
    check_churned(c, N_MEASURED)
    assert 0.0 < stats["hit_rate"] < 1.0, stats["hit_rate"]
    chi_square_check(c.samples, exact)


class SlotOrderSD(SDStrategy):
    """A planted continuous-batching bug: the strategy runs its rows in slot order (contiguous
    cache rows) and returns their tokens in that order instead of the caller's. In a static
    batch the two orders agree (slots are handed out lowest first and rows only ever leave);
    once a request joins into a freed lower slot, requests get each other's tokens."""

    def step(self, seqs):
        return super().step(sorted(seqs, key=lambda s: s.slot))


def test_row_order_bug_fails_the_check(pair8, exact):
    target, draft = pair8
    n = 1000
    # The static batch hides the bug: one wave, a slot for every request.
    static = EngineCore(SlotOrderSD(target, draft, K), tiny_tokenizer(VOCAB), set(), CONTEXT, VOCAB, n,
                        len(PROMPT) + TOKENS)
    params = [SamplingParams(temperature=MEASURED.temperature, max_tokens=TOKENS, seed=70_000 + i) for i in range(n)]
    rids = [static.add_request(PROMPT, sp) for sp in params]
    outs = {}
    while static.has_unfinished():
        outs.update((o.request_id, tuple(o.request.output_ids)) for o in static.step() if o.finished)
    chi_square_check([outs[r] for r in rids], exact)
    # Churn exposes it. (A roomy max_model_len: a request's tokens now come from other rows, so
    # its slot's cache no longer tracks its own length.)
    c = churn(SlotOrderSD(target, draft, K), make_jobs(n, n * 3 // 8, seed=3), seed=3, max_model_len=64)
    assert len(c.samples) == n and c.joined_running > n // 2
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(c.samples, exact)
