"""The GGUF kernels' AMX path against their AVX-512 path, alternately in one process (so both see
the same load), on the demo target's own weights (docs/lab/benchmarks.md, section 10).

    python -m tools.amx kernels --threads 1 --rows 1,5,16,64,150
    python -m tools.amx forward --threads 1 --prompt 150 --widths 1,5,9,16

``kernels``: one product per distinct (type, shape) of the file, the output head left out unless
``--head``; fastest of ``--repeats``, ms. ``forward``: a prefill of ``--prompt`` random tokens
(last position only, as generation runs it) and forwards of each width after it, fastest of
``--repeats``, ms. Prints a markdown table.
"""
from __future__ import annotations

import argparse
import os
import time

import torch

ISAS = ("avx512", "amx")


def _fastest(times: dict, key, fn) -> None:
    t0 = time.perf_counter()
    fn()
    times[key] = min(times.get(key, float("inf")), time.perf_counter() - t0)


def kernels(args) -> list[str]:
    from ssdecode import envs
    from ssdecode.kernels import ggml
    from ssdecode.models.demo import DEMO_MODELS
    from ssdecode.models.gguf_file import GGUFFile
    rows = [int(m) for m in args.rows.split(",")]
    lines = ["| tensor | type | N x K | M | avx512 ms | amx ms | avx512 / amx |", "|---|---|---|---|---|---|---|"]
    seen = set()
    for t in GGUFFile(envs.cache_dir() / "gguf" / f"{DEMO_MODELS[args.model].name}.gguf").tensors:
        k, n = (int(s) for s in t.shape) if len(t.shape) == 2 else (0, 0)
        q = t.tensor_type.name
        if q not in ggml.QTYPES or (q, n, k) in seen or (n > 100_000 and not args.head):
            continue
        seen.add((q, n, k))
        blocks = ggml.pack(torch.from_numpy(t.data.reshape(n, -1)), q, n, k)
        for m in rows:
            x, times = torch.randn(m, k), {}
            for rep in range(args.repeats):
                for isa in ISAS[::1 - 2 * (rep % 2)]:   # alternating which goes first
                    _fastest(times, isa, lambda: ggml.quantized_linear(x, blocks, q, n, k, isa=isa))
            lines.append(f"| {t.name} | {q} | {n}x{k} | {m} | {times['avx512'] * 1e3:.2f} | {times['amx'] * 1e3:.2f} | "
                         f"{times['avx512'] / times['amx']:.2f}x |")
            print(lines[-1], flush=True)
    return lines


def forward(args) -> list[str]:
    from ssdecode.models.loader import load_model
    from ssdecode.runtime.runner import ModelRunner
    model = load_model(args.model, weights="gguf")
    widths = [int(w) for w in args.widths.split(",")]
    gen = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, 1000, (1, args.prompt), generator=gen)
    times: dict = {}
    for rep in range(args.repeats):
        for isa in ISAS[::1 - 2 * (rep % 2)]:   # alternating which goes first
            os.environ["SSDECODE_ISA"] = isa
            runner = ModelRunner(model, 1, args.prompt + max(widths))
            _fastest(times, (isa, f"prefill {args.prompt}"),
                     lambda: runner.forward(prompt, torch.arange(args.prompt)[None], [0], last_only=True))
            for w in widths:
                ids = torch.randint(0, 1000, (1, w), generator=gen)
                _fastest(times, (isa, f"{w} after {args.prompt}"),
                         lambda: runner.forward(ids, (args.prompt + torch.arange(w))[None], [0]))
                runner.cache.truncate(0, args.prompt)
    os.environ.pop("SSDECODE_ISA")
    lines = ["| forward | avx512 ms | amx ms | avx512 / amx |", "|---|---|---|---|"]
    for key in dict.fromkeys(k for _, k in times):
        a, b = times[("avx512", key)], times[("amx", key)]
        lines.append(f"| {key} | {a * 1e3:.0f} | {b * 1e3:.0f} | {a / b:.2f}x |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("kernels", "forward"))
    p.add_argument("--model", default="demo-target", help="a demo model (its GGUF file is in the cache)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--rows", default="1,5,16,64,150", help="kernels: activation rows")
    p.add_argument("--head", action="store_true", help="kernels: the output head too")
    p.add_argument("--prompt", type=int, default=150, help="forward: prompt tokens")
    p.add_argument("--widths", default="1,5,9,16", help="forward: widths after the prompt")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from ssdecode.kernels import ggml
    if ggml.best_isa() != "amx":
        raise SystemExit(f"no usable AMX here (best instruction set: {ggml.best_isa()})")
    lines = kernels(args) if args.what == "kernels" else forward(args)
    print(f"threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.2f} at the end")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
