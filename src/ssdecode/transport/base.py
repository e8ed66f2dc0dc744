"""The transport seam: a client on the target side, a channel on the worker side, and the one
serve loop every transport runs the draft worker in.

The loop is what makes SSD overlap: the worker answers a request, and only THEN prepares the
speculation cache for the speculation it just sent (``worker.prepare``), while the target verifies
that speculation. The next request is read after the preparation, so a request never sees a
half-built cache.
"""
from __future__ import annotations

import logging
import traceback
from abc import ABC, abstractmethod

from ssdecode.transport.messages import DraftWorkerError, Shutdown, WorkerError

log = logging.getLogger(__name__)


class Channel(ABC):
    """The worker's end: blocking receive of a request, send of a reply."""

    @abstractmethod
    def recv(self): ...

    @abstractmethod
    def send(self, msg) -> None: ...


class DraftClient(ABC):
    """The target's end: one request, one reply."""

    @abstractmethod
    def send(self, msg, timeout_s: float | None = None) -> None:
        """Send a request; ``timeout_s`` as for ``recv`` (a send can block on a hung peer)."""

    @abstractmethod
    def recv(self, timeout_s: float | None = None):
        """The next reply; ``TimeoutError`` after ``timeout_s`` seconds (None: the transport's own
        limit), an error at once if the worker is gone."""

    def request(self, msg, timeout_s: float | None = None):
        self.send(msg, timeout_s)
        reply = self.recv(timeout_s)
        if isinstance(reply, WorkerError):
            raise DraftWorkerError(f"draft worker failed:\n{reply.message}")
        return reply

    @abstractmethod
    def close(self) -> None:
        """Stop the worker (send Shutdown, wait, force if needed). Idempotent."""

    @abstractmethod
    def abandon(self) -> None:
        """Give up on a worker that failed or missed a deadline: stop it without talking to it
        (it may be dead, hung or mid-message). Idempotent."""


def serve(worker, channel: Channel) -> None:
    """Answer requests until ``Shutdown``. After a failure every request gets the traceback, so
    the client raises instead of hanging; the worker keeps waiting for Shutdown."""
    failure: str | None = None
    while True:
        msg = channel.recv()
        if isinstance(msg, Shutdown):
            return
        if failure is not None:
            channel.send(WorkerError(failure))
            continue
        try:
            reply = worker.handle(msg)
        except Exception:
            failure = traceback.format_exc()
            log.error("draft worker failed:\n%s", failure)
            channel.send(WorkerError(failure))
            continue
        channel.send(reply)
        try:
            worker.prepare()  # overlaps with the target's verification of what was just sent
        except Exception:
            failure = traceback.format_exc()
            log.error("draft worker failed while preparing the speculation cache:\n%s", failure)
