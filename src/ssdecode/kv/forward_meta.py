"""Attention metadata: how one forward addresses the KV cache, built once per forward by the model
runner (runtime/runner.py) and read by every layer.

``ForwardMeta`` is the host view every model gets: the cache, each row's slot, its length before
the call (``starts``) and its real new tokens (``counts``), the optional tree mask over cache rows
and whether only each row's last real token's logits are wanted. Two backends add the device
side the native models attend with:

- ``EagerMeta`` (CPU, and any device without graphs): today's addressing, sized to each call.
  Key rows ``[0, kv_len)`` with ``kv_len = max(starts) + T``, a contiguous slice write for one
  row, plain causal attention where that is exact, so short contexts attend over short spans.
- ``StaticMeta`` (CUDA graphs; runs on any device): every tensor has a shape fixed by (B, T) and
  lives in buffers that are filled in place before each call, so a captured graph replays it.
  Keys span the whole cache row (``max_len``); which of them a query sees comes from the device
  tensor ``starts`` (and the tree mask), never from host integers inside the forward. A write
  that would land past ``max_len`` (padding) goes to the cache's scratch slot instead.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdecode.kv.cache import KVCache


@dataclass
class ForwardMeta:
    cache: KVCache
    slots: list[int]
    starts: list[int]  # each row's cache length before the call
    counts: list[int]  # each row's real new tokens (the rest of T is padding)
    tree_mask: torch.Tensor | None  # bool [B, T, max(starts) + T] over cache rows, True = visible
    last_only: bool

    def last(self, h: torch.Tensor) -> torch.Tensor:
        """``h [B, T, ...]`` at each row's last real token (``[B, 1, ...]``) when ``last_only``."""
        if not self.last_only:
            return h
        if len(self.counts) == 1:
            return h[:, self.counts[0] - 1:self.counts[0]]
        last = torch.tensor([n - 1 for n in self.counts], device=h.device)
        return h[torch.arange(h.shape[0], device=h.device), last].unsqueeze(1)


@dataclass
class EagerMeta(ForwardMeta):
    kv_len: int = 0
    write_at: tuple[int, int] | None = None  # (slot, start): one row, contiguous slice write
    write_idx: tuple[torch.Tensor, torch.Tensor] | None = None  # (slot, row) per written token
    write_sel: torch.Tensor | None = None  # flat b*T+i of the written tokens; None = all
    read_slots: slice | torch.Tensor | None = None
    mask: torch.Tensor | None = None  # bool [B, T, kv_len]; None = causal or see all
    is_causal: bool = False

    @classmethod
    def plan(cls, base: ForwardMeta, t: int, device: torch.device) -> "EagerMeta":
        cache, slots, starts = base.cache, base.slots, base.starts
        b = len(slots)
        span = max(starts) + t
        # Padding tokens of a ragged row may run past max_len; they are dropped, not written.
        kv_len = min(span, cache.max_len)
        cache.readable(kv_len)
        write_at = write_idx = write_sel = None
        if b == 1 and starts[0] + t <= cache.max_len:
            write_at = (slots[0], starts[0])
        else:
            keep = [(s, st + i, r * t + i) for r, (s, st) in enumerate(zip(slots, starts))
                    for i in range(t) if st + i < cache.max_len]
            write_idx = (torch.tensor([k[0] for k in keep], device=device),
                         torch.tensor([k[1] for k in keep], device=device))
            if len(keep) < b * t:
                write_sel = torch.tensor([k[2] for k in keep], device=device)
        consecutive = slots == list(range(slots[0], slots[0] + b))
        read_slots = slice(slots[0], slots[0] + b) if consecutive else torch.tensor(slots, device=device)
        mask, is_causal = None, False
        if base.tree_mask is not None:
            mask = base.tree_mask[..., :kv_len].to(device)
        elif t > 1 and max(starts) == 0:
            is_causal = True  # square causal block on empty slots
        elif not (t == 1 and min(starts) == max(starts)):  # else every row sees all kv_len rows
            limit = torch.tensor(starts, device=device)[:, None] + torch.arange(t, device=device)
            mask = torch.arange(kv_len, device=device) <= limit[:, :, None]
        return cls(**vars(base), kv_len=kv_len, write_at=write_at, write_idx=write_idx, write_sel=write_sel,
                   read_slots=read_slots, mask=mask, is_causal=is_causal)

    def write(self, buf: torch.Tensor, new: torch.Tensor) -> None:
        """Store ``new [B, T, Hkv, D]`` into ``buf [slots, max_len, Hkv, D]``."""
        if self.write_at is not None:
            slot, start = self.write_at
            buf[slot, start:start + new.shape[1]] = new[0]
            return
        flat = new.reshape(-1, *new.shape[2:])
        buf.index_put_(self.write_idx, flat if self.write_sel is None else flat[self.write_sel])

    def read(self, buf: torch.Tensor) -> torch.Tensor:
        """Key rows ``[0, kv_len)`` of the rows' slots as ``[B, Hkv, kv_len, D]`` (a view when
        the slots are consecutive)."""
        return buf[self.read_slots, :self.kv_len].transpose(1, 2)


