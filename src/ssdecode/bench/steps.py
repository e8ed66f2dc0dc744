"""Forward latency of one model by matmul weight format: a decode step (1 token) and
verification-shaped forwards (8, 16 tokens) after a 200-token context. Prints one JSON line.

    python -m ssdecode.bench.steps --model demo-target --weights dense,packed
    python -m ssdecode.bench.steps --model demo-draft --weights dense,packed,int8
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from ssdecode.models.loader import load_model

CONTEXT = 200


def step_seconds(model, tokens: int, repeats: int) -> float:
    """Median seconds of a ``tokens``-token forward after CONTEXT cached tokens (rolled back
    after each, so every repeat sees the same cache)."""
    cache = model.new_cache(1, CONTEXT + tokens)
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (1, CONTEXT), generator=gen)
    model.forward(prompt, torch.arange(CONTEXT)[None], cache, [0], last_only=True)
    times = []
    for i in range(repeats + 1):
        ids = torch.randint(0, 1000, (1, tokens), generator=gen)
        t0 = time.perf_counter()
        model.forward(ids, (CONTEXT + torch.arange(tokens))[None], cache, [0])
        if i:  # the first is a warm-up
            times.append(time.perf_counter() - t0)
        cache.truncate(0, CONTEXT)
    return statistics.median(times)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-target")
    p.add_argument("--weights", default="dense,packed", help="comma list of weight formats")
    p.add_argument("--tokens", default="1,8,16", help="comma list of forward widths")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = {}
    for fmt in args.weights.split(","):
        model = load_model(args.model, weights=fmt)
        result[fmt] = {t: round(step_seconds(model, int(t), args.repeats), 4) for t in args.tokens.split(",")}
        del model
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "seconds": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
