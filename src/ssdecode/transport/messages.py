"""Typed messages between the target side (SSDStrategy) and the draft worker.

One request and one reply per round: ``Outcome`` -> ``SpeculationBatch``. A session starts with
``Setup`` -> ``Ready``; new sequences arrive in ``Start`` -> ``SpeculationBatch``; ``Stats`` may be
asked for between rounds; ``Shutdown`` has no reply. Any request may be answered by
``WorkerError`` (the worker then only waits for ``Shutdown``).

Vocabulary (ssd-algorithm.md): a speculation is s_1..s_K with the q_i each token was sampled from;
the outcome of a round is (k, t): k accepted draft tokens and the recovery/bonus token t; a hit
means the speculation came from the speculation cache (a tree branch prepared during the
previous verification), a miss that the backup speculator produced it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssdecode.params import SamplingParams


@dataclass
class Setup:
    config: dict  # the SSD algorithm settings as plain data (decoding.ssd.config.SSDConfig.to_dict)
    num_slots: int  # cache slots (sequence slots are < num_slots)
    max_len: int  # committed tokens + verification room per sequence (the target cache's length)
    vocab_size: int  # the target's vocabulary: draft logits are cut / padded to it
    backend: str = ""  # the draft runner's attention backend (runtime/runner.py); "": by device


@dataclass
class Ready:
    vocab_size: int  # the draft model's own vocabulary size
    cache_len: int  # rows of the draft KV cache per slot (incl. tree scratch)


@dataclass
class NewSequence:
    seq_id: int
    slot: int
    prompt_ids: list[int]
    first_token: int  # the first committed token, sampled by the target at prefill
    params: SamplingParams  # only temperature, top_k, top_p, seed matter to the draft
    # the draft's random stream (sampling.make_generator): a worker that takes over a sequence
    # from a failed one must not replay random numbers the committed tokens already depend on
    draft_stream: int = 1


@dataclass
class Start:
    seqs: list[NewSequence]
    released: list[int] = field(default_factory=list)  # seq ids that finished since the last request


@dataclass
class Outcome:
    seq_ids: list[int]  # [B] rows of this round, in order
    accepted: list[int]  # [B] k: draft tokens accepted
    next_token: list[int]  # [B] t: the recovery token (k < num_draft) or the bonus token
    released: list[int] = field(default_factory=list)  # seq ids that finished (not in seq_ids)
    verify_time: float = 0.0  # seconds of the target forward + verification of this round


@dataclass
class Speculation:
    """One sequence's speculation, the one type both sides use (the worker makes it, the target
    verifies it); it travels inside a ``SpeculationBatch``."""

    tokens: list[int]  # s_1..s_n (n <= K)
    probs: torch.Tensor | None  # [n or K, V] the q_i each s_i was sampled from; None for point masses
    point_mass: bool  # not drawn from a kept q (greedy row, fast backup): q = delta(s_i)
    # "hit" (from the speculation cache), "neural" or "fast" (a backup speculator's); the target
    # side learns only hit or not: "miss"
    origin: str
    fanout: list[int] = field(default_factory=list)  # worker side: F_0..F_K it was reweighted for

    @property
    def hit(self) -> bool:
        return self.origin == "hit"


@dataclass
class SpeculationBatch:
    """The worker's reply: a speculation per row, padded into tensors for the transport."""

    seq_ids: list[int]  # [B] rows, in the request's order
    tokens: torch.Tensor  # [B, K] long: s_1..s_K (entries past num_draft[b] are 0)
    num_draft: list[int]  # [B] real draft tokens (K, fewer from a fast backup)
    hit: list[bool]  # [B] the speculation came from the speculation cache
    point_mass: list[bool]  # [B] not drawn from a kept q (greedy row, fast backup): q = delta(s_i)
    probs: torch.Tensor | None  # [R, K, V] float32: q_i of the rows in prob_rows, None if R = 0
    prob_rows: list[int]  # [R] the rows b (indices into seq_ids) whose q's are in probs
    backup_time: float = 0.0  # seconds this reply spent in the backup speculator
    tree_time: float = 0.0  # seconds of glue + fork + tree decode after the previous reply

    @classmethod
    def pack(cls, seq_ids: list[int], speculations: list[Speculation], k: int, backup_time: float = 0.0,
             tree_time: float = 0.0) -> SpeculationBatch:
        tokens = torch.zeros(len(speculations), k, dtype=torch.long)
        for b, s in enumerate(speculations):
            tokens[b, :len(s.tokens)] = torch.tensor(s.tokens, dtype=torch.long)
        prob_rows = [b for b, s in enumerate(speculations) if s.probs is not None]
        probs = torch.stack([_pad_rows(speculations[b].probs, k) for b in prob_rows]) if prob_rows else None
        return cls(seq_ids, tokens, [len(s.tokens) for s in speculations], [s.hit for s in speculations],
                   [s.point_mass for s in speculations], probs, prob_rows, backup_time, tree_time)

    def unpack(self) -> dict[int, Speculation]:
        """Seq id -> its speculation (as the target side sees it: hit or miss)."""
        tokens = self.tokens.tolist()
        probs = {b: self.probs[i] for i, b in enumerate(self.prob_rows)}
        return {sid: Speculation(tokens[b][:self.num_draft[b]], probs.get(b), self.point_mass[b],
                                 "hit" if self.hit[b] else "miss")
                for b, sid in enumerate(self.seq_ids)}


@dataclass
class StatsRequest:
    pass


@dataclass
class Stats:
    data: dict  # JSON-serializable worker metrics


@dataclass
class Shutdown:
    pass


@dataclass
class WorkerError:
    message: str  # the worker's traceback


class DraftWorkerError(RuntimeError):
    """The draft worker failed; its traceback is in the message."""


REQUESTS = (Setup, Start, Outcome, StatsRequest, Shutdown)
REPLIES = (Ready, SpeculationBatch, Stats, WorkerError)


def _pad_rows(probs: torch.Tensor, k: int) -> torch.Tensor:
    """[n, V] -> [k, V] (zeros past n; those positions are never verified)."""
    return probs if probs.shape[0] == k else torch.cat([probs, probs.new_zeros(k - probs.shape[0], probs.shape[1])])
