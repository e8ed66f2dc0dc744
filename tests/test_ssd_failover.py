"""The draft worker may fail; a request may not. A worker that raises, is killed (SIGKILL) or
hangs (SIGSTOP, caught by the round deadline) is dropped, and every sequence goes on exactly
from where it was: SD on the in-process draft, or AR without one. Greedy outputs equal the
reference; a chi-square test shows sampled outputs after a failover are still the target's."""
from __future__ import annotations

import os
import signal

from exactness import chi_square_check, exact_target_distribution
from ssd_support import greedy_reference, prompts_for, run, tiny_model
from ssdecode.decoding.ssd.config import SSDConfig
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.decoding.ssd.worker import DraftWorker
from ssdecode.engine.core import EngineCore
from ssdecode.params import SamplingParams
from ssdecode.transport.deploy import DraftDeployment
from tiny import tiny_tokenizer

TOKENS = 24


def raising_after(monkeypatch, outcomes: int) -> None:
    """The worker raises on its ``outcomes``-th Outcome (counted over all workers of the test)."""
    seen = [0]
    original = DraftWorker._outcome

    def outcome(self, msg):
        seen[0] += 1
        if seen[0] >= outcomes:
            raise RuntimeError("planted draft worker failure")
        return original(self, msg)
    monkeypatch.setattr(DraftWorker, "_outcome", outcome)


def step_with(strategy, prompts, params, between=None) -> list[list[int]]:
    """Run ``prompts`` through a core; ``between(step_number)`` runs after each step."""
    core = EngineCore(strategy, tiny_tokenizer(), set(), 1024, 24, len(prompts), 64)
    rids = [core.add_request(p, params) for p in prompts]
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
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft)
    try:
        out = run(strategy, prompts, SamplingParams(max_tokens=TOKENS))
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["draft_worker"] == "failed" and stats["fallback"] == "sd" and "planted" in stats["failure"]


def test_a_killed_worker_process_hands_over_to_ar_without_a_local_draft(target, draft):
    """No in-process draft (the worker was handed the model to load): the fallback is AR."""
    prompts = prompts_for(2, seed=5)
    deploy = DraftDeployment(transport="process", draft_threads=1)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=None, draft_spec=draft, deploy=deploy)
    pid = []

    def kill(n):
        if n == 2:
            pid.append(strategy.client.proc.pid)
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
    deploy = DraftDeployment(transport="process", draft_threads=1, round_timeout_s=1.0)
    strategy = SSDStrategy(target, SSDConfig(k=3, fanout="uniform:2"), draft=draft, deploy=deploy)
    procs = []

    def stop(n):
        if n == 2:
            procs.append(strategy.client.proc)
            os.kill(procs[0].pid, signal.SIGSTOP)
    try:
        out = step_with(strategy, prompts, SamplingParams(max_tokens=TOKENS), stop)
        stats = strategy.stats()
    finally:
        strategy.close()
    assert out == [greedy_reference(target, p, TOKENS) for p in prompts]
    assert stats["fallback"] == "sd"
    assert not procs[0].is_alive()  # killed, not left stopped


def test_sampling_stays_exact_across_a_failover(monkeypatch):
    """4000 rows, K = 2: the first round verifies the worker's speculation, then the worker fails
    on the first Outcome and SD (its draft cache filled from the committed tokens) drafts the
    rest. The first three tokens follow the target's exact distribution."""
    vocab, prompt, n = 8, [3, 7, 1], 4000
    target, draft = tiny_model(0, vocab=vocab), tiny_model(1, vocab=vocab)
    raising_after(monkeypatch, 1)
    strategy = SSDStrategy(target, SSDConfig(k=2, fanout="uniform:2"), draft=draft)
    rows = [SamplingParams(temperature=1.0, max_tokens=3, ignore_eos=True, seed=700 + i) for i in range(n)]
    try:
        samples = [tuple(o) for o in run(strategy, [prompt] * n, rows, vocab=vocab)]
        assert strategy.stats()["fallback"] == "sd"
    finally:
        strategy.close()
    chi_square_check(samples, exact_target_distribution(target, SamplingParams(temperature=1.0), prompt, 3))


def test_the_server_reports_degraded_and_keeps_serving(target, draft, monkeypatch):
    from server_support import call, client, running, tiny_llm
    from ssdecode.server.app import build_app

    raising_after(monkeypatch, 2)
    with running(build_app(tiny_llm("ssd", target, draft), "tiny")) as url:
        out = client(url).completions.create(model="tiny", prompt=[1, 2, 3], max_tokens=TOKENS, temperature=0,
                                             extra_body={"ignore_eos": True, "return_token_ids": True})
        assert out.choices[0].model_extra["token_ids"] == greedy_reference(target, [1, 2, 3], TOKENS)
        status, health = call(url, "GET", "/health")
        assert status == 200 and health["status"] == "degraded" and "planted" in health["degraded"]
        _, text = call(url, "GET", "/metrics")
        assert "ssdecode_degraded 1.0" in text
