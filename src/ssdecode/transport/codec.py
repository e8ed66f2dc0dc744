"""Messages <-> two flat tensors for torch.distributed: one int64 (header + payload) and, only when
some row samples, one float32 (the draft distributions q).

Layout of the int64 tensor: ``[type, num_ints, num_floats, fields...]``. Host floats (times,
temperatures) are bit-cast float64 -> int64, so they round-trip exactly. Strings (the config, a
traceback, stats) travel as UTF-8 bytes, one byte per int64.
"""
from __future__ import annotations

import json

import torch

from ssdecode.params import SamplingParams
from ssdecode.transport.messages import (
    NewSequence,
    Outcome,
    Ready,
    Setup,
    Shutdown,
    SpeculationBatch,
    Start,
    Stats,
    StatsRequest,
    WorkerError,
)

HEADER = 3  # type, num_ints, num_floats
TYPES = [Setup, Ready, Start, SpeculationBatch, Outcome, StatsRequest, Stats, Shutdown, WorkerError]
TYPE_ID = {t: i for i, t in enumerate(TYPES)}


class _Writer:
    def __init__(self):
        self.parts: list[torch.Tensor] = []
        self.small: list[int] = []

    def int(self, x: int) -> None:
        self.small.append(int(x))

    def float(self, x: float) -> None:
        self.small.append(int(torch.tensor([x], dtype=torch.float64).view(torch.int64).item()))

    def ints(self, xs) -> None:
        self.small.append(len(xs))
        self.small.extend(int(x) for x in xs)

    def tensor(self, t: torch.Tensor) -> None:  # long tensor of a known shape
        self._flush()
        self.parts.append(t.reshape(-1).to("cpu", torch.int64))

    def text(self, s: str) -> None:
        data = s.encode()
        self.int(len(data))
        self._flush()
        if data:  # frombuffer refuses an empty buffer
            self.parts.append(torch.frombuffer(bytearray(data), dtype=torch.uint8).to(torch.int64))

    def _flush(self) -> None:
        if self.small:
            self.parts.append(torch.tensor(self.small, dtype=torch.int64))
            self.small = []

    def done(self, type_id: int, floats: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        self._flush()
        body = torch.cat(self.parts) if self.parts else torch.zeros(0, dtype=torch.int64)
        n_floats = 0 if floats is None else floats.numel()
        head = torch.tensor([type_id, HEADER + body.numel(), n_floats], dtype=torch.int64)
        return torch.cat([head, body]), floats


class _Reader:
    def __init__(self, ints: torch.Tensor):
        self.data = ints.to("cpu")
        self.pos = HEADER
        self.host = self.data.tolist()

    def int(self) -> int:
        self.pos += 1
        return self.host[self.pos - 1]

    def float(self) -> float:
        return torch.tensor([self.int()], dtype=torch.int64).view(torch.float64).item()

    def ints(self) -> list[int]:
        n = self.int()
        self.pos += n
        return self.host[self.pos - n:self.pos]

    def tensor(self, *shape: int) -> torch.Tensor:
        n = 1
        for s in shape:
            n *= s
        self.pos += n
        return self.data[self.pos - n:self.pos].reshape(shape).clone()

    def text(self) -> str:
        n = self.int()
        self.pos += n
        return bytes(self.data[self.pos - n:self.pos].to(torch.uint8).tolist()).decode()


def encode(msg) -> tuple[torch.Tensor, torch.Tensor | None]:
    w, floats = _Writer(), None
    if isinstance(msg, Setup):
        w.text(json.dumps(msg.config))
        for x in (msg.num_slots, msg.max_len, msg.vocab_size):
            w.int(x)
        w.text(msg.backend)
    elif isinstance(msg, Ready):
        w.int(msg.vocab_size)
        w.int(msg.cache_len)
    elif isinstance(msg, Start):
        w.int(len(msg.seqs))
        for s in msg.seqs:
            p = s.params
            for x in (s.seq_id, s.slot, s.first_token, s.draft_stream, p.top_k, -1 if p.seed is None else p.seed):
                w.int(x)
            w.float(p.temperature)
            w.float(p.top_p)
            w.ints(s.prompt_ids)
        w.ints(msg.released)
    elif isinstance(msg, Outcome):
        for xs in (msg.seq_ids, msg.accepted, msg.next_token, msg.released):
            w.ints(xs)
        w.float(msg.verify_time)
    elif isinstance(msg, SpeculationBatch):
        b, k = msg.tokens.shape
        w.int(b)
        w.int(k)
        for xs in (msg.seq_ids, msg.num_draft, msg.hit, msg.point_mass, msg.prob_rows):
            w.ints(xs)
        w.float(msg.backup_time)
        w.float(msg.tree_time)
        w.int(0 if msg.probs is None else msg.probs.shape[-1])
        w.tensor(msg.tokens)
        if msg.probs is not None and msg.probs.numel():
            floats = msg.probs.reshape(-1).float()
    elif isinstance(msg, Stats):
        w.text(json.dumps(msg.data))
    elif isinstance(msg, WorkerError):
        w.text(msg.message)
    elif not isinstance(msg, (StatsRequest, Shutdown)):
        raise TypeError(f"not a transport message: {type(msg).__name__}")
    return w.done(TYPE_ID[type(msg)], floats)


def decode(ints: torch.Tensor, floats: torch.Tensor | None = None):
    r = _Reader(ints)
    kind = TYPES[r.host[0]]
    if kind is Setup:
        return Setup(json.loads(r.text()), r.int(), r.int(), r.int(), r.text())
    if kind is Ready:
        return Ready(r.int(), r.int())
    if kind is Start:
        seqs = []
        for _ in range(r.int()):
            seq_id, slot, first, stream, top_k, seed = (r.int() for _ in range(6))
            temperature, top_p = r.float(), r.float()
            params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p,
                                    seed=None if seed < 0 else seed)
            seqs.append(NewSequence(seq_id, slot, r.ints(), first, params, stream))
        return Start(seqs, r.ints())
    if kind is Outcome:
        seq_ids, accepted, nxt, released = r.ints(), r.ints(), r.ints(), r.ints()
        return Outcome(seq_ids, accepted, nxt, released, r.float())
    if kind is SpeculationBatch:
        b, k = r.int(), r.int()
        seq_ids, num_draft, hit, point_mass, prob_rows = (r.ints() for _ in range(5))
        backup_time, tree_time, vocab = r.float(), r.float(), r.int()
        tokens = r.tensor(b, k)
        probs = None
        if prob_rows:
            probs = floats.reshape(len(prob_rows), k, vocab).clone()
        return SpeculationBatch(seq_ids, tokens, num_draft, [bool(x) for x in hit], [bool(x) for x in point_mass],
                           probs, prob_rows, backup_time, tree_time)
    if kind is Stats:
        return Stats(json.loads(r.text()))
    if kind is WorkerError:
        return WorkerError(r.text())
    return kind()
