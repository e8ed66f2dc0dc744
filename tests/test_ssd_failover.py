"""The draft worker may fail; a request may not. A worker that raises, is killed (SIGKILL) or
hangs (SIGSTOP, caught by the round deadline) is dropped, and every sequence goes on exactly
from where it was: SD on the in-process draft, or AR without one, until a worker restarted in the
background takes the sequences back. Greedy outputs equal the reference; a chi-square test shows
sampled outputs across a failover and a return to SSD are still the target's."""
from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from exactness import chi_square_check, exact_target_distribution
from ssd_support import greedy_reference, prompts_for, run, tiny_model
from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.ssd import supervisor
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.decoding.ssd.worker import DraftWorker
from ssdecode.engine.core import EngineCore
from ssdecode.params import SamplingParams
from tiny import tiny_tokenizer

TOKENS = 24
NO_RESTART = DraftDeployment(max_restarts=0)


@pytest.fixture
def instant_restarts(monkeypatch):
    """No backoff: a failed worker's replacement starts at once."""
    monkeypatch.setattr(supervisor, "BACKOFF_CAP_S", 0.0)


def waited_for_restart(strategy, timeout_s: float = 60.0) -> bool:
    """Between steps: if the strategy runs without a worker, wait until the restart attempt
    ended (so the next step takes the new worker). True if it waited."""
    restart = strategy.worker._restart if strategy.degraded else None
    deadline = time.monotonic() + timeout_s
    while restart is not None and not restart.done():
        assert time.monotonic() < deadline, "the draft worker did not restart"
        time.sleep(0.05)
    return restart is not None


def raising_after(monkeypatch, outcomes: int, once: bool = False) -> None:
    """The worker raises on its ``outcomes``-th Outcome and every later one (``once``: only that
    one), counted over all workers of the test."""
    seen = [0]
    original = DraftWorker._outcome

    def outcome(self, msg):
        seen[0] += 1
        if seen[0] == outcomes or (seen[0] > outcomes and not once):
            raise RuntimeError("planted draft worker failure")
        return original(self, msg)
    monkeypatch.setattr(DraftWorker, "_outcome", outcome)


def step_with(strategy, prompts, params, between=None, seeds: int | None = None) -> list[list[int]]:
    """Run ``prompts`` through a core; ``between(step_number)`` runs after each step. ``seeds``:
    request i gets seed ``seeds + i``."""
    core = EngineCore(strategy, tiny_tokenizer(), set(), 1024, 24, len(prompts), 64)
    rids = [core.add_request(p, params if seeds is None else replace(params, seed=seeds + i))
            for i, p in enumerate(prompts)]
    done, n = {}, 0
    while core.has_unfinished():
        done.update((o.request_id, o.request.output_ids) for o in core.step() if o.finished)
        n += 1
        if between is not None:
            between(n)
    return [done[r] for r in rids]


def test_a_raising_worker_hands_over_to_sd(target, draft, monkeypatch):
    raising_after(monkeypatch, 3)
    prompts = prompts_for(3, seed=4)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft, deploy=NO_RESTART)
    try:
        out = run(strategy, prompts, SamplingParams(max_tokens=TOKENS))
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["draft_worker"] == "down" and stats["fallback"] == "sd" and "planted" in stats["failure"]
    assert stats["failures"] == 1 and stats["restarts"] == 0


def test_a_restarted_worker_takes_the_sequences_back(target, draft, monkeypatch, instant_restarts):
    """The first worker raises on its 3rd Outcome; its replacement serves the rest in SSD (its
    own Start brings every running sequence with what it committed so far)."""
    raising_after(monkeypatch, 3, once=True)
    prompts = prompts_for(3, seed=4)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft)
    rounds = []
    try:
        out = step_with(strategy, prompts, SamplingParams(max_tokens=TOKENS),
                        lambda n: rounds.append(strategy.rounds) if waited_for_restart(strategy) else None)
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["draft_worker"] == "restarted" and stats["restarts"] == 1 and stats["failures"] == 1
    assert "fallback" not in stats and strategy.rounds > rounds[0]  # SSD rounds after the restart


def test_a_worker_that_keeps_failing_is_given_up_on(target, draft, monkeypatch, instant_restarts):
    raising_after(monkeypatch, 1)  # every worker raises on its first Outcome
    prompts = prompts_for(2, seed=7)
    deploy = DraftDeployment(max_restarts=2)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft, deploy=deploy)
    try:
        out = step_with(strategy, prompts, SamplingParams(max_tokens=TOKENS), lambda n: waited_for_restart(strategy))
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["failures"] == 3 and stats["restarts"] == 2 and stats["draft_worker"] == "down"
    assert strategy.worker._restart is None  # no fourth worker


