"""Keeps SSD's draft worker for the target side: starts it, bounds how long any reply may take,
drops it when it fails, and starts a new one in the background.

Why a supervisor: the target never needs the draft to be correct (the output distribution does
not depend on it), only to be fast. So a worker that dies, raises or hangs costs speed, never a
request: the strategy switches its sequences to a fallback at once, and this class brings a
fresh worker up behind the scenes (with backoff, giving up after ``max_restarts`` failures in a
row) for the strategy to switch back to between rounds.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Callable

from ssdecode.config.deploy import DraftDeployment
from ssdecode.transport.base import DraftClient
from ssdecode.transport.messages import Outcome, Ready, Setup

log = logging.getLogger(__name__)

AUTO_BASE_S = 5.0  # the automatic deadline: this much, plus
AUTO_FACTOR = 10.0  # this many times the slowest reply seen for the same work
PREFILL_PRIOR_S = 0.02  # per prompt token the worker must prefill, until a Start was measured
# a worker that served this many rounds has shown it can: the restart backoff and the count of
# failures in a row start over (a worker that keeps dying before it serves is given up on)
HEALED_ROUNDS = 3
BACKOFF_CAP_S = 30.0
STOP_JOIN_S = 5.0


class ReplyDeadline:
    """Seconds the target waits for one reply: the user's fixed limit, or (auto) a few seconds
    plus a multiple of what replies have taken: the slowest round so far, plus, for a request
    that brings new sequences, its prompt tokens times the slowest prefill rate seen."""

    def __init__(self, fixed_s: float | None):
        self.fixed_s = fixed_s
        self.round_s = 0.0
        self.per_token_s = PREFILL_PRIOR_S
        self._prefill_measured = False

    def limit(self, new_tokens: int = 0) -> float:
        if self.fixed_s is not None:
            return self.fixed_s
        return AUTO_BASE_S + AUTO_FACTOR * (self.round_s + self.per_token_s * new_tokens)

    def observe(self, seconds: float, new_tokens: int = 0) -> None:
        if not new_tokens:
            self.round_s = max(self.round_s, seconds)
            return
        rate = max(0.0, seconds - self.round_s) / new_tokens
        self.per_token_s = max(self.per_token_s, rate) if self._prefill_measured else rate
        self._prefill_measured = True


Connect = Callable[[threading.Event], DraftClient]  # a new client; the event cancels a slow start


class WorkerSupervisor:
    def __init__(self, connect: Connect, setup: Setup, deploy: DraftDeployment):
        """``connect(cancel)``: a new, connected worker client. ``setup``: the Setup every new
        worker gets."""
        self._connect, self._setup = connect, setup
        self.deadline = ReplyDeadline(deploy.round_timeout_s)
        self.max_restarts = deploy.max_restarts
        self.client: DraftClient | None = None
        self.failures: list[str] = []  # every failure, oldest first
        self.restarts = 0  # workers brought up after a failure
        self._streak = 0  # failures since a worker last served HEALED_ROUNDS rounds
        self._rounds = 0  # rounds the current worker served
        self._restart: _Restart | None = None
        self._finalizer = None
        self.startup_s = 0.0  # how long the first worker took to come up (connect + Setup)

    @property
    def failure(self) -> str | None:
        """Why there is no worker now (None while one serves)."""
        return None if self.client is not None else (self.failures[-1] if self.failures else None)

    def start(self) -> None:
        """The first worker, in the foreground: a failure here is an error of the caller."""
        t0 = time.perf_counter()
        self._adopt(_started(self._connect(threading.Event()), self._setup))
        self.startup_s = time.perf_counter() - t0

    def request(self, msg, new_tokens: int = 0):
        """The worker's reply to ``msg`` within the deadline; raises what the transport raised
        (the caller then calls ``fail``)."""
        t0 = time.perf_counter()
        reply = self.client.request(msg, timeout_s=self.deadline.limit(new_tokens))
        self.deadline.observe(time.perf_counter() - t0, new_tokens)
        if isinstance(msg, Outcome):
            self._rounds += 1
            if self._rounds == HEALED_ROUNDS:
                self._streak = 0
        return reply

    def fail(self, error: BaseException) -> str:
        """Drop the worker without talking to it; schedule a new one. Returns the reason."""
        client, self.client = self.client, None
        if self._finalizer is not None:
            self._finalizer.detach()
        client.abandon()
        last_line = (str(error).strip().splitlines() or [""])[-1]  # a worker's traceback ends in its error
        self._record(f"{type(error).__name__}: {last_line}")
        return self.failures[-1]

    def take_restarted(self) -> bool:
        """True when a restarted worker is up (Setup answered): it is now ``client``. A start
        that takes far longer than the first one did (a worker hung while loading) is dropped."""
        restart = self._restart
        if restart is None:
            return False
        if not restart.done():
            limit = AUTO_BASE_S + AUTO_FACTOR * self.startup_s
            if not restart.overdue(limit):
                return False
            restart.stop()
            restart.error = TimeoutError(f"the new draft worker did not come up within {limit:.0f} s")
        self._restart = None
        if restart.error is not None:
            log.warning("the draft worker could not be restarted: %s: %s", type(restart.error).__name__,
                        restart.error)
            self._record(f"restart failed: {type(restart.error).__name__}: {restart.error}")
            return False
        self.restarts += 1
        self._adopt(restart.client)
        log.warning("draft worker restarted (%d restarts); sequences return to SSD", self.restarts)
        return True

    def close(self) -> None:
        if self._restart is not None:
            restart, self._restart = self._restart, None
            restart.stop()
        if self.client is not None:
            client, self.client = self.client, None
            if self._finalizer is not None:
                self._finalizer.detach()
            client.close()

    def _adopt(self, client: DraftClient) -> None:
        self.client, self._rounds = client, 0
        self._finalizer = weakref.finalize(self, client.close)

    def _record(self, reason: str) -> None:
        self.failures.append(reason)
        self._streak += 1
        if self._streak > self.max_restarts:
            log.error("the draft worker failed %d times in a row (%s); not restarting it again",
                      self._streak, reason)
            return
        delay = min(BACKOFF_CAP_S, 2.0 ** (self._streak - 1))
        log.info("restarting the draft worker in %.0f s", delay)
        self._restart = _Restart(self._connect, self._setup, delay)


def _started(client: DraftClient, setup: Setup) -> DraftClient:
    try:
        reply = client.request(setup)
        if not isinstance(reply, Ready):
            raise RuntimeError(f"the draft worker answered Setup with {type(reply).__name__}")
    except BaseException:
        client.abandon()
        raise
    return client


class _Restart:
    """One background attempt: wait ``delay_s``, connect, Setup. ``stop`` cancels it and drops a
    worker that is coming up (or came up) too late to be used."""

    def __init__(self, connect: Connect, setup: Setup, delay_s: float):
        self.cancel = threading.Event()
        self.begins = time.monotonic() + delay_s
        self.lock = threading.Lock()
        self.client: DraftClient | None = None  # connected; ready once the thread is done
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(connect, setup, delay_s),
                                       name="ssd-draft-restart", daemon=True)
        self.thread.start()

    def _run(self, connect: Connect, setup: Setup, delay_s: float) -> None:
        if self.cancel.wait(delay_s):
            return
        try:
            client = connect(self.cancel)
            with self.lock:
                if self.cancel.is_set():
                    client.abandon()
                    return
                self.client = client
            _started(client, setup)
        except BaseException as e:
            self.error, self.client = e, None

    def done(self) -> bool:
        return not self.thread.is_alive()

    def overdue(self, limit_s: float) -> bool:
        return time.monotonic() > self.begins + limit_s

    def stop(self) -> None:
        self.cancel.set()
        with self.lock:
            client, self.client = self.client, None
        if client is not None:
            client.abandon()  # never served a request: nothing to shut down gracefully
        self.thread.join(STOP_JOIN_S)
