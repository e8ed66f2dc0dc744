"""Random-weight models of real shapes for the GPU probe (no weights can reach the GPU machine).

``RandomWeights`` is a lazy map of HF-named tensors: each is drawn on the device, in the model's
dtype, when asked for, from a generator seeded by its name, so the native model and the
Transformers model get the same weights and no more than one layer's tensors exist beside the
model being built (a 32B shape is ~65 GB in bf16). Q/K/V and gate/up keep activations ~1 per
element; O and down write only small residual updates, so the final hidden state stays close to
the token's embedding and the head decides the next token.

The head is the embedding under a vocabulary permutation pi: ``lm_head[y] = embed[pi^-1(y)]``
makes the logit of pi(x) after token x ``|embed[x]|^2 ~ hidden``, far above the others
(~sqrt(hidden)). Target and draft share pi, so they agree; ``agree`` < 1 composes the draft's pi
with a cycle over a random ``1 - agree`` of the tokens, so after those the draft guesses wrong.
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch

from ssdecode.models.config import ModelConfig
from ssdecode.models.llama import LlamaModel

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab)
    "tiny": (64, 128, 2, 4, 2, 512),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064),
    "qwen2.5-32b": (5120, 27648, 64, 40, 8, 152064),
}
PERM_SEED = 123  # the vocabulary permutation every model shares


def shape_config(shape: str, vocab: int) -> ModelConfig:
    hidden, inter, layers, heads, kv, _ = SHAPES[shape]
    return ModelConfig(arch="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                       num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                       rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096, qkv_bias=True)


def next_token_map(vocab: int, agree: float = 1.0, seed: int = 0) -> torch.Tensor:
    """The greedy next token after each token: pi, or for ``agree`` < 1 pi after a cycle over a
    random ``round((1 - agree) * vocab)`` tokens (each of them then maps elsewhere)."""
    pi = torch.randperm(vocab, generator=torch.Generator().manual_seed(PERM_SEED))
    n = round((1 - agree) * vocab)
    if n < 2:
        return pi
    moved = torch.randperm(vocab, generator=torch.Generator().manual_seed(PERM_SEED + 1 + seed))[:n]
    sigma = torch.arange(vocab)
    sigma[moved] = moved.roll(1)
    return pi[sigma]


class RandomWeights(Mapping):
    """HF-named weights of ``config``, each drawn on ``device`` when read (see the module doc)."""

    def __init__(self, config: ModelConfig, device: str, dtype: torch.dtype, seed: int,
                 agree: float = 1.0):
        c, self.device, self.dtype, self.seed = config, torch.device(device), dtype, seed
        self.head_rows = torch.argsort(next_token_map(c.vocab_size, agree, seed)).to(self.device)
        hd, h, i = c.head_dim, c.hidden_size, c.intermediate_size
        q, kv, small = c.num_heads * hd, c.num_kv_heads * hd, 0.02
        self.specs = {"model.embed_tokens.weight": ((c.vocab_size, h), 1.0),
                      "model.norm.weight": ((h,), None), "lm_head.weight": ((c.vocab_size, h), 1.0)}
        for n in range(c.num_layers):
            p = f"model.layers.{n}."
            self.specs.update({
                p + "input_layernorm.weight": ((h,), None), p + "post_attention_layernorm.weight": ((h,), None),
                p + "self_attn.q_proj.weight": ((q, h), h ** -0.5), p + "self_attn.q_proj.bias": ((q,), small),
                p + "self_attn.k_proj.weight": ((kv, h), h ** -0.5), p + "self_attn.k_proj.bias": ((kv,), small),
                p + "self_attn.v_proj.weight": ((kv, h), h ** -0.5), p + "self_attn.v_proj.bias": ((kv,), small),
                p + "self_attn.o_proj.weight": ((h, q), small * q ** -0.5),
                p + "mlp.gate_proj.weight": ((i, h), h ** -0.5), p + "mlp.up_proj.weight": ((i, h), h ** -0.5),
                p + "mlp.down_proj.weight": ((h, i), small * i ** -0.5)})

    def __getitem__(self, name: str) -> torch.Tensor:
        if name == "lm_head.weight":
            return self["model.embed_tokens.weight"][self.head_rows]
        shape, scale = self.specs[name]
        if scale is None:
            return torch.ones(shape, device=self.device, dtype=self.dtype)
        g = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        return torch.randn(shape, generator=g, device=self.device, dtype=self.dtype).mul_(scale)

    def __iter__(self):
        return iter(self.specs)

    def __len__(self) -> int:
        return len(self.specs)

    def nbytes(self, skip_embedding: bool = False) -> int:
        """Bytes of all the weights (a decode step reads all but the embedding table)."""
        return sum(torch.Size(shape).numel() for name, (shape, _) in self.specs.items()
                   if not (skip_embedding and name == "model.embed_tokens.weight")) * self.dtype.itemsize


class IdTokenizer:
    """Just enough of a tokenizer for the engine: ids in, ids out."""

    eos_token_id = None
    chat_template = None

    def __init__(self, vocab: int):
        self.vocab = {str(i): i for i in range(vocab)}

    def get_vocab(self):
        return self.vocab

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def random_model(weights: RandomWeights, config: ModelConfig) -> LlamaModel:
    return LlamaModel.from_state_dict(config, weights, weights.device, weights.dtype)


@torch.no_grad()
def hf_model(weights: RandomWeights, config: ModelConfig, attn: str):
    """The same weights in a Transformers ``Qwen2ForCausalLM`` (built on the device in the
    weights' dtype, then filled tensor by tensor: a whole state dict would be a second copy)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    c = config
    hf_config = Qwen2Config(vocab_size=c.vocab_size, hidden_size=c.hidden_size,
                            intermediate_size=c.intermediate_size, num_hidden_layers=c.num_layers,
                            num_attention_heads=c.num_heads, num_key_value_heads=c.num_kv_heads,
                            rope_theta=c.rope_theta, rms_norm_eps=c.rms_norm_eps,
                            max_position_embeddings=c.max_position_embeddings,
                            tie_word_embeddings=False, use_sliding_window=False)
    hf_config._attn_implementation = attn
    default = torch.get_default_dtype()
    torch.set_default_dtype(weights.dtype)
    try:
        with weights.device:
            model = Qwen2ForCausalLM(hf_config)
    finally:
        torch.set_default_dtype(default)
    for name, param in model.named_parameters():
        param.copy_(weights[name])
    return model.eval()
