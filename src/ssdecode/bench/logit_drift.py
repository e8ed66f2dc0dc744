"""How far a weight format's logits lie from the fp32 conversion's on real prompts: each format
is fed the same tokens (the prompt, then the conversion's greedy continuation) and compared
position by position: the largest logit difference and how often the top token agrees. Prints
one JSON line.

    python -m ssdecode.bench.logit_drift --weights gguf,gguf-a8 --prompts humaneval,stdlib
"""
from __future__ import annotations

import argparse
import json

import torch

from ssdecode.bench.prompts import load_prompts
from ssdecode.engine.llm import encode_prompt
from ssdecode.models.loader import load_model, load_tokenizer
from ssdecode.runtime.runner import ModelRunner


def logits_along(model, prompt: list[int], continuation: list[int] | None, steps: int) -> tuple[torch.Tensor, list]:
    """Last-position logits after the prompt and after each of ``steps`` further tokens: those of
    ``continuation``, or (None) the model's own greedy choices, which are returned."""
    runner = ModelRunner(model, 1, len(prompt) + steps + 1)
    out = [runner.forward(torch.tensor([prompt]), torch.arange(len(prompt))[None], [0], last_only=True)[0, -1]]
    tokens = []
    for i in range(steps):
        tokens.append(continuation[i] if continuation is not None else int(out[-1].argmax()))
        out.append(runner.forward(torch.tensor([[tokens[-1]]]), torch.tensor([[len(prompt) + i]]), [0])[0, -1])
    return torch.stack(out), tokens


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-target")
    p.add_argument("--weights", default="gguf,gguf-a8", help="comma list of formats to compare with dequant")
    p.add_argument("--prompts", default="humaneval,stdlib")
    p.add_argument("--num-prompts", type=int, default=2)
    p.add_argument("--steps", type=int, default=64)
    args = p.parse_args(argv)
    tokenizer = load_tokenizer(args.model)
    prompts = {s: [encode_prompt(tokenizer, x.text, x.chat) for x in load_prompts(s, args.num_prompts)]
               for s in args.prompts.split(",")}
    reference = load_model(args.model, weights="dequant")
    base = {s: [logits_along(reference, ids, None, args.steps) for ids in rows] for s, rows in prompts.items()}
    del reference
    report = {}
    for fmt in args.weights.split(","):
        model = load_model(args.model, weights=fmt)
        for s, rows in prompts.items():
            ours = [logits_along(model, ids, tokens, args.steps)[0] for ids, (_, tokens) in zip(rows, base[s])]
            ref = torch.cat([r for r, _ in base[s]])
            got = torch.cat(ours)
            report[f"{fmt}/{s}"] = {"max_abs_diff": round((got - ref).abs().max().item(), 6),
                                    "logit_scale": round(ref.abs().max().item(), 2),
                                    "top1_agreement": round((got.argmax(-1) == ref.argmax(-1)).float().mean().item(),
                                                            4),
                                    "positions": ref.shape[0]}
        del model
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
