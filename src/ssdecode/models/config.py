"""ModelConfig: the one architecture description the native runtime reads.

Built from a Hugging Face config (``from_hf``), so a local folder, a hub id and a converted GGUF
all arrive at the same typed, frozen description.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

NATIVE_ARCHS = {"llama": "llama", "mistral": "mistral", "qwen2": "qwen2", "qwen3": "qwen3"}


class UnsupportedArchitecture(ValueError):
    """The config names an architecture the native runtime does not implement."""


@dataclass(frozen=True)
class ModelConfig:
    arch: str  # one of NATIVE_ARCHS
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    qkv_bias: bool = False  # Qwen2/2.5
    qk_norm: bool = False  # Qwen3
    tie_word_embeddings: bool = False
    # Llama-3.1 "llama3" rope scaling: (factor, low_freq_factor, high_freq_factor, original_max_pos)
    rope_llama3: tuple[float, float, float, int] | None = None
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    @classmethod
    def from_hf(cls, hf: Any) -> "ModelConfig":
        """Translate a transformers PretrainedConfig; raise UnsupportedArchitecture otherwise."""
        model_type = getattr(hf, "model_type", None)
        if model_type not in NATIVE_ARCHS:
            raise UnsupportedArchitecture(
                f"native runtime supports {sorted(NATIVE_ARCHS)}, not {model_type!r}"
            )
        heads = hf.num_attention_heads
        head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // heads
        rope = _rope_params(hf)
        rope_llama3 = None
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "llama3":
            rope_llama3 = (
                float(rope["factor"]),
                float(rope["low_freq_factor"]),
                float(rope["high_freq_factor"]),
                int(rope["original_max_position_embeddings"]),
            )
        elif rope_type not in ("default", None):
            raise UnsupportedArchitecture(f"rope scaling {rope_type!r} is not supported natively")
        eos = getattr(hf, "eos_token_id", None)
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (eos,))
        return cls(
            arch=model_type,
            vocab_size=hf.vocab_size,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(hf, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            rope_theta=float(rope.get("rope_theta", getattr(hf, "rope_theta", 10000.0))),
            rms_norm_eps=float(hf.rms_norm_eps),
            max_position_embeddings=int(hf.max_position_embeddings),
            qkv_bias=model_type == "qwen2" or bool(getattr(hf, "attention_bias", False)),
            qk_norm=model_type == "qwen3",
            tie_word_embeddings=bool(getattr(hf, "tie_word_embeddings", False)),
            rope_llama3=rope_llama3,
            bos_token_id=getattr(hf, "bos_token_id", None),
            eos_token_ids=eos_ids,
        )


def _rope_params(hf: Any) -> dict:
    # transformers >= 5 keeps rope settings in `rope_parameters`; 4.x in `rope_scaling`/`rope_theta`.
    params = getattr(hf, "rope_parameters", None) or {}
    if not params:
        params = dict(getattr(hf, "rope_scaling", None) or {})
    return dict(params)