def test_the_reply_deadline_follows_measured_replies():
    d = supervisor.ReplyDeadline(None)
    first_start = d.limit(1000)
    assert first_start == supervisor.AUTO_BASE_S + supervisor.AUTO_FACTOR * supervisor.PREFILL_PRIOR_S * 1000
    d.observe(0.5)  # a round
    d.observe(2.5, new_tokens=1000)  # a Start: 2 ms per prompt token beyond the round
    assert d.limit() == pytest.approx(supervisor.AUTO_BASE_S + supervisor.AUTO_FACTOR * 0.5)
    assert d.limit(1000) == pytest.approx(supervisor.AUTO_BASE_S + supervisor.AUTO_FACTOR * 2.5)
    assert supervisor.ReplyDeadline(3.0).limit(10 ** 6) == 3.0  # the user's limit is fixed


def test_a_killed_worker_process_hands_over_to_ar_without_a_local_draft(target, draft):
    """No in-process draft (the worker was handed the model to load): the fallback is AR."""
    prompts = prompts_for(2, seed=5)
    deploy = DraftDeployment(transport="process", draft_threads=1, max_restarts=0)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=None, draft_source=draft, deploy=deploy)
    pid = []

    def kill(n):
        if n == 2:
            pid.append(strategy.worker.client.proc.pid)
            os.kill(pid[0], signal.SIGKILL)
    try:
        out = step_with(strategy, prompts, SamplingParams(max_tokens=TOKENS), kill)
        stats = strategy.stats()
    finally:
        strategy.close()
    assert pid and out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["fallback"] == "ar" and "exited" in stats["failure"]


def test_a_hung_worker_misses_its_deadline_and_is_killed(target, draft):
    prompts = prompts_for(2, seed=6)
    deploy = DraftDeployment(transport="process", draft_threads=1, round_timeout_s=1.0, max_restarts=0)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft, deploy=deploy)
    procs = []

    def stop(n):
        if n == 2:
            procs.append(strategy.worker.client.proc)
            os.kill(procs[0].pid, signal.SIGSTOP)
    try:
        out = step_with(strategy, prompts, SamplingParams(max_tokens=TOKENS), stop)
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["fallback"] == "sd"
    assert not procs[0].is_alive()  # killed, not left stopped


def test_sampling_stays_exact_across_a_failover_and_back(monkeypatch, instant_restarts):
    """4000 rows, K = 2, 4 tokens: the first round verifies the worker's speculation, the worker
    fails on the first Outcome, SD (its draft cache filled from the committed tokens) drafts the
    next round, then a restarted worker takes the rows back. The tokens follow the target's
    exact distribution."""
    vocab, prompt, n, tokens = 8, [3, 7, 1], 4000, 4
    target, draft = tiny_model(0, vocab=vocab), tiny_model(1, vocab=vocab)
    raising_after(monkeypatch, 1, once=True)
    strategy = SSDStrategy(target, SSDConfig(k=2, fanout="uniform:2"), draft=draft)
    rows = SamplingParams(temperature=1.0, max_tokens=tokens, ignore_eos=True)
    try:
        samples = [tuple(o) for o in step_with(strategy, [prompt] * n, rows, lambda i: waited_for_restart(strategy),
                                                seeds=700)]
        assert strategy.stats()["restarts"] == 1
    finally:
        strategy.close()
    chi_square_check(samples, exact_target_distribution(target, SamplingParams(temperature=1.0), prompt, tokens))


def test_the_server_reports_degraded_and_keeps_serving(target, draft, monkeypatch):
    from server_support import call, client, running, tiny_llm
    from ssdecode.server.app import build_app

    raising_after(monkeypatch, 2)
    llm = tiny_llm("ssd", target, draft, ssd={"transport": "thread", "max_restarts": 0})
    with running(build_app(llm, "tiny")) as url:
        out = client(url).completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=TOKENS, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
        assert out.choices[0].model_extra["token_ids"] == greedy_reference(target, [1, 2, 3], TOKENS)
        status, health = call(url, "GET", "/health")
        assert status == 200 and health["status"] == "degraded" and "planted" in health["degraded"]
        _, text = call(url, "GET", "/metrics")
        assert "ssdecode_degraded 1.0" in text and "ssdecode_draft_worker_failures_total 1.0" in text


def test_the_server_is_healthy_again_once_a_worker_restarted(target, draft, monkeypatch, instant_restarts):
    from server_support import call, client, running, tiny_llm
    from ssdecode.server.app import build_app

    raising_after(monkeypatch, 2, once=True)
    with running(build_app(tiny_llm("ssd", target, draft), "tiny")) as url:
        out = client(url).completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=TOKENS, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
        assert out.choices[0].model_extra["token_ids"] == greedy_reference(target, [1, 2, 3], TOKENS)
        deadline = time.monotonic() + 30
        while call(url, "GET", "/health")[1]["status"] != "ok":  # idle: the engine takes the new worker
            assert time.monotonic() < deadline, "still degraded 30 s after the failure"
            time.sleep(0.1)
        _, text = call(url, "GET", "/metrics")
        assert "ssdecode_draft_worker_failures_total 1.0" in text and "ssdecode_draft_worker_restarts_total 1.0" in text

