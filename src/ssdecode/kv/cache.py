"""KV cache with one slot per sequence.

Layout per layer: ``k[layer]`` and ``v[layer]`` are ``[num_slots, max_len, num_kv_heads, head_dim]``.
Lengths live on the host (plain ints), so computing masks, write offsets and rollbacks never
synchronizes with the device. Rows past a slot's length are scratch: SSD's tree branches are
appended there and dropped by ``truncate``; a padded (ragged) batch may write garbage there too,
which no mask ever shows because it lies past the length.

The cache is sized once (the engine's max_num_seqs x max_model_len) but memory is touched only as
far as forwards read: rows are zeroed in chunks when a forward's key span first reaches them
(``readable``), so a large context costs resident memory only once sequences grow that long.
Zeroing matters: masked-out keys get attention weight 0, and 0 * NaN garbage would still be NaN.
"""
from __future__ import annotations

import torch

ZERO_CHUNK = 256  # rows zeroed at a time as key spans grow


class ContextOverflow(ValueError):
    """A sequence would grow past the cache's (and model's) context length."""


class KVCache:
    def __init__(self, num_layers: int, num_slots: int, max_len: int, num_kv_heads: int,
                 head_dim: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        shape = (num_slots, max_len, num_kv_heads, head_dim)
        self.k = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.v = [torch.empty(shape, device=device, dtype=dtype) for _ in range(num_layers)]
        self.max_len = max_len
        self.lengths = [0] * num_slots
        self.zeroed = 0  # rows [0, zeroed) of every slot hold zeros or written K/V

    def readable(self, rows: int) -> None:
        """Make rows [0, rows) of every slot safe to attend over (zero the ones never touched)."""
        if rows <= self.zeroed:
            return
        end = min(self.max_len, -(-rows // ZERO_CHUNK) * ZERO_CHUNK)
        for t in self.k + self.v:
            t[:, self.zeroed:end].zero_()
        self.zeroed = end

    @property
    def num_slots(self) -> int:
        return len(self.lengths)

    def reserve(self, slots: list[int], num_new: int | list[int]) -> list[int]:
        """Check room for ``num_new`` tokens per slot; return the write offsets (current lengths)."""
        counts = [num_new] * len(slots) if isinstance(num_new, int) else num_new
        starts = [self.lengths[s] for s in slots]
        for s, start, n in zip(slots, starts, counts):
            if start + n > self.max_len:
                raise ContextOverflow(
                    f"slot {s}: {start} cached + {n} new tokens exceeds the context of {self.max_len}"
                )
        return starts

    def advance(self, slots: list[int], num_new: list[int]) -> None:
        for s, n in zip(slots, num_new):
            self.lengths[s] += n

    def truncate(self, slot: int, length: int) -> None:
        """Roll back to ``length`` tokens (rejected draft tokens, dropped tree branches)."""
        if not 0 <= length <= self.lengths[slot]:
            raise ValueError(f"cannot truncate slot {slot} of length {self.lengths[slot]} to {length}")
        self.lengths[slot] = length

    def reset(self, slot: int) -> None:
        self.lengths[slot] = 0
