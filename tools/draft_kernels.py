"""Microbenchmark of the draft's weight formats at the demo draft's shapes (Qwen2.5 0.5B: fused
q/k/v, o, fused gate/up, down, the output head), for 1, 2 and 5 activation rows:

    python -m tools.draft_kernels --threads 2

- ``int4``: ssdecode.kernels.int4 (4-bit blocks, int8 activations: the ``int4`` draft format);
- ``int8``: fbgemm's dynamic-quantized product on a per-channel int8 weight (``int8``);
- ``q5_0``: ssdecode.kernels.ggml on Q5_0 blocks, fp32 activations (the draft's GGUF as stored);
- ``packed``: oneDNN fp32 (the draft's fp32 conversion).

As in ``tools.kernels``: methods alternate repeat after repeat (medians), each cycles through
copies of its weight larger than twice the last-level cache, GB/s count each format's own bytes,
and ``eff`` divides them by the read bandwidth of an fp32 matrix-vector product in the same process.
Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from ssdecode.kernels import ggml, int4
from ssdecode.models.linear import Int8Linear
from tools.gguf_blocks import random_blocks
from tools.kernels import bandwidths, copies, last_level_cache, timed

SHAPES = [(1152, 896), (896, 896), (9728, 896), (896, 4864), (151936, 896)]


def bench_shape(n: int, k: int, rows: list[int], repeats: int, working_set: int) -> list[dict]:
    w = torch.randn(n, k) * 0.02
    w4 = int4.quantize_weight(w)
    q5 = ggml.pack(torch.from_numpy(random_blocks("Q5_0", n, k)), "Q5_0", n, k)
    sizes = {"int4": w4.nibbles.nbytes + w4.scales.nbytes, "int8": n * k + 4 * n, "q5_0": q5.nbytes,
             "packed": 4 * n * k}
    int4s = [int4.Int4Weight(a, b, k) for a, b in zip(copies(w4.nibbles, sizes["int4"], working_set),
                                                       copies(w4.scales, sizes["int4"], working_set))]
    int8s = [Int8Linear(w) for _ in range(-(-working_set // sizes["int8"]))]
    q5s = copies(q5, q5.nbytes, working_set)
    packed = [torch.ops.mkldnn._reorder_linear_weight(c, 1) for c in copies(w, 4 * n * k, working_set)]
    out = []
    for m in rows:
        x = torch.randn(1, m, k)
        seconds = timed({
            "int4": lambda i: int4.int4_linear(x, int4s[i % len(int4s)]),
            "int8": lambda i: int8s[i % len(int8s)](x),
            "q5_0": lambda i: ggml.quantized_linear(x, q5s[i % len(q5s)], "Q5_0", n, k),
            "packed": lambda i: torch.ops.mkldnn._linear_pointwise(x, packed[i % len(packed)], None, "none", [], ""),
        }, repeats)
        out.append({"n": n, "k": k, "m": m, "ms": {a: s * 1e3 for a, s in seconds.items()},
                    "gbps": {a: sizes[a] / s / 1e9 for a, s in seconds.items()}})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", default="1,2,5", help="comma list of activation rows (M)")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [int(m) for m in args.rows.split(",")]
    load = os.getloadavg()[0]
    bw = bandwidths(args.repeats)
    results = [r for n, k in SHAPES for r in bench_shape(n, k, rows, args.repeats, 2 * last_level_cache())]
    print(f"int4 isa {int4.best_isa()}, {args.threads} threads, load average {load:.2f}; "
          f"GB/s: copy {bw['copy']:.1f}, read {bw['read']:.1f}")
    print("| N x K | M | int4 ms | int4 GB/s | eff | int8 ms | int8 GB/s | Q5_0 ms | packed fp32 ms | int8 / int4 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        ms, gb = r["ms"], r["gbps"]
        print(f"| {r['n']}x{r['k']} | {r['m']} | {ms['int4']:.3f} | {gb['int4']:.1f} | {gb['int4'] / bw['read']:.0%} | "
              f"{ms['int8']:.3f} | {gb['int8']:.1f} | {ms['q5_0']:.3f} | {ms['packed']:.3f} | "
              f"{ms['int8'] / ms['int4']:.2f}x |")
    print(json.dumps({"bench": "draft_kernels", "threads": args.threads, "load": load, "bandwidth": bw,
                      "results": results}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
