"""Decode and verification attention on CPU: our kernel (kernels/attention.py, each query row
over exactly its keys) against PyTorch's SDPA on the same inputs, interleaved, medians. Prints
one JSON line.

    python -m tools.attention --shapes 12x2x128:300:1,12x2x128:300:5,12x2x128:1500:1
"""
from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

from ssdecode.kernels import attention
from tools.kernels import timed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="12x2x128:300:1,12x2x128:300:5,14x2x64:300:1,12x2x128:1500:1",
                   help="comma list of HEADSxKV_HEADSxHEAD_DIM:KEYS:TOKENS")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=200)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = {}
    for shape in args.shapes.split(","):
        heads, keys, t = shape.split(":")
        h, hkv, d = (int(x) for x in heads.split("x"))
        span = int(keys)
        t = int(t)
        q, k, v = torch.randn(1, t, h, d), torch.randn(1, hkv, span, d), torch.randn(1, hkv, span, d)
        mask = torch.arange(span) <= (span - t + torch.arange(t))[None, :, None]  # causal over the span
        sdpa_mask = mask[:, None]
        seconds = timed({
            "ours": lambda i: attention.attend(q, k, v, mask if t > 1 else None),
            "sdpa": lambda i: F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=sdpa_mask,
                                                             enable_gqa=True),
        }, args.repeats)
        out[shape] = {name: round(s * 1e6, 1) for name, s in seconds.items()}
    print(json.dumps({"threads": args.threads, "microseconds": out}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
