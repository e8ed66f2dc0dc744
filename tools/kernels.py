"""Microbenchmark of the GGUF quantized-weight kernels (issue 11) against what torch offers, at the
demo target's decode and verification shapes and the draft's Q5_0 ones.

    python -m tools.kernels   # threads 1 and 2; this CPU, then AVX2
    python -m tools.kernels --threads 2 --rows 1,16 --no-avx2

Methods, timed in turn repeat after repeat (medians; the machines are shared, so compare ratios
within one run), each on copies of its weight that together exceed twice the last-level cache,
so that every product reads its weight from memory as a model does:

- ``ours``: ssdecode.kernels.ggml on the GGUF blocks (fp32 activations, fp32 sums);
- ``int8``: the same blocks with the activations rounded to int8 (Q4_K and Q6_K; the opt-in
  gguf-a8 format, llama.cpp's arithmetic);
- ``il``: as ``int8`` from the interleaved layout (``ggml.interleaves``: AVX-512 VNNI), what
  gguf-a8 runs there;
- ``packed``: fp32 F.linear weights in oneDNN's packed layout (today's CPU default);
- ``dense``: F.linear on the dequantized fp32 weight;
- ``int4pack``: torch's ``_weight_int4pack_mm_for_cpu`` on the Q4_K shapes (int4 groups of 32,
  bf16 scales, zeros and activations: not the stored model, shown for speed only);
- ``before`` (with ``--baseline DIR``): the kernel of another checkout's ``src/ssdecode/kernels``
  (e.g. ``git archive`` of an older commit), on the types it has: before and after in one run.

The ``avx2`` rows come from a child process with every library held to AVX2 (our kernel,
ATen, oneDNN, MKL): what a machine without AVX-512 runs. GB/s count the bytes of the weight as each
method stores it. Two bandwidths are measured in the same process and thread count: ``copy``, the
bytes read plus written per second by a 1 GiB ``Tensor.copy_``, and ``read``, the bytes per second
an fp32 matrix-vector product (F.linear, one row) streams from a 1 GiB weight. A copy also reads
each destination line before writing it, so a pure read stream runs faster than it; ``eff``
divides our GB/s by ``read``. Prints a markdown table and one JSON line.
"""
from __future__ import annotations

import argparse
import ast
import ctypes
import importlib.util
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ssdecode import envs
from ssdecode.kernels import ggml
from tools.gguf_blocks import random_blocks

SHAPES = [("Q4_K", 17920, 1536), ("Q4_K", 1536, 8960), ("Q6_K", 17920, 1536), ("Q6_K", 1536, 8960),
          ("Q6_K", 151936, 1536), ("Q8_0", 17920, 1536), ("Q8_0", 1536, 8960),
          ("Q5_0", 896, 896), ("Q5_0", 4864, 896), ("Q5_0", 896, 4864), ("Q5_0", 151936, 896)]  # the draft's
