"""Native Llama-family causal LM in plain PyTorch: Llama 2/3 (incl. Llama-3.1 rope scaling),
Qwen2/2.5 (qkv bias), Qwen3 (per-head q/k RMSNorm) and Mistral (as Llama, full attention).

It owns the weights and implements the ``CausalLM.forward`` contract of ``models/base.py`` over
the slot ``KVCache``: explicit positions, one cache slot per row, ragged rows and an optional
tree mask, so prefill, decode, verification and tree decode are the same code path. Cache
addressing comes from the runner's attention metadata (eager or static, kv/forward_meta.py),
built once per forward and read by every layer.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from ssdecode import envs
from ssdecode.kernels import fused_layers as fused
from ssdecode.kv.cache import KVCache
from ssdecode.kv.forward_meta import EagerMeta, ForwardMeta
from ssdecode.models.base import CausalLM
from ssdecode.models.config import ModelConfig
from ssdecode.models.embedding import Embedding
from ssdecode.models.gguf_weights import GGUFWeights, gguf_source
from ssdecode.models.layers import LayerWeights, apply_rope, attend, rms_norm, rope_tables
from ssdecode.models.linear import GGUF_FORMATS, Linear, make_linear, resolve_format
from ssdecode.models.weights_io import SafetensorsFolder, WeightLoader

DEFAULT_MAX_LEN = 4096


class LlamaModel(CausalLM):
    supports_tree_mask = True
    supports_static = True

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
        model.embed = state_dict.embedding(embed) if fmt in GGUF_FORMATS else Embedding(load.tensor(embed))
        model.layers = [LayerWeights.from_hf(load, f"model.layers.{i}.", config)
                        for i in range(config.num_layers)]
        model.norm = load.tensor("model.norm.weight")
        if head is None:  # tied: the embedding's product; for gguf the same blocks, as stored
            head = load.linear([embed]) if fmt in GGUF_FORMATS else make_linear(model.embed.weight, None, fmt)
        model.lm_head = head
        return model

    @classmethod
    def from_folder(cls, path: str | Path, device: torch.device | str = "cpu",
                    dtype: torch.dtype = torch.float32, weights: str = "auto",
                    gguf: Path | None = None) -> "LlamaModel":
        """Load an HF folder: ``config.json`` plus ``*.safetensors`` (sharded or not). For the gguf
        weight format, a converted folder whose weights are read as stored from ``gguf``, by
        default the GGUF its marker records."""

        config = ModelConfig.from_hf(AutoConfig.from_pretrained(str(path)))
        if weights in GGUF_FORMATS:
            source = GGUFWeights(gguf or gguf_source(Path(path)), config, "int8" if weights == "gguf-a8" else "fp32")
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

    def fused_plan(self) -> fused.Plan | None:
        """The layers as one native call for CPU decode and verification (kernels/fused_layers.py),
        built at first use; None where a product has no native kernel (the fp32 formats), off
        the CPU, or with ``SSDECODE_FUSED_LAYERS=0``."""
        if "_fused" not in vars(self):
            self._fused = None
            if self.device.type == "cpu" and self.dtype == torch.float32 and envs.fused_layers():
                self._fused = fused.plan(self.config, [lw.fused() for lw in self.layers], self.cos, self.sin)
        return self._fused

    def __getstate__(self):
        return {k: v for k, v in vars(self).items() if k != "_fused"}  # native addresses: rebuilt

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        h = self.embed(input_ids)
        plan = self.fused_plan() if isinstance(meta, EagerMeta) and fused.applies(h, meta.is_causal) else None
        if plan is not None:
            fused.forward(plan, h, positions, meta.cache.k, meta.cache.v, meta.slots, meta.starts, meta.mask,
                          meta.kv_len)
        else:
            cos = self.cos[positions].unsqueeze(2)  # [B, T, 1, D]
            sin = self.sin[positions].unsqueeze(2)
            for i, lw in enumerate(self.layers):
                h = self._layer(h, lw, meta.cache.k[i], meta.cache.v[i], cos, sin, meta)
        h = meta.last(h)
        return self.lm_head(rms_norm(h, self.norm, self.config.rms_norm_eps)).float()

    def _layer(self, h: torch.Tensor, lw: LayerWeights, k_buf: torch.Tensor, v_buf: torch.Tensor,
               cos: torch.Tensor, sin: torch.Tensor, meta: ForwardMeta) -> torch.Tensor:
        c = self.config
        b, t, _ = h.shape
        q_dim, kv_dim = c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
        qkv = lw.qkv(rms_norm(h, lw.in_norm, c.rms_norm_eps))
        heads = c.num_heads + c.num_kv_heads
        qk = qkv[..., :q_dim + kv_dim].view(b, t, heads, c.head_dim)
        v = qkv[..., q_dim + kv_dim:].view(b, t, c.num_kv_heads, c.head_dim)
        if lw.q_norm is not None:
            qk = torch.cat((rms_norm(qk[:, :, :c.num_heads], lw.q_norm, c.rms_norm_eps),
                            rms_norm(qk[:, :, c.num_heads:], lw.k_norm, c.rms_norm_eps)), dim=2)
        qk = apply_rope(qk, cos, sin)  # q and k heads in one (elementwise: the same numbers)
        q = qk[:, :, :c.num_heads]
        meta.write(k_buf, qk[:, :, c.num_heads:])
        meta.write(v_buf, v)
        out = attend(q, meta.read(k_buf), meta.read(v_buf), meta.mask, meta.is_causal)
        h = h + lw.o(out)
        gate_up = lw.gate_up(rms_norm(h, lw.post_norm, c.rms_norm_eps))
        inter = gate_up.shape[-1] // 2
        act = F.silu(gate_up[..., :inter]).mul_(gate_up[..., inter:])
        return h.add_(lw.down(act))

