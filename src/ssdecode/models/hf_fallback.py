"""Transformers fallback: any ``AutoModelForCausalLM`` behind the ``CausalLM`` forward contract.

It is how an architecture without a native implementation works on day one: correct, slower.
Each slot keeps its own Transformers ``DynamicCache``; the slot ``KVCache`` it hands out holds
no tensors, only the host lengths every caller already reads and rolls back. A forward first
crops each row's ``DynamicCache`` to ``cache.lengths`` (so ``truncate``/``reset`` take effect
lazily), then runs the row's real tokens with their explicit positions. Rows run one at a time,
which makes ragged batches exact without padding masks. Tree masks are not supported.
"""
from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM

from ssdecode.kv.cache import KVCache
from ssdecode.kv.forward_meta import ForwardMeta
from ssdecode.models.base import CausalLM

DEFAULT_MAX_LEN = 4096


class HFSlotCache(KVCache):
    """Slot lengths plus one Transformers cache per slot (None until the slot's first forward)."""

    def __init__(self, num_slots: int, max_len: int):
        super().__init__(0, num_slots, max_len, 0, 0)
        self.hf_caches: list[Any] = [None] * num_slots


class HFCausalLM(CausalLM):
    supports_tree_mask = False

    def __init__(self, model: Any | str | Path, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        """``model``: a built Transformers causal LM (used as is: ``device``/``dtype`` only apply
        when loading) or a folder / hub id to load."""
        if isinstance(model, (str, Path)):
            self.name = str(model)
            model = AutoModelForCausalLM.from_pretrained(str(model), dtype=dtype).to(device)
        self.model = model.eval()
        self.device = model.device
        self.dtype = model.dtype
        self.config = model.config
        # transformers 5.x renamed the cache argument `past_key_values` -> `cache`
        params = inspect.signature(model.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        head = model.get_output_embeddings()  # its rows may exceed config.vocab_size (padding)
        self.vocab_size = head.weight.shape[0] if head is not None else model.config.vocab_size
        text_config = model.config.get_text_config()
        self.max_context = int(getattr(text_config, "max_position_embeddings", None)
                               or getattr(text_config, "n_positions", DEFAULT_MAX_LEN))

    def new_cache(self, num_slots: int, max_len: int | None = None) -> HFSlotCache:
        max_len = min(self.max_context, DEFAULT_MAX_LEN) if max_len is None else max_len
        if max_len > self.max_context:
            raise ValueError(f"max_len {max_len} exceeds the model context of {self.max_context}")
        return HFSlotCache(num_slots, max_len)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        cache, last_only = meta.cache, meta.last_only
        if meta.tree_mask is not None:
            raise ValueError("tree attention needs a native model: the Transformers fallback "
                             "only supports causal (linear) decoding")
        if not isinstance(cache, HFSlotCache):
            raise TypeError("HFCausalLM needs the cache made by its own new_cache()")
        b, t = input_ids.shape
        out = torch.zeros(b, 1 if last_only else t, self.vocab_size, dtype=torch.float32,
                          device=self.device)
        for row, (slot, start, n) in enumerate(zip(meta.slots, meta.starts, meta.counts)):
            past = self._past(cache, slot, start)
            result = self.model(input_ids=input_ids[row:row + 1, :n],
                                position_ids=positions[row:row + 1, :n],
                                use_cache=True, **{self._cache_arg: past})
            cache.hf_caches[slot] = result[self._cache_arg]
            logits = result.logits[0].float()
            if last_only:
                out[row, 0] = logits[n - 1]
            else:
                out[row, :n] = logits
        return out

    @staticmethod
    def _past(cache: HFSlotCache, slot: int, length: int) -> Any:
        """The slot's Transformers cache cropped to ``length`` tokens (None when empty)."""
        past = cache.hf_caches[slot]
        if past is None or length == 0:
            return None
        extra = past.get_seq_length() - length
        if extra > 0:
            past.crop(-extra)  # a negative count removes tokens in transformers 4.x and 5.x
        return past
