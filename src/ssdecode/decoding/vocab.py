"""Draft/target compatibility: one vocabulary, checked once at load time.

Speculation is only meaningful when token ids mean the same thing to both models. A draft whose
embedding table is padded past the target's (or shorter) is fine as long as every id the
tokenizers define agrees; its logits are then cut or padded to the target's vocabulary so the
draft samples only tokens the target can verify.
"""
from __future__ import annotations

import logging

import torch

from ssdecode.models.base import CausalLM
from ssdecode.models.config import ModelConfig

log = logging.getLogger(__name__)


class IncompatibleModels(ValueError):
    """Draft and target do not share a tokenizer / vocabulary."""


def check_compatible(target_tok, draft_tok, target: CausalLM, draft: CausalLM) -> None:
    tv, dv = target_tok.get_vocab(), draft_tok.get_vocab()
    if tv != dv:
        diff = sorted(set(tv.items()) ^ set(dv.items()))[:3]
        raise IncompatibleModels(
            f"draft and target tokenizers differ ({len(tv)} vs {len(dv)} tokens; e.g. {diff}); "
            "speculative decoding needs a draft with the target's tokenizer")
    if max(tv.values()) >= min(target.vocab_size, draft.vocab_size):
        raise IncompatibleModels("tokenizer ids exceed a model's vocabulary size")
    tp, dp = _num_params(target), _num_params(draft)
    if dp and tp and dp > tp:
        log.warning("the draft (%.2fB parameters) is larger than the target (%.2fB): "
                    "speculation will likely be slower than plain decoding", dp / 1e9, tp / 1e9)


def _num_params(model: CausalLM) -> int:
    """Parameter count from the architecture (0 when unknown, e.g. a fallback model)."""
    c = getattr(model, "config", None)
    if not isinstance(c, ModelConfig):
        return 0
    attn = c.hidden_size * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
    layer = attn + 3 * c.hidden_size * c.intermediate_size
    return c.num_layers * layer + c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)


class AlignedVocab(CausalLM):
    """A draft whose logits are cut or padded (with -inf) to the target's vocabulary size."""

    def __init__(self, model: CausalLM, vocab_size: int):
        self.model, self.vocab_size = model, vocab_size
        self.max_context, self.device, self.dtype = model.max_context, model.device, model.dtype
        self.supports_tree_mask, self.supports_static = model.supports_tree_mask, model.supports_static

    def new_cache(self, num_slots, max_len=None):
        return self.model.new_cache(num_slots, max_len)

    def forward(self, input_ids, positions, meta) -> torch.Tensor:
        logits = self.model.forward(input_ids, positions, meta)
        extra = self.vocab_size - logits.shape[-1]
        if extra <= 0:
            return logits[..., : self.vocab_size]
        return torch.nn.functional.pad(logits, (0, extra), value=float("-inf"))


def align_draft(draft: CausalLM, target: CausalLM) -> CausalLM:
    return draft if draft.vocab_size == target.vocab_size else AlignedVocab(draft, target.vocab_size)
