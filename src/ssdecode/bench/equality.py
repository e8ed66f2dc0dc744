"""Greedy exactness on real prompts: SD and SSD outputs must equal AR's token for token.

Runs each mode once over the whole prompt set as ONE batch (rows finish independently; SSD
handles hits and misses per row), so checking 20 prompts x 128 tokens costs minutes, not the
hour that batch-1 timing runs take on a CPU. Prints one JSON line; exits 1 on any mismatch.

    python -m ssdecode.bench.equality --prompts humaneval --num-prompts 20 --max-tokens 128
"""
from __future__ import annotations

import argparse
import json
import time

from ssdecode.bench.prompts import load_prompts
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="demo-target")
    p.add_argument("--draft", default="demo-draft")
    p.add_argument("--prompts", default="humaneval")
    p.add_argument("--num-prompts", type=int, default=20)
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--ssd-k", type=int, default=3)
    p.add_argument("--budget", type=int, default=6, help="ssd: total fan-out B")
    p.add_argument("--weights", default="auto", help="the target's matmul weight format (models/linear.py)")
    args = p.parse_args(argv)
    llm = LLM(target=args.target, draft=args.draft, mode="ar", weights=args.weights)
    ids = [llm.encode(x.text, chat=x.chat) for x in load_prompts(args.prompts, args.num_prompts)]
    params = SamplingParams(max_tokens=args.max_tokens, ignore_eos=True)
    runs, report = {}, {}
    for mode, k, ssd in (("ar", 1, None), ("sd", args.k, None),
                         ("ssd", args.ssd_k, {"transport": "process", "draft_threads": 1, "budget": args.budget})):
        llm.configure(mode, k=k, ssd=ssd)
        t0 = time.perf_counter()
        runs[mode] = [c.token_ids for c in llm.generate(ids, params)]
        report[mode] = {"seconds": round(time.perf_counter() - t0, 1), **llm.strategy.stats()}
        report[mode]["metrics"] = llm.core.run_metrics.summary()
    llm.close()
    equal = {m: [i for i, (a, b) in enumerate(zip(runs["ar"], runs[m])) if a != b] for m in ("sd", "ssd")}
    print(json.dumps({"equality": {m: not bad for m, bad in equal.items()}, "mismatched_prompts": equal,
                      "prompts": args.prompts, "num_prompts": len(ids), "max_tokens": args.max_tokens,
                      "report": report}))
    return 0 if not any(equal.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
