"""Building blocks shared by the native Llama-family models: RMSNorm, RoPE tables, fused layer
weights and grouped-query attention over the slot KV cache.

Numerics follow Hugging Face's reference implementations op for op (RMSNorm in float32, RoPE
frequencies computed in float32 the way transformers computes them), so native logits match
Transformers within float32 rounding and a converted checkpoint behaves the same in both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ssdecode.kernels import attention
from ssdecode.kernels import fused_layers as fused
from ssdecode.models.config import ModelConfig
from ssdecode.models.linear import Linear
from ssdecode.models.weights_io import WeightLoader


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dim, statistics in float32 whatever the activation dtype. In float32
    ``F.rms_norm`` computes the same bits as Hugging Face's formula below with less dispatch
    (decode pays per op: 11 against 17 us a call for one 896-wide row); in other dtypes it rounds
    differently, so they keep the formula."""
    if x.dtype == torch.float32:
        return F.rms_norm(x, weight.shape, weight, eps)
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def rope_inv_freq(config: ModelConfig) -> torch.Tensor:
    """Inverse frequencies ``[head_dim // 2]`` in float32, incl. Llama-3.1 "llama3" scaling.

    Computed exactly as transformers does (float32 ``base ** (2i / d)``): a float64 computation
    would be closer to the true frequencies but would differ from HF by up to ~1e-4 rad at
    positions in the thousands, which shows up in logit parity.
    """
    dim = config.head_dim
    inv_freq = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64).float() / dim))
    if config.rope_llama3 is None:
        return inv_freq
    factor, low_freq_factor, high_freq_factor, old_context_len = config.rope_llama3
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium, smoothed, scaled)


def rope_tables(config: ModelConfig, length: int, device: torch.device | str,
                dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin tables ``[length, head_dim]`` (halves duplicated), indexed by position."""
    freqs = torch.arange(length, dtype=torch.float32)[:, None] * rope_inv_freq(config)[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(device=device, dtype=dtype), emb.sin().to(device=device, dtype=dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [B, T, heads, D]`` with ``cos``/``sin`` ``[B, T, 1, D]`` (rotate-half form)."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass
class LayerWeights:
    """One decoder layer with q/k/v fused into ``wqkv`` and gate/up fused into ``w_gate_up``:
    two fewer matmuls per layer, which matters when decode is bound by per-op overhead."""

    in_norm: torch.Tensor
    qkv: Linear  # [(H + 2 * Hkv) * D, hidden], with Qwen2's bias
    q_norm: torch.Tensor | None  # Qwen3 per-head RMSNorm weights [D]
    k_norm: torch.Tensor | None
    o: Linear
    post_norm: torch.Tensor
    gate_up: Linear  # [2 * intermediate, hidden]
    down: Linear

    @classmethod
    def from_hf(cls, load: WeightLoader, prefix: str, config: ModelConfig) -> "LayerWeights":
        """Gather (and fuse) the tensors of ``prefix`` = ``model.layers.N.`` in HF naming."""

        def get(name: str) -> torch.Tensor:
            return load.tensor(prefix + name)

        def linear(*names: str, bias: bool = False) -> Linear:
            return load.linear([prefix + n + ".weight" for n in names],
                               [prefix + n + ".bias" for n in names] if bias else ())

        attn = "self_attn."
        return cls(
            in_norm=get("input_layernorm.weight"),
            qkv=linear(*(attn + p + "_proj" for p in "qkv"), bias=config.qkv_bias),
            q_norm=get(attn + "q_norm.weight") if config.qk_norm else None,
            k_norm=get(attn + "k_norm.weight") if config.qk_norm else None,
            o=linear(attn + "o_proj"),
            post_norm=get("post_attention_layernorm.weight"),
            gate_up=linear("mlp.gate_proj", "mlp.up_proj"),
            down=linear("mlp.down_proj"),
        )

    def fused(self) -> dict:
        """This layer as ``kernels.fused_layers.plan`` takes it."""
        return {"in_norm": self.in_norm, "post_norm": self.post_norm, "q_norm": self.q_norm,
                "k_norm": self.k_norm, **{n: getattr(self, n).parts() for n in fused.PRODUCTS}}


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
           is_causal: bool) -> torch.Tensor:
    """Grouped-query attention. ``q [B, T, H, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]`` (views of the
    cache are fine), ``mask`` bool ``[B, T, Lk]`` or None; returns ``[B, T, H * D]``.

    On CPU in fp32, decode and verification (a few tokens, not a causal prefill) go to
    ``kernels/attention.py``: each query row over exactly its visible keys, so a verification row
    has the bits of the decode step at its position. Elsewhere (SDPA) a single query token folds
    its head groups into the query axis (heads ``j*G .. j*G+G-1`` share kv head ``j``), so it never
    copies K/V to repeat heads; several tokens under a mask (verification, a tree) fold likewise,
    G x T query rows per kv head (the same numbers as ``enable_gqa``).
    """
    if attention.applies(q, is_causal):  # CPU decode and verification: each row on its own keys
        return attention.attend(q, k, v, mask)
    b, t, h, d = q.shape
    hkv = k.shape[1]
    m = None if mask is None else mask[:, None]  # [B, 1, T, Lk]
    if t == 1 or (m is not None and hkv != h):
        g = h // hkv
        qf = q.view(b, t, hkv, g, d).permute(0, 2, 3, 1, 4).reshape(b, hkv, g * t, d)
        mf = None if m is None else m[:, :, None].expand(b, 1, g, t, m.shape[-1]).reshape(b, 1, g * t, -1)
        out = F.scaled_dot_product_attention(qf, k, v, attn_mask=mf)
        return out.view(b, hkv, g, t, d).permute(0, 3, 1, 2, 4).reshape(b, t, h * d)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=m, is_causal=is_causal,
                                         enable_gqa=hkv != h)
    return out.transpose(1, 2).reshape(b, t, h * d)

