"""Forward latency of one model by matmul weight format: a decode step (1 token) and
verification-shaped forwards (8, 16 tokens) after a 200-token context. Prints one JSON line.

    python -m ssdecode.bench.steps --model demo-target --weights dense,packed
    python -m ssdecode.bench.steps --model demo-draft --weights dense,packed,int8
"""
from __future__ import annotations

import argparse
import json

import torch

from ssdecode.models.loader import load_model
from ssdecode.plan.calibrate import forward_seconds


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
        result[fmt] = {t: round(forward_seconds(model, int(t), args.repeats), 4) for t in args.tokens.split(",")}
        del model
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "seconds": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
