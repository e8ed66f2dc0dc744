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
- no host synchronization inside (lengths are host ints), except one at the end:
  ``check_finite``, which turns NaN/inf logits from damaged weights into a clear error before
  they reach sampling (where NaN probabilities would pick an out-of-range token id).
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ssdecode.models.errors import NonFiniteLogits
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
    name: str | None = None  # where the weights came from (a folder), for error messages

    @abstractmethod
    def new_cache(self, num_slots: int, max_len: int | None = None) -> KVCache: ...

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                slots: list[int], num_new: list[int] | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor: ...

    def check_finite(self, logits: torch.Tensor, counts: list[int]) -> None:
        """Raise ``NonFiniteLogits`` naming the model when a real position's logits are NaN/inf.

        ``counts``: real tokens per row; positions past them are padding whose garbage may be
        anything. One reduction and one sync when all is finite; the per-row check only on failure.
        """
        finite = torch.isfinite(logits)
        if bool(finite.all()):
            return
        counts_t = torch.tensor(counts, device=logits.device)[:, None]
        real = torch.arange(logits.shape[1], device=logits.device) < counts_t
        bad = int((real & ~finite.all(-1)).sum())
        if bad:
            verify = " ".join(["ssdecode models verify", *([self.name] if self.name else [])])
            raise NonFiniteLogits(f"{self.name or type(self).__name__} produced NaN/inf logits at {bad} "
                                  f"token position(s): its weights are damaged; check them with `{verify}`")
