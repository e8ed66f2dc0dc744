"""The model interface below the model runner (runtime/runner.py): one forward for prefill,
decode, verification and tree decode.

``CausalLM.forward(input_ids, positions, meta)`` takes ``[B, T]`` token ids and LOGICAL positions
(RoPE) and the attention metadata the runner built for this call (kv/forward_meta.py: the
cache, each row's slot, start and real token count, the tree mask, and the backend's device-side
addressing), writes the new K/V where the metadata says and returns float32 logits ``[B, T, V]``,
or ``[B, 1, V]`` at each row's last real token when ``meta.last_only``. It neither moves cache
lengths nor synchronizes with the host (so the static backend can capture it in a CUDA graph):
the runner does the bookkeeping and calls ``check_finite`` after it.
"""
from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from ssdecode.kv.cache import KVCache
from ssdecode.kv.forward_meta import EagerMeta, ForwardMeta
from ssdecode.models.errors import NonFiniteLogits


class CausalLM(ABC):
    vocab_size: int
    max_context: int
    device: torch.device
    dtype: torch.dtype
    supports_tree_mask: bool = True
    supports_static: bool = False  # runs StaticMeta (fixed shapes, CUDA graphs): native models
    name: str | None = None  # where the weights came from (a folder), for error messages

    @abstractmethod
    def new_cache(self, num_slots: int, max_len: int | None = None) -> KVCache: ...

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: ForwardMeta) -> torch.Tensor: ...

    @torch.inference_mode()
    def probe(self) -> None:
        """One eager forward of one token, so weights that compute NaN/inf fail the load (and get
        the folder checked) instead of printing '!!!!' later; a single NaN weight spoils every token."""
        ids = torch.zeros((1, 1), dtype=torch.long, device=self.device)
        meta = ForwardMeta(self.new_cache(1, 1), [0], [0], [1], None, False)
        self.check_finite(self.forward(ids, ids, EagerMeta.plan(meta, 1, self.device)), [1])

    def check_finite(self, logits: torch.Tensor, counts: list[int]) -> None:
        """Raise ``NonFiniteLogits`` naming the model when a real position's logits are NaN/inf.

        ``counts``: real tokens per row; positions past them are padding whose garbage may be
        anything. One pass (NaN/inf in a row makes its sum so) and one sync when all is finite;
        the exact per-position check only when a sum is not (a huge finite row may overflow it).
        """
        if bool(torch.isfinite(logits.sum(-1)).all()):
            return
        finite = torch.isfinite(logits)
        if bool(finite.all()):
            return
        counts_t = torch.tensor(counts, device=logits.device)[:, None]
        real = torch.arange(logits.shape[1], device=logits.device) < counts_t
        bad = int((real & ~finite.all(-1)).sum())
        if bad:
            raise self.nonfinite_error(f"at {bad} token position(s)")

    def nonfinite_error(self, where: str) -> NonFiniteLogits:
        verify = " ".join(["ssdecode models verify", *([self.name] if self.name else [])])
        return NonFiniteLogits(f"{self.name or type(self).__name__} produced NaN/inf logits {where}: "
                               f"its weights are damaged; check them with `{verify}`")
