"""Speculative speculative decoding (SSD, Saguaro): the target side.

Each round verifies the speculation the draft worker already sent (ONE target forward over
[t_prev, s_1..s_K] + the exact verifier shared with SD), tells the worker the outcome (k, t), and
receives the next round's speculation. While the target verifies, the worker prepares the
speculation cache for every possible outcome (worker.py, tree.py), so on a hit the next
speculation is ready at once; on a miss only the missed rows wait for the backup.

Sequences join and leave between rounds: a ``Start`` brings new ones to the worker (it set up its
caches once, at ``Setup``), and finished ones ride along as ``released`` ids in the next request.

Target cache invariant (as SD): every committed token except the last (``seq.last_token``).

The draft worker may fail; a request may not. The output distribution never depends on the draft,
so when the worker raises, dies, or misses its reply deadline, it is dropped (killed, never
waited on) and every sequence goes on from exactly where it was with SD on the in-process draft
(or AR without one): the round being verified is committed, and each sequence's draft cache is
filled from its committed tokens the first time SD drafts for it. Meanwhile a new worker starts in
the background (supervisor.py); once it is up, the running sequences are brought to it as new
ones whose prompt is everything committed so far, and rounds are SSD again.
"""
from __future__ import annotations

import logging
import threading
import time

import torch

from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.autoregressive import ARStrategy, prefill_target
from ssdecode.decoding.base import Health, StepOutput, Strategy
from ssdecode.decoding.sequence import Sequence
from ssdecode.decoding.speculative import SDStrategy, verify_proposals
from ssdecode.decoding.ssd.supervisor import WorkerSupervisor
from ssdecode.decoding.ssd.worker import DraftWorker
from ssdecode.decoding.ssd.worker_main import spawned_worker
from ssdecode.models.base import CausalLM
from ssdecode.params import InvalidParams
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors
from ssdecode.transport.dist import DistClient
from ssdecode.transport.messages import NewSequence, Outcome, Setup, Speculation, SpeculationBatch, Start, StatsRequest
from ssdecode.transport.thread import ThreadClient

log = logging.getLogger(__name__)