class StaticBuffers:
    """The device tensors a static forward of shape (B, T) reads, allocated once and refilled in
    place (``fill``) before every call: what a CUDA graph captures."""

    def __init__(self, cache: KVCache, scratch: int, b: int, t: int, tree: bool, device: torch.device):
        """``scratch``: a cache slot no caller uses, where padding writes land."""
        self.b, self.t, self.max_len, self.scratch = b, t, cache.max_len, scratch
        self.ids = torch.zeros(b, t, dtype=torch.long, device=device)
        self.positions = torch.zeros(b, t, dtype=torch.long, device=device)
        self.starts = torch.zeros(b, dtype=torch.long, device=device)
        self.read_slots = torch.full((b,), self.scratch, dtype=torch.long, device=device)
        self.write_index = torch.full((b * t,), self.scratch * self.max_len, dtype=torch.long, device=device)
        self.last_index = torch.zeros(b, dtype=torch.long, device=device)
        self.tree_mask = torch.zeros(b, t, self.max_len, dtype=torch.bool, device=device) if tree else None
        self.keys = torch.arange(self.max_len, device=device)
        self.offsets = torch.arange(t, device=device)

    def fill(self, ids: torch.Tensor, positions: torch.Tensor, base: ForwardMeta) -> None:
        """Copy one call's inputs in; rows and tokens past the call's own shape are padding that
        writes only into the scratch slot."""
        b, t = ids.shape
        pad = self.b - b
        slots = base.slots + [self.scratch] * pad
        starts = base.starts + [0] * pad
        index = [s * self.max_len + st + i if st + i < self.max_len and r < b else self.scratch * self.max_len
                 for r, (s, st) in enumerate(zip(slots, starts)) for i in range(self.t)]
        host = torch.tensor([*slots, *starts, *[n - 1 for n in base.counts], *[0] * pad, *index])
        dev = host.to(self.ids.device, non_blocking=True)
        n = self.b
        self.read_slots.copy_(dev[:n])
        self.starts.copy_(dev[n:2 * n])
        self.last_index.copy_(dev[2 * n:3 * n])
        self.write_index.copy_(dev[3 * n:])
        self.ids.zero_()
        self.ids[:b, :t].copy_(ids)
        self.positions.zero_()
        self.positions[:b, :t].copy_(positions)
        if self.tree_mask is not None:
            self.tree_mask.zero_()
            span = base.tree_mask.shape[-1]
            self.tree_mask[:b, :t, :span].copy_(base.tree_mask[..., :self.max_len])
            # padding queries see key row 0 so no softmax row is empty (their outputs are unused)
            self.tree_mask[b:, :, 0] = True
            self.tree_mask[:b, t:, 0] = True


@dataclass
class StaticMeta(ForwardMeta):
    buffers: StaticBuffers | None = None
    mask: torch.Tensor | None = None  # bool [B, T, max_len], computed on the device
    is_causal: bool = False

    @classmethod
    def plan(cls, base: ForwardMeta, buffers: StaticBuffers) -> "StaticMeta":
        """Device-side addressing from ``buffers`` (already filled): only tensor ops, no host
        values, so the same ops replay for any lengths."""
        buf = buffers
        visible = buf.keys <= (buf.starts[:, None] + buf.offsets)[:, :, None]  # causal over the cache row
        mask = buf.tree_mask if buf.tree_mask is not None else visible
        return cls(**vars(base), buffers=buf, mask=mask)

    def last(self, h: torch.Tensor) -> torch.Tensor:
        if not self.last_only:
            return h
        return h[torch.arange(h.shape[0], device=h.device), self.buffers.last_index].unsqueeze(1)

    def write(self, buf: torch.Tensor, new: torch.Tensor) -> None:
        flat = buf.view(-1, *buf.shape[2:])
        flat.index_copy_(0, self.buffers.write_index, new.reshape(-1, *new.shape[2:]).to(buf.dtype))

    def read(self, buf: torch.Tensor) -> torch.Tensor:
        return buf.index_select(0, self.buffers.read_slots).transpose(1, 2)
