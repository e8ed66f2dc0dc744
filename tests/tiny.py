"""Tiny random models and a matching word-level tokenizer for fast engine tests."""
from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from ssdecode.models.config import ModelConfig
from ssdecode.models.llama import LlamaModel


def tiny_hf_config(vocab: int = 24, layers: int = 2, hidden: int = 32, context: int = 256) -> Qwen2Config:
    return Qwen2Config(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                       num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=context, tie_word_embeddings=False, eos_token_id=vocab - 1,
                       bos_token_id=None)


def tiny_model(seed: int, vocab: int = 24, layers: int = 2, hidden: int = 32,
               sharpness: float = 4.0, context: int = 256, weights: str = "auto", device: str = "cpu",
               dtype: torch.dtype = torch.float32) -> LlamaModel:
    """A random Qwen2-family model whose next-token distributions are far from uniform
    (``sharpness`` scales the output head), so exactness tests see real structure."""
    torch.manual_seed(seed)
    hf = Qwen2ForCausalLM(tiny_hf_config(vocab, layers, hidden, context)).eval()
    state = {k: v.detach().clone() for k, v in hf.state_dict().items()}
    state["lm_head.weight"] = state["lm_head.weight"] * sharpness / state["lm_head.weight"].std() * 0.1
    return LlamaModel.from_state_dict(ModelConfig.from_hf(hf.config), state, device, dtype, weights=weights)


def tiny_tokenizer(vocab: int = 24) -> PreTrainedTokenizerFast:
    """Token i is the word ``w{i}``; the last id is the EOS token."""
    words = {f"w{i}": i for i in range(vocab - 1)}
    words["</s>"] = vocab - 1
    tok = Tokenizer(models.WordLevel(words, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="w0")
