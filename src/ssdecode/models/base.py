"""The seam between decoding strategies and models: one forward for prefill, decode, verification
and tree decode.

Contract of ``CausalLM.forward(input_ids, positions, cache, slots, num_new=None, attn_mask=None,
last_only=False)``:

- ``input_ids``, ``positions``: ``[B, T]`` long. Positions are LOGICAL positions (RoPE), chosen by
  the caller; for tree branches they are positions in the branch's own sequence, not cache rows.
- ``slots``: B cache slots, one per row. Row b writes its new K/V at cache rows
  ``cache.lengths[slots[b]] + i`` and then its length advances by ``num_new[b]`` (default T).
  ``num_new`` makes a ragged batch: tokens past ``num_new[b]`` are padding whose outputs are
  garbage and whose K/V land past the length (scratch), invisible to later forwards.
- ``attn_mask``: None means causal: query i of row b sees cache rows ``< start_b + i + 1`` where
  ``start_b`` is the length before the call. Otherwise a bool tensor ``[B, T, Lk]`` with
  ``Lk = max_b(start_b) + T`` (``key_span``) over cache rows, True = visible.
- returns float32 logits ``[B, T, V]``, or ``[B, 1, V]`` at each row's last real token
  (``num_new[b] - 1``) when ``last_only``.
- no host synchronization inside (lengths are host ints).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ssdecode.runtime.kv_cache import KVCache


def key_span(cache: KVCache, slots: list[int], num_tokens: int) -> int:
    """Number of key rows a forward of ``num_tokens`` new tokens per row attends over."""
    return max(cache.lengths[s] for s in slots) + num_tokens


def new_token_counts(input_ids: torch.Tensor, positions: torch.Tensor, slots: list[int],
                     num_new: list[int] | None) -> list[int]:
    """Validate a forward's arguments against each other; return the real tokens per row."""
    b, t = input_ids.shape
    counts = [t] * b if num_new is None else list(num_new)
    if positions.shape != input_ids.shape or len(slots) != b or len(counts) != b:
        raise ValueError(f"input_ids {tuple(input_ids.shape)}, positions {tuple(positions.shape)}, "
                         f"{len(slots)} slots and {len(counts)} num_new must agree")
    if not all(0 < n <= t for n in counts):
        raise ValueError(f"num_new {counts} must lie in [1, {t}]")
    return counts


class CausalLM(ABC):
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype
    supports_tree_mask: bool = True

    @abstractmethod
    def new_cache(self, num_slots: int, max_len: int | None = None) -> KVCache: ...

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                slots: list[int], num_new: list[int] | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor: ...
