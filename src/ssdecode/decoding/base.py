"""The strategy seam: the engine loop never branches on AR / SD / SSD.

A strategy is built by ``decoding/build.py`` (``build_strategy``, the only place a mode becomes a
strategy) and is the engine's whole view of decoding: besides the rounds, it reports its health
(``health``: degraded or not, draft worker failures and restarts), does its background work when
the engine is idle (``poll``) and gives its own metrics (``stats``).

A strategy owns the models' runners (and their KV caches) for the sequences it is given. ``prefill`` commits the
first token of each new sequence; ``step`` runs one round (one target forward) for the active
sequences and returns what each committed, in order. The engine trims at EOS / stop strings /
max_tokens, so a strategy may return tokens past a stop; they are never emitted.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field

from ssdecode.decoding.sequence import Sequence


@dataclass
class StepOutput:
    tokens: list[list[int]]  # [row] committed tokens this round (accepted draft tokens + 1)
    proposed: list[int] = field(default_factory=list)  # [row] draft tokens verified (empty: AR)
    accepted: list[int] = field(default_factory=list)  # [row] of those, accepted
    hit: list[bool] = field(default_factory=list)  # [row] SSD: speculation came from the cache
    time_draft: float = 0.0  # seconds the target side spent drafting / waiting for the draft
    time_verify: float = 0.0  # seconds in the target forward + verification


@dataclass(frozen=True)
class Health:
    degraded: str | None = None  # why rounds run without a part of the strategy (SSD: its draft worker)
    worker_failures: int = 0  # draft worker failures so far
    worker_restarts: int = 0  # draft workers brought up again after a failure


class Strategy(ABC):
    name: str
    backend: str | None = None  # the model runners' attention backend (runtime/runner.py); None: by device

    @abstractmethod
    def setup(self, num_slots: int, max_len: int) -> None:
        """(Re)allocate KV caches for ``num_slots`` sequences of up to ``max_len`` tokens."""

    @abstractmethod
    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Fill caches with the prompts; return the first committed token of each sequence."""

    @abstractmethod
    def step(self, seqs: list[Sequence]) -> StepOutput:
        """One round for the active sequences (all prefilled, none finished)."""

    def release(self, seqs: list[Sequence]) -> None:
        """These sequences finished; free what they hold (slots, worker state)."""

    def close(self) -> None:
        """Stop background workers; the strategy is not used afterwards."""

    def health(self) -> Health:
        """Whether every part of the strategy serves (the output distribution never depends on it)."""
        return Health()

    def poll(self) -> None:
        """Background work while the engine is idle between rounds (SSD: take a restarted worker
        back, so an idle server does not stay degraded)."""

    def stats(self) -> dict:
        """Strategy-level metrics the engine cannot see (SSD: hit rate by k, T_p, fan-out)."""
        return {}

    def cache_tokens_needed(self) -> int:
        """KV rows a sequence may need beyond prompt + max_tokens (draft tokens, tree scratch)."""
        return 0
