"""The async bridge between the HTTP server and the engine core.

The core is not thread-safe and its ``step`` blocks for a whole round, so ONE thread of its own
owns it (and the strategy, whose SSD stats are a round trip to the draft worker). The event loop
never touches the core: it queues commands (add a request group, abort one, run a function) under
a condition variable; the engine thread applies them between steps, steps while anything is
unfinished, and hands each ``RequestOutput`` to the asyncio queue of the group that owns it
(``loop.call_soon_threadsafe``). With nothing to do it sleeps on the condition, never spins.

Admission control: at most ``max_num_seqs + max_queue`` requests are in flight (running or
waiting for a slot); one more is refused with ``QueueFull`` (HTTP 429) rather than queued.

Shutdown: ``stop`` refuses new requests and ends the engine thread, which aborts every request in
flight (their groups raise ``EngineStopped``) and closes the LLM, shutting the SSD draft worker
down, from the thread that drove it.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import threading
import time
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from ssdecode.engine.request import RequestOutput
from ssdecode.params import SamplingParams
from ssdecode.server.metrics import ServerMetrics
from ssdecode.server.state import EngineState

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.5  # how often an idle engine without its SSD draft worker looks for a restarted one


class QueueFull(Exception):
    """Every slot is busy and the waiting queue holds ``max_queue`` requests."""


class EngineStopped(Exception):
    """The engine is shutting down (or failed) and takes no more requests."""


@dataclass
class _Member:
    """One request of a group, as the engine thread tracks it."""

    request_id: int | None = None  # set by the engine thread when the core accepts it
    generated: int = 0
    last_token_at: float | None = None


class RequestGroup:
    """The ``n`` requests of one API call (its choices), sharing one asyncio queue.

    Iterate for ``(index, RequestOutput)`` until every member finished; leaving ``async with``
    early (error, client gone, cancellation) aborts the unfinished members and frees their slots.
    """

    def __init__(self, engine: AsyncEngine, prompt_ids: list[int], params: list[SamplingParams]):
        self.engine, self.prompt_ids, self.params = engine, prompt_ids, params
        self.loop = asyncio.get_running_loop()
        self.queue: asyncio.Queue = asyncio.Queue()  # (index, RequestOutput) | Exception
        self.arrival = time.perf_counter()
        self.members = [_Member() for _ in params]
        self.unfinished = len(params)  # as the consumer has seen them

    async def __aenter__(self) -> RequestGroup:
        return self

    async def __aexit__(self, *exc) -> None:
        if self.unfinished:
            self.engine.abort(self)

    def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]:
        return self._outputs()

    async def _outputs(self):
        while self.unfinished:
            item = await self.queue.get()
            if isinstance(item, Exception):
                raise item
            index, out = item
            if out.finished:
                self.unfinished -= 1
            yield index, out

    def deliver(self, item) -> None:
        """From the engine thread: hand an output (or the error that ends the group) over."""
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the event loop is closed: nobody is listening any more
            log.debug("dropped an output for a closed event loop")


class AsyncEngine:
    def __init__(self, llm, max_queue: int, metrics: ServerMetrics):
        if not isinstance(max_queue, int) or max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {max_queue!r}")
        self.llm, self.core, self.metrics = llm, llm.core, metrics
        self.capacity = self.core.max_num_seqs + max_queue
        self._cv = threading.Condition()
        self._commands: list[Callable[[], None]] = []  # run on the engine thread, in order
        self._in_flight = 0  # requests added and not finished (guarded by _cv)
        self._stopping = False
        self._closed = False  # close() closed the LLM itself (the engine thread never started)
        self._owners: dict[int, tuple[RequestGroup, int]] = {}  # engine thread only
        self._thread = threading.Thread(target=self._run, name="ssdecode-engine", daemon=True)
        self.state = EngineState(free_slots=self.core.num_free_slots)

    # -- event loop side (thread-safe) -----------------------------------------------------------
    def start(self) -> None:
        self._thread.start()

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def max_num_seqs(self) -> int:
        return self.core.max_num_seqs

    @property
    def accepting(self) -> bool:
        return not self._stopping

    def check_prompt(self, prompt_ids: list[int]) -> None:
        """The core's prompt check (InvalidParams / ContextOverflow); it reads only settings fixed
        at construction, so it is safe off the engine thread."""
        self.core.check_prompt(prompt_ids)

    def submit(self, prompt_ids: list[int], params: list[SamplingParams]) -> RequestGroup:
        """Queue one request per SamplingParams over the same prompt (call from the event loop)."""
        group = RequestGroup(self, prompt_ids, params)
        with self._cv:
            if self._stopping:
                raise EngineStopped("the engine takes no more requests (shutting down, or failed: see /health)")
            if self._in_flight + len(params) > self.capacity:
                raise QueueFull(f"the server is at capacity ({self._in_flight} requests in flight, "
                                f"at most {self.capacity}); retry later")
            self._in_flight += len(params)
            self._commands.append(lambda: self._add(group))
            self._cv.notify()
        return group

    def abort(self, group: RequestGroup) -> None:
        with self._cv:
            self._commands.append(lambda: self._abort(group, None))
            self._cv.notify()

    async def call(self, fn: Callable):
        """Run ``fn()`` on the engine thread between steps; its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def run():
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except Exception as e:
                    future.set_exception(e)
        with self._cv:
            if self._stopping or not self._thread.is_alive():
                raise EngineStopped("the engine is not running")
            self._commands.append(run)
            self._cv.notify()
        return await asyncio.wrap_future(future)

    def stop(self) -> None:
        """Refuse new requests, abort those in flight, and end the engine thread (which closes
        the LLM). Returns at once; ``close`` waits."""
        with self._cv:
            self._stopping = True
            self._cv.notify()

    def close(self) -> None:
        """Abort what is in flight, close the LLM (on the engine thread if it ever started) and
        wait for that thread. Idempotent; blocks, so not for the event loop itself."""
        self.stop()
        if self._thread.ident is None:  # never started: nothing else will close the LLM
            with self._cv:
                closing, self._closed = not self._closed, True
            if closing:
                self.llm.close()
        else:
            self._thread.join()

    # -- engine thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        error: Exception | None = None
        try:
            while self._iterate():
                pass
        except Exception as e:
            log.exception("the engine loop failed")
            error = e
        finally:
            with self._cv:
                self._stopping = True
                leftover, self._commands = self._commands, []
            # the final state first: a client told of the failure below may ask /health at once
            self.state = EngineState(totals=self.state.totals, failed=error is not None)
            reason = EngineStopped(f"the engine failed: {error}" if error else "the server is shutting down")
            for command in leftover:  # pending calls get their answer; adds are aborted below
                self._run_command(command)
            for group in {g for g, _ in self._owners.values()}:
                self._abort(group, reason)
            try:
                self.llm.close()
            except Exception:
                log.exception("closing the LLM failed")

    def _iterate(self) -> bool:
        with self._cv:
            while not (self._commands or self._stopping or self.core.has_unfinished()):
                if self.state.degraded is None:
                    self._cv.wait()
                elif not self._cv.wait(IDLE_POLL_S):  # idle without a draft worker: is one back?
                    self.llm.poll()
                    self._publish()
            commands, self._commands = self._commands, []
            stopping = self._stopping
        for command in commands:
            self._run_command(command)
        if stopping:
            return False
        outputs = self.core.step() if self.core.has_unfinished() else []
        self._publish()  # before the outputs: a client that got its answer sees its slot free
        self._dispatch(outputs)
        return True

    @staticmethod
    def _run_command(command: Callable[[], None]) -> None:
        try:
            command()
        except Exception:
            log.exception("an engine command failed")

    def _add(self, group: RequestGroup) -> None:
        added = 0
        try:
            for member, params in zip(group.members, group.params):
                member.request_id = self.core.add_request(group.prompt_ids, params)
                self._owners[member.request_id] = (group, added)
                added += 1
        except Exception as e:  # the event loop checked the prompt first; this is unexpected
            for i in range(added, len(group.members)):
                self._finish(group, i, "error")
            self._abort(group, e)

    def _abort(self, group: RequestGroup, error: Exception | None) -> None:
        """Abort the group's unfinished members; ``error``: what its consumer raises."""
        for i, member in enumerate(group.members):
            if self._owners.pop(member.request_id, None) is not None:
                try:
                    self.core.abort(member.request_id)
                except Exception:  # a failed core: the slot does not matter any more
                    log.exception("aborting request %s failed", member.request_id)
                self._finish(group, i, "abort")
        if error is not None:
            group.deliver(error)

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        now = time.perf_counter()
        for out in outputs:
            owner = self._owners.get(out.request_id)
            if owner is None:
                continue
            group, i = owner
            member = group.members[i]
            if out.new_token_ids:
                if member.last_token_at is None:
                    self.metrics.first_token(now - group.arrival)
                else:
                    self.metrics.next_tokens(now - member.last_token_at, len(out.new_token_ids))
                member.last_token_at = now
                member.generated += len(out.new_token_ids)
            if out.finished:
                del self._owners[out.request_id]
                self._finish(group, i, out.finish_reason)
            group.deliver((i, out))

    def _finish(self, group: RequestGroup, index: int, reason: str) -> None:
        with self._cv:
            self._in_flight -= 1
        self.metrics.request_finished(reason, len(group.prompt_ids), group.members[index].generated)

    def _publish(self) -> None:
        core = self.core
        health = self.llm.health()
        self.state = EngineState(core.num_running, core.num_waiting, core.num_free_slots,
                                 copy.deepcopy(core.run_metrics), False, health.degraded,
                                 health.worker_failures, health.worker_restarts)

