"""Native Llama-family causal LM in plain PyTorch: Llama 2/3 (incl. Llama-3.1 rope scaling),
Qwen2/2.5 (qkv bias), Qwen3 (per-head q/k RMSNorm) and Mistral (as Llama, full attention).

It owns the weights and implements the ``CausalLM.forward`` contract of ``models/base.py`` over
the slot ``KVCache``: explicit positions, one cache slot per row, ragged rows and an optional
tree mask, so prefill, decode, verification and tree decode are the same code path. Per-forward
cache addressing (``_Step``) is worked out once on the host from the host-side lengths, never by
reading device values, and then reused by every layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ssdecode.models.base import CausalLM, key_span, new_token_counts
from ssdecode.models.config import ModelConfig
from ssdecode.models.embedding import Embedding
from ssdecode.models.layers import LayerWeights, apply_rope, attend, rms_norm, rope_tables
from ssdecode.models.linear import Linear, make_linear, resolve_format
from ssdecode.models.weights_io import SafetensorsFolder, WeightLoader
from ssdecode.runtime.kv_cache import KVCache

DEFAULT_MAX_LEN = 4096


class LlamaModel(CausalLM):
    supports_tree_mask = True

    def __init__(self, config: ModelConfig, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32):
        """An empty shell (RoPE tables only); ``from_state_dict``/``from_folder`` fill the weights."""
        self.config = config
        self.device = torch.device(device)
        self.dtype = dtype
        self.vocab_size = config.vocab_size
        self.max_context = config.max_position_embeddings
        self.cos, self.sin = rope_tables(config, self.max_context, self.device, dtype)
        self.embed: Embedding | None = None
        self.layers: list[LayerWeights] = []
        self.norm: torch.Tensor | None = None
        self.lm_head: Linear | None = None
        self.weight_format = "dense"

    @classmethod
    def from_state_dict(cls, config: ModelConfig, state_dict: Mapping[str, torch.Tensor],
                        device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                        weights: str = "auto") -> "LlamaModel":
        """Build from tensors in HF naming (``model.layers.N.self_attn.q_proj.weight``, ...).
        ``weights``: the matmul weight format (``models/linear.py``); auto = packed on CPU fp32."""
        model = cls(config, device, dtype)
        fmt = model.weight_format = resolve_format(weights, model.device, dtype)
        if config.tie_word_embeddings:
            head = None
        elif "lm_head.weight" in state_dict:
            # First, with a loader of its own: its vocabulary-sized temporary (the dense copy it is
            # packed from) comes and goes while little else is resident, so it adds to no peak.
            head = WeightLoader(state_dict, model.device, dtype, fmt).linear(["lm_head.weight"])
        else:
            raise KeyError("lm_head.weight is missing and tie_word_embeddings is false")
        load = WeightLoader(state_dict, model.device, dtype, fmt)
        embed = "model.embed_tokens.weight"  # kept quantized, as stored, for gguf
        model.embed = state_dict.embedding(embed) if fmt == "gguf" else Embedding(load.tensor(embed))
        model.layers = [LayerWeights.from_hf(load, f"model.layers.{i}.", config)
                        for i in range(config.num_layers)]
        model.norm = load.tensor("model.norm.weight")
        if head is None:  # tied: the embedding's product; for gguf the same blocks, as stored
            head = load.linear([embed]) if fmt == "gguf" else make_linear(model.embed.weight, None, fmt)
        model.lm_head = head
        return model

    @classmethod
    def from_folder(cls, path: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, weights: str = "auto",
                    gguf: Path | None = None) -> "LlamaModel":
        """Load an HF folder: ``config.json`` plus ``*.safetensors`` (sharded or not). For the gguf
        weight format, a converted folder whose weights are read as stored from ``gguf``, by
        default the GGUF its marker records."""
        from transformers import AutoConfig

        config = ModelConfig.from_hf(AutoConfig.from_pretrained(str(path)))
        if weights == "gguf":
            from ssdecode.models.gguf_weights import GGUFWeights, gguf_source

            source = GGUFWeights(gguf or gguf_source(Path(path)), config)
        else:
            source = SafetensorsFolder(Path(path))
        model = cls.from_state_dict(config, source, device, dtype, weights)
        model.name = str(path)
        return model

    def new_cache(self, num_slots: int, max_len: int | None = None) -> KVCache:
        max_len = min(self.max_context, DEFAULT_MAX_LEN) if max_len is None else max_len
        if max_len > self.max_context:
            raise ValueError(f"max_len {max_len} exceeds the model context of {self.max_context}")
        c = self.config
        return KVCache(c.num_layers, num_slots, max_len, c.num_kv_heads, c.head_dim, self.device, self.dtype)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                slots: list[int], num_new: list[int] | None = None,
                attn_mask: torch.Tensor | None = None, last_only: bool = False) -> torch.Tensor:
        b, t = input_ids.shape
        counts = new_token_counts(input_ids, positions, slots, num_new)
        starts = cache.reserve(slots, counts)
        step = _Step.plan(cache, slots, starts, t, attn_mask, self.device)
        cos = self.cos[positions].unsqueeze(2)  # [B, T, 1, D]
        sin = self.sin[positions].unsqueeze(2)
        h = self.embed(input_ids)
        for i, lw in enumerate(self.layers):
            h = self._layer(h, lw, cache.k[i], cache.v[i], cos, sin, step)
        if last_only:
            if b == 1:
                h = h[:, counts[0] - 1:counts[0]]
            else:
                last = torch.tensor([n - 1 for n in counts], device=self.device)
                h = h[torch.arange(b, device=self.device), last].unsqueeze(1)
        logits = self.lm_head(rms_norm(h, self.norm, self.config.rms_norm_eps)).float()
        cache.advance(slots, counts)
        self.check_finite(logits, counts)
        return logits

    def _layer(self, h: torch.Tensor, lw: LayerWeights, k_buf: torch.Tensor, v_buf: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor, step: "_Step") -> torch.Tensor:
        c = self.config
        b, t, _ = h.shape
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        qkv = lw.qkv(rms_norm(h, lw.in_norm, c.rms_norm_eps))
        q = qkv[..., :q_dim].view(b, t, c.num_heads, c.head_dim)
        k = qkv[..., q_dim:q_dim + kv_dim].view(b, t, c.num_kv_heads, c.head_dim)
        v = qkv[..., q_dim + kv_dim:].view(b, t, c.num_kv_heads, c.head_dim)
        if lw.q_norm is not None:
            q = rms_norm(q, lw.q_norm, c.rms_norm_eps)
            k = rms_norm(k, lw.k_norm, c.rms_norm_eps)
        q = apply_rope(q, cos, sin)
        step.write(k_buf, apply_rope(k, cos, sin))
        step.write(v_buf, v)
        out = attend(q, step.read(k_buf), step.read(v_buf), step.mask, step.is_causal)
        h = h + lw.o(out)
        gate_up = lw.gate_up(rms_norm(h, lw.post_norm, c.rms_norm_eps))
        inter = gate_up.shape[-1] // 2
        act = F.silu(gate_up[..., :inter]).mul_(gate_up[..., inter:])
        return h.add_(lw.down(act))


@dataclass
class _Step:
    """How one forward addresses the cache: where each row writes its new K/V, which key rows
    ``[0, kv_len)`` of which slots it reads, and the attention mask (None when plain causal
    ``is_causal`` or "see every key row" is exact)."""

    kv_len: int
    write_at: tuple[int, int] | None  # (slot, start): one row, contiguous slice write
    write_idx: tuple[torch.Tensor, torch.Tensor] | None  # (slot, row) per written token
    write_sel: torch.Tensor | None  # flat b*T+i of the written tokens; None = all
    read_slots: slice | torch.Tensor
    mask: torch.Tensor | None  # bool [B, T, kv_len]
    is_causal: bool

    @classmethod
    def plan(cls, cache: KVCache, slots: list[int], starts: list[int], t: int,
             attn_mask: torch.Tensor | None, device: torch.device) -> "_Step":
        b = len(slots)
        span = key_span(cache, slots, t)
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
        if attn_mask is not None:
            if tuple(attn_mask.shape) != (b, t, span) or attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be bool [{b}, {t}, {span}], got "
                                 f"{attn_mask.dtype} {tuple(attn_mask.shape)}")
            mask = attn_mask[..., :kv_len].to(device)
        elif t > 1 and max(starts) == 0:
            is_causal = True  # square causal block on empty slots
        elif not (t == 1 and min(starts) == max(starts)):  # else every row sees all kv_len rows
            limit = torch.tensor(starts, device=device)[:, None] + torch.arange(t, device=device)
            mask = torch.arange(kv_len, device=device) <= limit[:, :, None]
        return cls(kv_len, write_at, write_idx, write_sel, read_slots, mask, is_causal)

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

