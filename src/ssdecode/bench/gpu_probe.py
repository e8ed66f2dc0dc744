"""Per-round timings of AR, SD and SSD on random-weight models of real shapes.

Nothing can be downloaded on a lent GPU machine and at most 64 MiB travels there, so the GPU
check builds models of the demo-like shapes (or a 7B-shaped target) with random weights. Both
models' output heads are their input embeddings under one shared permutation of the vocabulary,
so greedy target and draft both map token x to pi(x) and agree: rounds are cache hits, as with a
good draft, and the timings show the overlap. Prints one line per mode and one JSON line.

    python -m ssdecode.bench.gpu_probe --device cuda --target qwen2.5-7b --draft qwen2.5-0.5b
    python -m ssdecode.bench.gpu_probe --device cpu --target tiny --draft tiny   # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ssdecode.engine.llm import LLM
from ssdecode.models.config import ModelConfig
from ssdecode.models.llama import LlamaModel
from ssdecode.params import SamplingParams

SHAPES = {  # (hidden, intermediate, layers, heads, kv heads, vocab)
    "tiny": (64, 128, 2, 4, 2, 512),
    "qwen2.5-0.5b": (896, 4864, 24, 14, 2, 151936),
    "qwen2.5-1.5b": (1536, 8960, 28, 12, 2, 151936),
    "qwen2.5-7b": (3584, 18944, 28, 28, 4, 152064),
}


def random_model(shape: str, vocab: int, device: str, dtype: torch.dtype, seed: int) -> LlamaModel:
    hidden, inter, layers, heads, kv, _ = SHAPES[shape]
    cfg = ModelConfig(arch="qwen2", vocab_size=vocab, hidden_size=hidden, intermediate_size=inter,
                      num_layers=layers, num_heads=heads, num_kv_heads=kv, head_dim=hidden // heads,
                      rope_theta=1e6, rms_norm_eps=1e-6, max_position_embeddings=4096, qkv_bias=True)
    g = torch.Generator(device=device).manual_seed(seed)
    hd = cfg.head_dim

    def rnd(*shape, scale=0.02):
        return torch.randn(*shape, generator=g, device=device, dtype=dtype) * scale

    embed = rnd(vocab, hidden, scale=1.0)
    # lm_head[y] = embed[pi^-1(y)]: the logit of pi(x) after token x is |embed[x]|^2 ~ hidden, far
    # above the others (~sqrt(hidden)), for every model built with the same permutation.
    inverse = torch.argsort(torch.randperm(vocab, generator=torch.Generator().manual_seed(123))).to(device)
    state = {"model.embed_tokens.weight": embed, "model.norm.weight": torch.ones(hidden, device=device, dtype=dtype),
             "lm_head.weight": embed[inverse]}
    for i in range(layers):
        p = f"model.layers.{i}."
        state.update({p + "input_layernorm.weight": torch.ones(hidden, device=device, dtype=dtype),
                      p + "post_attention_layernorm.weight": torch.ones(hidden, device=device, dtype=dtype),
                      p + "self_attn.q_proj.weight": rnd(heads * hd, hidden), p + "self_attn.q_proj.bias": rnd(heads * hd),
                      p + "self_attn.k_proj.weight": rnd(kv * hd, hidden), p + "self_attn.k_proj.bias": rnd(kv * hd),
                      p + "self_attn.v_proj.weight": rnd(kv * hd, hidden), p + "self_attn.v_proj.bias": rnd(kv * hd),
                      p + "self_attn.o_proj.weight": rnd(hidden, heads * hd), p + "mlp.gate_proj.weight": rnd(inter, hidden),
                      p + "mlp.up_proj.weight": rnd(inter, hidden), p + "mlp.down_proj.weight": rnd(hidden, inter)})
    return LlamaModel.from_state_dict(cfg, state, device, dtype)


class _WordTokenizer:
    """Just enough of a tokenizer for the engine: ids in, ids out."""

    eos_token_id = None
    chat_template = None

    def __init__(self, vocab: int):
        self.vocab = {str(i): i for i in range(vocab)}

    def get_vocab(self):
        return self.vocab

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--target", default="qwen2.5-7b", choices=sorted(SHAPES))
    p.add_argument("--draft", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--budget", type=int, default=12)
    args = p.parse_args(argv)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    vocab = min(SHAPES[args.target][5], SHAPES[args.draft][5])
    target = random_model(args.target, vocab, args.device, dtype, 0)
    draft = random_model(args.draft, vocab, args.device, dtype, 1)
    tok = _WordTokenizer(vocab)
    prompt = torch.randint(0, vocab, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    params = SamplingParams(max_tokens=args.tokens, ignore_eos=True)
    rows = []
    for mode, ssd in (("ar", None), ("sd", None), ("ssd", {"transport": "thread", "budget": args.budget})):
        llm = LLM.from_models(tok, target, draft, mode=mode, k=args.k, ssd=ssd)
        llm.generate([prompt[:16]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = llm.generate([prompt], params)[0]
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        row = {"mode": mode, "tokens_per_s": round(len(out.token_ids) / wall, 2),
               "mean_accepted_len": out.stats["mean_accepted_length"], "verify_s": out.stats["time_verify_s"],
               "draft_wait_s": out.stats["time_draft_s"], "ids": out.token_ids[:8]}
        row.update({k: v for k, v in llm.strategy.stats().items() if k in ("T_p", "mean_verify_s", "mean_tree_s", "hit_rate")})
        llm.close()
        rows.append(row)
        print(row, flush=True)
    same = all(r["ids"] == rows[0]["ids"] for r in rows)
    print(json.dumps({"gpu_probe": rows, "greedy_outputs_agree": same, "device": args.device,
                      "target": args.target, "draft": args.draft}))
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
