"""In-process transport: the draft worker runs in a thread, messages travel by reference through
two queues. PyTorch releases the GIL inside its kernels, so the worker's glue + tree decode runs
while the main thread runs the target's verification forward (on a GPU: on its own stream or
device; on a CPU: in a second OpenMP team, sharing the cores).
"""
from __future__ import annotations

import logging
import queue
import threading
import time

from ssdecode.transport.base import Channel, DraftClient, serve
from ssdecode.transport.messages import Shutdown

log = logging.getLogger(__name__)


class _QueueChannel(Channel):
    def __init__(self, inbox: queue.Queue, outbox: queue.Queue):
        self.inbox, self.outbox = inbox, outbox

    def recv(self):
        return self.inbox.get()

    def send(self, msg) -> None:
        self.outbox.put(msg)


class ThreadClient(DraftClient):
    def __init__(self, worker, join_timeout_s: float = 30.0):
        self.requests: queue.Queue = queue.Queue()
        self.replies: queue.Queue = queue.Queue()
        self.join_timeout_s = join_timeout_s
        self.thread = threading.Thread(target=self._run, args=(worker,), name="ssd-draft-worker", daemon=True)
        self.thread.start()

    def _run(self, worker) -> None:
        try:
            serve(worker, _QueueChannel(self.requests, self.replies))
        except BaseException:  # the loop itself broke: unblock the client
            log.exception("draft worker thread died")
            self.replies.put(None)

    def send(self, msg, timeout_s: float | None = None) -> None:  # a queue put never blocks
        if not self.thread.is_alive():
            raise RuntimeError("the draft worker thread is not running")
        self.requests.put(msg)

    def recv(self, timeout_s: float | None = None):
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            try:
                reply = self.replies.get(timeout=1.0 if deadline is None else
                                         max(0.0, min(1.0, deadline - time.monotonic())))
            except queue.Empty:
                if not self.thread.is_alive():
                    raise RuntimeError("the draft worker thread died") from None
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"the draft worker thread did not answer within {timeout_s:g} s") from None
                continue
            if reply is None:
                raise RuntimeError("the draft worker thread died")
            return reply

    def abandon(self) -> None:
        """A thread cannot be killed: ask it to stop and let it go (it is a daemon); its replies
        land in a queue nobody reads."""
        self.requests.put(Shutdown())

    def close(self) -> None:
        if self.thread.is_alive():
            self.requests.put(Shutdown())
            self.thread.join(self.join_timeout_s)
            if self.thread.is_alive():
                log.warning("draft worker thread did not stop within %.0f s", self.join_timeout_s)
