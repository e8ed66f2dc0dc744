"""Which requests run: a FIFO waiting queue, the running set, and a free list of cache slots.

Every slot of the strategy's caches holds ``max_model_len`` tokens plus the strategy's lookahead,
and the engine refuses prompts that cannot fit, so a free slot is all a request needs: admission
never overcommits KV memory, and a request without a slot waits instead of failing.
"""
from __future__ import annotations

from collections import deque

from ssdecode.engine.request import Request


class Scheduler:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.free = list(range(num_slots - 1, -1, -1))  # pop() hands out the lowest slot first
        self.waiting: deque[Request] = deque()
        self.running: dict[int, Request] = {}  # request id -> request, in admission order

    def add(self, req: Request) -> None:
        self.waiting.append(req)

    def admit(self) -> list[Request]:
        """Waiting requests that get a slot now, oldest first."""
        new = []
        while self.waiting and self.free:
            req = self.waiting.popleft()
            req.seq.slot = self.free.pop()
            self.running[req.request_id] = req
            new.append(req)
        return new

    def retire(self, req: Request) -> None:
        del self.running[req.request_id]
        self.free.append(req.seq.slot)
        self.free.sort(reverse=True)

    def remove_waiting(self, request_id: int) -> Request | None:
        for req in self.waiting:
            if req.request_id == request_id:
                self.waiting.remove(req)
                return req
        return None

    def __len__(self) -> int:
        return len(self.waiting) + len(self.running)