AVX2_ENV = {"SSDECODE_ISA": "avx2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
            "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


def last_level_cache() -> int:
    sizes = [Path(p).read_text().strip() for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size")]
    return max((int(s[:-1]) << 10 if s.endswith("K") else int(s) for s in sizes), default=32 << 20)


def copies(weight: torch.Tensor, nbytes: int, working_set: int) -> list[torch.Tensor]:
    return [weight] + [weight.clone() for _ in range(math.ceil(working_set / nbytes) - 1)]


def bandwidths(repeats: int) -> dict[str, float]:
    """GB/s of a 1 GiB copy (read + written) and of a 1 GiB fp32 matrix-vector product (read)."""
    src = torch.ones(1 << 28)
    dst, weight, x = torch.empty_like(src), src.view(1 << 16, 1 << 12), torch.ones(1, 1 << 12)
    seconds = timed({"copy": lambda i: dst.copy_(src), "read": lambda i: F.linear(x, weight)}, repeats)
    return {"copy": 2 * src.nbytes / seconds["copy"] / 1e9, "read": src.nbytes / seconds["read"] / 1e9}


def timed(methods: dict, repeats: int) -> dict[str, float]:
    """Median seconds per call; method(i) runs on weight copy i. Methods alternate, so a change in
    the machine's load hits all of them alike."""
    times = {name: [] for name in methods}
    for i in range(repeats + 1):
        for name, run in methods.items():
            t0 = time.perf_counter()
            run(i)
            if i:  # the first is a warm-up
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def int4pack(n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed int4 weight and its bf16 scales and zeros, groups of 32 (Q4_K's sub-block size)."""
    w = torch.randint(0, 16, (n, k), dtype=torch.int32)
    return torch.ops.aten._convert_weight_to_int4pack_for_cpu(w, 2), torch.rand(k // 32, n, 2).bfloat16()


def baseline_kernel(folder: str):
    """quantized_linear(x, blocks, qtype, n, k) of the kernels in ``folder``, compiled by its own
    build.py (into the same content-keyed cache); None for a type that it has no kernel for."""
    spec = importlib.util.spec_from_file_location("_baseline_build", Path(folder) / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    lib = build.shared_library("ggml" if hasattr(build, "LIBRARIES") else "ggml_cpu.c")  # a tree before C units
    lib.ssd_ggml_linear.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                    ctypes.c_void_p, ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
    qtypes = ast.literal_eval(re.search(r"^QTYPES = (\(.*?\))", (Path(folder) / "ggml.py").read_text(), re.M).group(1))
    isa = ggml.ISAS.index(envs.isa(ggml.ISAS) or ggml.best_isa())

    def linear(x, blocks, qtype, n, k):
        y = torch.empty(x.shape[0], n)
        lib.ssd_ggml_linear(isa, qtypes.index(qtype), x.data_ptr(), x.shape[0], k, blocks.data_ptr(), n, None,
                            y.data_ptr(), torch.get_num_threads())
        return y
    return lambda qtype: linear if qtype in qtypes else None


def bench_shape(qtype: str, n: int, k: int, rows: list[int], repeats: int, working_set: int,
                baseline=None) -> list[dict]:
    blocks = torch.from_numpy(random_blocks(qtype, n, k))
    stored = copies(blocks, blocks.nbytes, working_set)  # GGUF row order, for ``before``
    ours = [ggml.pack(b, qtype, n, k) for b in stored]
    dense = copies(torch.randn(n, k), 4 * n * k, working_set)
    packed = [torch.ops.mkldnn._reorder_linear_weight(w, 1) for w in dense]
    sizes = {"ours": blocks.nbytes, "int8": blocks.nbytes, "before": blocks.nbytes, "dense": 4 * n * k,
             "packed": 4 * n * k}
    before = baseline and baseline(qtype)
    if qtype == "Q4_K":
        w4, sz = int4pack(n, k)
        sizes["int4pack"] = w4.nbytes + sz.nbytes
        w4s = copies(w4, sizes["int4pack"], working_set)
    il = [ggml.pack(b, qtype, n, k, interleaved=True) for b in stored] if ggml.interleaves(qtype, "int8") else []
    if il:
        sizes["il"] = il[0].nbytes
    results = []
    for m in rows:
        x = torch.randn(m, k)
        methods = {
            "ours": lambda i: ggml.quantized_linear(x, ours[i % len(ours)], qtype, n, k),
            "packed": lambda i: torch.ops.mkldnn._linear_pointwise(x, packed[i % len(packed)], None, "none", [], ""),
            "dense": lambda i: F.linear(x, dense[i % len(dense)]),
        }
        if qtype in ggml.INT8_QTYPES:
            methods["int8"] = lambda i: ggml.quantized_linear(x, ours[i % len(ours)], qtype, n, k, activations="int8")
        if il:
            methods["il"] = lambda i: ggml.quantized_linear(x, il[i % len(il)], qtype, n, k, activations="int8",
                                                            interleaved=True)
        if before:
            methods["before"] = lambda i: before(x, stored[i % len(stored)], qtype, n, k)
        if qtype == "Q4_K":
            xb = x.bfloat16()
            methods["int4pack"] = lambda i: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, w4s[i % len(w4s)], 32, sz)
        seconds = timed(methods, repeats)
        results.append({"type": qtype, "n": n, "k": k, "m": m, "ms": {a: s * 1e3 for a, s in seconds.items()},
                        "gbps": {a: sizes[a] / s / 1e9 for a, s in seconds.items()}})
    return results


def run(threads: list[int], rows: list[int], repeats: int, shapes: list, baseline=None) -> dict:
    """{threads: {"bandwidth": {...}, "results": [...]}} in this process's instruction set."""
    working_set = 2 * last_level_cache()
    out = {}
    for t in threads:
        torch.set_num_threads(t)
        out[t] = {"bandwidth": bandwidths(repeats),
                  "results": [r for s in shapes for r in bench_shape(*s, rows, repeats, working_set, baseline)]}
    return out


def table(worlds: dict) -> str:
    head = ("| ISA | threads | type | N x K | M | ours ms | ours GB/s | eff | packed fp32 ms | packed GB/s "
            "| dense fp32 ms | int4pack bf16 ms | packed / ours | before ms | before / ours | int8 ms | ours / int8 "
            "| il ms | il GB/s | il eff | int8 / il |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for isa, by_threads in worlds.items():
        for t, res in by_threads.items():
            for r in res["results"]:
                ms, gb = r["ms"], r["gbps"]
                i4 = f"{ms['int4pack']:.2f}" if "int4pack" in ms else "-"
                was = f"{ms['before']:.2f} | {ms['before'] / ms['ours']:.2f}x" if "before" in ms else "- | -"
                a8 = f"{ms['int8']:.2f} | {ms['ours'] / ms['int8']:.2f}x" if "int8" in ms else "- | -"
                il = (f"{ms['il']:.2f} | {gb['il']:.1f} | {gb['il'] / res['bandwidth']['read']:.0%} | "
                      f"{ms['int8'] / ms['il']:.2f}x" if "il" in ms else "- | - | - | -")
                lines.append(f"| {isa} | {t} | {r['type']} | {r['n']}x{r['k']} | {r['m']} | {ms['ours']:.2f} | "
                             f"{gb['ours']:.1f} | {gb['ours'] / res['bandwidth']['read']:.0%} | {ms['packed']:.2f} | "
                             f"{gb['packed']:.1f} | {ms['dense']:.2f} | {i4} | {ms['packed'] / ms['ours']:.1f}x | "
                             f"{was} | {a8} | {il} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", default="1,2", help="comma list of thread counts")
    p.add_argument("--rows", default="1,4,8,16", help="comma list of activation rows (M)")
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--shapes", default="all", help="comma list of TYPE:NxK, e.g. Q4_K:17920x1536")
    p.add_argument("--no-avx2", action="store_true", help="skip the child process held to AVX2")
    p.add_argument("--baseline", help="another checkout's src/ssdecode/kernels folder, timed as 'before'")
    p.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)  # the AVX2 child
    args = p.parse_args(argv)
    threads = [int(t) for t in args.threads.split(",")]
    rows = [int(m) for m in args.rows.split(",")]
    shapes = SHAPES if args.shapes == "all" else [
        (s.split(":")[0], *map(int, s.split(":")[1].split("x"))) for s in args.shapes.split(",")]
    isa = envs.isa(ggml.ISAS) or ggml.best_isa()
    load = [os.getloadavg()[0]]  # other processes on the cores skew multi-thread timings most
    baseline = baseline_kernel(args.baseline) if args.baseline else None
    worlds = {isa: run(threads, rows, args.repeats, shapes, baseline)}
    if args.json_only:
        print(json.dumps(worlds[isa]))
        return 0
    if not args.no_avx2 and isa != "avx2" and ggml.best_isa() in ("avx512", "amx"):
        child = subprocess.run([sys.executable, "-m", "tools.kernels", "--json-only", *(argv or sys.argv[1:])],
                               env=os.environ | AVX2_ENV, capture_output=True, text=True, check=True)
        worlds["avx2"] = {int(t): r for t, r in json.loads(child.stdout.strip().splitlines()[-1]).items()}
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown")
    load.append(os.getloadavg()[0])
    bandwidth = ", ".join(f"{isa} {t} threads: copy {r['bandwidth']['copy']:.1f}, read {r['bandwidth']['read']:.1f}"
                          for isa, w in worlds.items() for t, r in w.items())
    print(f"{cpu}; load average {load[0]:.2f} at the start, {load[1]:.2f} at the end; GB/s: {bandwidth}")
    print(table(worlds))
    print(json.dumps({"bench": "kernels", "cpu": cpu, "load": load, "worlds": worlds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
