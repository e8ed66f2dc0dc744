"""Forward latency of one model by matmul weight format: a decode step (1 token) and
verification-shaped forwards (8, 16 tokens) after a 200-token context. Prints one JSON line.

    python -m tools.steps --model demo-target --weights dense,packed
    python -m tools.steps --model demo-draft --weights dense,packed,int8
    python -m tools.steps --weights gguf-a8,gguf-a8@SSDECODE_INTERLEAVED=0 --rounds 5

A format may carry ``@VAR=VALUE``: that environment variable is set while its model loads (a
load-time choice such as the packed layout). With ``--rounds R`` every model is loaded first and
the formats take turns R times (the fastest of all counts): on a shared machine whose speed
drifts, a comparison within one process and time window.
"""
from __future__ import annotations

import argparse
import json
import os

import torch

from ssdecode.models.loader import load_model
from ssdecode.plan.calibrate import widths_seconds


def _load(model: str, name: str):
    """The model in format ``name`` (``FORMAT`` or ``FORMAT@VAR=VALUE``, VAR set while it loads)."""
    fmt, _, setting = name.partition("@")
    var, _, value = setting.partition("=")
    before = os.environ.get(var) if var else None
    if var:
        os.environ[var] = value
    try:
        return load_model(model, weights=fmt)
    finally:
        if var and before is None:
            os.environ.pop(var)
        elif var:
            os.environ[var] = before


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo-target")
    p.add_argument("--weights", default="dense,packed", help="comma list of weight formats")
    p.add_argument("--tokens", default="1,8,16", help="comma list of forward widths")
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=0, help="load every format, then alternate this many times")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = args.weights.split(",")
    widths = [int(t) for t in args.tokens.split(",")]
    best: dict[str, dict[int, float]] = {}
    if args.rounds:
        models = {name: _load(args.model, name) for name in names}
        for _ in range(args.rounds):
            for name, model in models.items():
                for w, s in widths_seconds(model, widths, args.repeats).items():
                    best.setdefault(name, {})[w] = min(s, best.get(name, {}).get(w, s))
    else:
        for name in names:
            model = _load(args.model, name)
            best[name] = widths_seconds(model, widths, args.repeats)
            del model
    result = {name: {w: round(s, 4) for w, s in by_width.items()} for name, by_width in best.items()}
    print(json.dumps({"model": args.model, "threads": torch.get_num_threads(), "seconds": result}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
