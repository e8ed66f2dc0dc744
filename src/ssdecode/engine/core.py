"""The persistent engine core: requests join and leave between rounds (continuous batching).

Built once per strategy: the strategy's KV caches (and the SSD draft worker) are set up here for
``max_num_seqs`` slots of ``max_model_len`` tokens and never re-sized. ``add_request`` queues a
prompt, ``abort`` drops one, and ``step`` is one engine iteration:

    admit waiting requests into free slots and prefill them (their first token),
    run ONE round of the strategy over every running request (new ones included),
    commit each request's tokens up to its stop, retire the finished ones.

The core never branches on AR / SD / SSD. It is not thread-safe: one thread drives it (the
server runs it in a thread of its own and hands requests over through a queue).
"""
from __future__ import annotations

import itertools
import time

from ssdecode.config.settings import DEFAULT_MAX_NUM_SEQS, check_limits
from ssdecode.decoding.base import StepOutput, Strategy
from ssdecode.decoding.sequence import Sequence
from ssdecode.engine.detokenizer import IncrementalDetokenizer
from ssdecode.engine.metrics import RequestMetrics
from ssdecode.engine.request import Request, RequestOutput
from ssdecode.engine.scheduler import Scheduler
from ssdecode.engine.stopping import StopChecker
from ssdecode.kv.cache import ContextOverflow
from ssdecode.params import InvalidParams, SamplingParams
from ssdecode.sampling import make_generator

DEFAULT_MAX_MODEL_LEN = 4096
_request_ids = itertools.count()  # process-wide: ids stay unique across cores and configure()


class EngineCore:
    def __init__(self, strategy: Strategy, tokenizer, eos_ids: set[int], model_context: int,
                 vocab_size: int, max_num_seqs: int = DEFAULT_MAX_NUM_SEQS, max_model_len: int | None = None):
        """``max_model_len``: prompt + output tokens per request (default: the model's context,
        at most 4096). The strategy looks ahead (draft tokens verified past the last committed
        one), so slots hold that many rows more, within the model's context."""
        lookahead = strategy.cache_tokens_needed()
        limit = model_context - lookahead
        check_limits(max_num_seqs, max_model_len)
        if max_model_len is None:
            max_model_len = min(limit, DEFAULT_MAX_MODEL_LEN)
        if max_model_len > limit:
            raise InvalidParams(f"max_model_len must be in [2, {limit}] (the model's context of "
                                f"{model_context} less {lookahead} lookahead rows), got {max_model_len!r}")
        self.strategy, self.tokenizer, self.vocab_size = strategy, tokenizer, vocab_size
        self.stopper = StopChecker(eos_ids)
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        strategy.setup(max_num_seqs, max_model_len + lookahead)
        self.scheduler = Scheduler(max_num_seqs)
        self.run_metrics = RequestMetrics()  # counts summed over requests, busy time of steps

    # -- requests ------------------------------------------------------------------------------
    def add_request(self, prompt_ids: list[int], params: SamplingParams) -> int:
        """Queue a request; return its id. Refuses (InvalidParams / ContextOverflow) prompts
        that are empty, hold ids outside the vocabulary, or leave no room for one token."""
        self.check_prompt(prompt_ids)
        rid = next(_request_ids)
        seq = Sequence(rid, -1, list(prompt_ids), params, make_generator(params))
        self.scheduler.add(Request(seq, IncrementalDetokenizer(self.tokenizer), time.perf_counter()))
        return rid

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise InvalidParams("the prompt is empty")
        if any(not isinstance(t, int) or not 0 <= t < self.vocab_size for t in prompt_ids):
            raise InvalidParams(f"prompt token ids must be integers in [0, {self.vocab_size})")
        if len(prompt_ids) >= self.max_model_len:
            raise ContextOverflow(f"the prompt has {len(prompt_ids)} tokens; the context holds "
                                  f"{self.max_model_len} (prompt + at least 1 generated token)")

    def abort(self, request_id: int) -> bool:
        """Drop a waiting or running request (its slot is free for the next step). False if it
        is not here (finished already, or never added)."""
        req = self.scheduler.remove_waiting(request_id)
        if req is None:
            req = self.scheduler.running.get(request_id)
            if req is None:
                return False
            self.strategy.release([req.seq])
            self.scheduler.retire(req)
        req.finished, req.finish_reason = True, "abort"
        return True

    def has_unfinished(self) -> bool:
        return len(self.scheduler) > 0

    @property
    def num_waiting(self) -> int:
        return len(self.scheduler.waiting)

    @property
    def num_running(self) -> int:
        return len(self.scheduler.running)

    @property
    def num_free_slots(self) -> int:
        return len(self.scheduler.free)

    # -- one iteration ---------------------------------------------------------------------------
    def step(self) -> list[RequestOutput]:
        start = time.perf_counter()
        emitted: dict[int, tuple[Request, list[int]]] = {}  # request id -> (request, new tokens)
        admitted = self.scheduler.admit()
        if admitted:
            self._prefill(admitted, emitted)
        running = list(self.scheduler.running.values())
        if running:
            out = self.strategy.step([r.seq for r in running])
            self._record(running, out)
            for req, toks in zip(running, out.tokens):
                committed = self.stopper.commit(req, toks, self.max_model_len)
                emitted.setdefault(req.request_id, (req, []))[1].extend(committed)
            self._retire(running)
        self.run_metrics.time_total += time.perf_counter() - start
        return [RequestOutput(rid, toks, req.take_text(), req.finished, req.finish_reason, req)
                for rid, (req, toks) in emitted.items()]

    def _prefill(self, reqs: list[Request], emitted: dict) -> None:
        t0 = time.perf_counter()
        first = self.strategy.prefill([r.seq for r in reqs])
        now = time.perf_counter()
        self.run_metrics.time_prefill += now - t0
        for req, tok in zip(reqs, first):
            req.admitted = t0
            req.metrics.time_prefill = now - t0
            req.metrics.time_queue = t0 - req.arrival
            emitted[req.request_id] = (req, self.stopper.commit(req, [tok], self.max_model_len))
        self._retire(reqs)

    def _retire(self, reqs: list[Request]) -> None:
        now = time.perf_counter()
        done = [r for r in reqs if r.finished and r.request_id in self.scheduler.running]
        if not done:
            return
        self.strategy.release([r.seq for r in done])
        for req in done:
            self.scheduler.retire(req)
            req.metrics.generated = len(req.output_ids)
            req.metrics.time_total = now - req.admitted
            self.run_metrics.generated += req.metrics.generated

    def _record(self, reqs: list[Request], out: StepOutput) -> None:
        for i, req in enumerate(reqs):
            for m in (req.metrics, self.run_metrics):
                if out.proposed:
                    m.record_round(out.proposed[i], out.accepted[i])
                if out.hit:
                    m.record_speculation(out.hit[i], len(out.tokens[i]))
            req.metrics.time_draft += out.time_draft
            req.metrics.time_verify += out.time_verify
        self.run_metrics.time_draft += out.time_draft
        self.run_metrics.time_verify += out.time_verify

    def close(self) -> None:
        self.strategy.close()