class SSDStrategy(Strategy):
    name = "ssd"

    def __init__(self, target: CausalLM, config: SSDConfig, draft: CausalLM | None = None, draft_source=None,
                 deploy: DraftDeployment | None = None, backend: str | None = None):
        """``draft``: the draft model (thread transport; for a spawned process it is shared with
        the worker through shared memory when no ``draft_source`` is given). ``draft_source``: what the
        worker process loads (a loader string, a picklable zero-argument factory, or a
        ``transport.model_source.StateDictFile``). ``deploy``: where the worker runs (default: a thread)."""
        deploy = deploy or DraftDeployment()
        if deploy.transport == "thread" and draft is None:
            raise InvalidParams("the thread transport needs the draft model")
        if deploy.transport == "process" and deploy.launch == "spawn" and draft is None and draft_source is None:
            raise InvalidParams("the process transport needs a draft source (or a draft model to share)")
        self.target, self.config, self.deploy, self.backend = target, config, deploy, backend
        self.draft, self.draft_source = draft, draft_source
        self.worker: WorkerSupervisor | None = None
        self.trunner = None
        self.speculations: dict[int, Speculation] = {}  # seq id -> its next speculation
        self.released: list[int] = []
        self.rounds = 0
        self.time_verify = self.time_wait = 0.0
        self.sizes = (0, 0)  # (num_slots, max_len) of setup
        self.fallback: SDStrategy | ARStrategy | None = None  # built at the worker's first failure
        self.degraded = False  # rounds run on the fallback (no worker now)
        self.adopted: set[int] = set()  # seq ids the fallback has taken over

    # -- lifecycle ---------------------------------------------------------------------------
    def _new_client(self, cancel: threading.Event):
        if self.deploy.transport == "thread":
            return ThreadClient(DraftWorker(self.draft))
        source = self.draft_source if self.draft_source is not None else self.draft
        return DistClient(source, self.deploy, self.target.device, entry=spawned_worker, cancel=cancel)

    def setup(self, num_slots: int, max_len: int) -> None:
        with self._closing_on_error():
            self.close()
            # Verification never writes past the context: step() trims speculations near its end.
            self.trunner = ModelRunner(self.target, num_slots, min(max_len, self.target.max_context), self.backend)
            self.trunner.capture(num_slots, list(range(1, self.config.k + 2)))  # verification (CUDA graphs)
            self.sizes = (num_slots, max_len)
            setup = Setup(self.config.to_dict(), num_slots, max_len, self.target.vocab_size, self.backend or "")
            self.worker = WorkerSupervisor(self._new_client, setup, self.deploy)
            self.worker.start()
            self.speculations, self.released, self.degraded, self.fallback = {}, [], False, None

    def health(self) -> Health:
        if self.worker is None:
            return Health()
        return Health(self.worker.failure if self.degraded else None, len(self.worker.failures),
                      self.worker.restarts)

    def cache_tokens_needed(self) -> int:
        return self.config.k + 1

    def release(self, seqs: list[Sequence]) -> None:
        for s in seqs:
            self.speculations.pop(s.seq_id, None)
            self.adopted.discard(s.seq_id)
            if not self.degraded:
                self.released.append(s.seq_id)

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()

    # -- decoding ----------------------------------------------------------------------------
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        with self._closing_on_error():
            first = prefill_target(self.trunner, seqs)
            if not self.degraded:
                self._ask(Start([NewSequence(s.seq_id, s.slot, list(s.prompt_ids), t, s.params, self._stream())
                                 for s, t in zip(seqs, first)], self._take_released()))
            return first

    def step(self, seqs: list[Sequence]) -> StepOutput:
        with self._closing_on_error():
            if self.degraded and self.worker.take_restarted():
                self._resume(seqs)
            if self.degraded:
                return self._fallback_step(seqs)
            speculations = [self.speculations[s.seq_id] for s in seqs]
            tokens, num_draft, point_mass, probs = self._batch(seqs, speculations)
            st = SamplingTensors.from_params([s.params for s in seqs], self.target.device)
            t0 = time.perf_counter()
            accepted, nxt = verify_proposals(self.trunner, seqs, tokens, probs, st,
                                             point_mass=point_mass, num_draft=num_draft)
            t1 = time.perf_counter()
            # the round is verified: its tokens are committed even if the worker fails now
            self._ask(Outcome([s.seq_id for s in seqs], accepted, nxt, self._take_released(), t1 - t0))
            t2 = time.perf_counter()
            self.rounds += 1
            self.time_verify += t1 - t0
            self.time_wait += t2 - t1
            committed = [speculation.tokens[:a] + [t] for speculation, a, t in zip(speculations, accepted, nxt)]
            return StepOutput(tokens=committed, proposed=num_draft, accepted=accepted,
                              hit=[s.hit for s in speculations], time_draft=t2 - t1, time_verify=t1 - t0)

    def _ask(self, request) -> None:
        """Send a Start or Outcome and store the speculations of the reply; on any failure of
        the worker, drop it and switch to the fallback."""
        new_tokens = sum(len(s.prompt_ids) for s in request.seqs) if isinstance(request, Start) else 0
        try:
            reply = self.worker.request(request, new_tokens)
        except Exception as e:
            self._fail(e)
        else:
            self._store(reply)

    def _fail(self, error: Exception) -> None:
        reason = self.worker.fail(error)
        if self.fallback is None:
            self.fallback = (SDStrategy(self.target, self.draft, self.config.k, backend=self.backend)
                             if self.draft is not None else ARStrategy(self.target, backend=self.backend))
            self.fallback.setup(*self.sizes, trunner=self.trunner)
        self.degraded, self.speculations, self.released = True, {}, []
        log.warning("the draft worker failed (%s); running sequences continue with %s, exactly",
                    reason, self.fallback.name.upper())

    def _resume(self, seqs: list[Sequence]) -> None:
        """Back to SSD on a restarted worker: each running sequence joins it as a new one whose
        prompt is everything committed but the last token (the target cache holds exactly that).
        The new worker draws from a draft random stream no earlier worker used: the committed
        tokens depend on the earlier draws, and replaying them would bias the speculation."""
        self.degraded = False
        self.adopted.clear()
        self._ask(Start([NewSequence(s.seq_id, s.slot, list(s.prompt_ids) + s.output_ids[:-1], s.last_token,
                                     s.params, self._stream()) for s in seqs]))

    def poll(self) -> None:
        """Between rounds: with no sequence on the fallback, a restarted worker is taken at once
        (else the next ``step`` takes it), so an idle server does not report itself degraded."""
        if self.degraded and not self.adopted and self.worker.take_restarted():
            self.degraded = False

    def _stream(self) -> int:
        return 1 + self.worker.restarts

    def _fallback_step(self, seqs: list[Sequence]) -> StepOutput:
        new = [s for s in seqs if s.seq_id not in self.adopted]
        if new and isinstance(self.fallback, SDStrategy):
            self.fallback.adopt(new)
        self.adopted.update(s.seq_id for s in new)
        return self.fallback.step(seqs)

    def _batch(self, seqs: list[Sequence], speculations: list[Speculation]):
        """Speculations as the verifier takes them: [B, W] tokens (W = longest), num_draft [B] (host)
        (trimmed so verification positions stay inside the context), point_mass [B], q [B, W, V]."""
        device = self.target.device
        room = [self.target.max_context - 1 - self.trunner.cache.lengths[s.slot] for s in seqs]
        num_draft = [max(0, min(len(speculation.tokens), r)) for speculation, r in zip(speculations, room)]
        width = max(num_draft, default=0)
        tokens = torch.zeros(len(seqs), width, dtype=torch.long)
        for b, speculation in enumerate(speculations):
            n = num_draft[b]
            tokens[b, :n] = torch.tensor(speculation.tokens[:n], dtype=torch.long)
        point_mass = torch.tensor([speculation.point_mass for speculation in speculations], dtype=torch.bool)
        probs = None
        if width and not all(speculation.point_mass for speculation in speculations):
            probs = torch.zeros(len(seqs), width, self.target.vocab_size, device=device)
            for b, speculation in enumerate(speculations):
                if speculation.probs is not None:
                    probs[b] = speculation.probs[:width].to(device)
        return tokens.to(device), num_draft, point_mass.to(device), probs

    def _store(self, reply: SpeculationBatch) -> None:
        if reply.probs is not None and reply.probs.is_cuda:
            # Made on the worker's stream (thread transport): keep its memory until our stream is done.
            reply.probs.record_stream(torch.cuda.current_stream(reply.probs.device))
        self.speculations.update(reply.unpack())

    def _take_released(self) -> list[int]:
        out, self.released = self.released, []
        return out

    def stats(self) -> dict:
        """Worker-side metrics (hit rate by k and batch size, T_p, T_b, miss rate by fan-out,
        the current fan-out and its estimates) plus the target side's round times."""
        out = {}
        if self.worker is not None and not self.degraded:
            try:
                out = dict(self.worker.request(StatsRequest()).data)
            except Exception as e:
                self._fail(e)
        if self.worker is not None and self.worker.failures:
            out.update({"draft_worker": "down" if self.degraded else "restarted",
                        "failures": len(self.worker.failures), "failure": self.worker.failures[-1],
                        "restarts": self.worker.restarts})
            if self.degraded:
                out["fallback"] = self.fallback.name
        out.update({"rounds": self.rounds, "time_verify_s": round(self.time_verify, 4),
                    "time_wait_draft_s": round(self.time_wait, 4)})
        return out

    def _closing_on_error(self):
        return _CloseOnError(self)


class _CloseOnError:
    """Any exception (KeyboardInterrupt included) inside a strategy call shuts the worker down:
    the request/reply stream is out of step afterwards, and no worker may outlive the strategy."""

    def __init__(self, strategy: SSDStrategy):
        self.strategy = strategy

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            try:
                self.strategy.close()
            except Exception:  # keep the original error
                log.exception("closing the draft worker after an error failed")
        return False
