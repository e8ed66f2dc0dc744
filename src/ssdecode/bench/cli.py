"""``ssdecode bench``: AR, SD (K sweep), SSD and the Transformers peers on the same prompts."""
from __future__ import annotations

import argparse
import json
import sys


def add_bench_parser(sub, add_model_args) -> None:
    b = sub.add_parser("bench", help="benchmark decoding modes against Transformers")
    add_model_args(b)
    b.add_argument("--modes", default="ar,sd", help="comma list of ar,sd,ssd")
    b.add_argument("--sd-k", default="3,5,7", help="K values to sweep for sd (comma list)")
    b.add_argument("--ssd-k", default=None, help="K values for ssd (default: --k or 5)")
    b.add_argument("--prompts", default="humaneval,stdlib",
                   help="comma list of prompt sets: humaneval, stdlib, or a file")
    b.add_argument("--num-prompts", type=int, default=20)
    b.add_argument("--max-tokens", type=int, default=128)
    b.add_argument("--no-hf", action="store_true", help="skip the Transformers peers")
    b.add_argument("--out", default=None, help="also write the JSON result to this file")


def cmd_bench(args) -> int:
    from ssdecode.bench.hf_peer import HFPeer
    from ssdecode.bench.prompts import load_prompts
    from ssdecode.bench.runner import encode_all, run_hf, run_ours
    from ssdecode.cli import ssd_options
    from ssdecode.engine.llm import LLM
    from ssdecode.models.loader import resolve_model

    modes = args.modes.split(",")
    sd_ks = [int(k) for k in args.sd_k.split(",")]
    ssd_ks = [int(k) for k in (args.ssd_k or str(args.k or 5)).split(",")]
    draft_spec = args.draft or "demo-draft"
    llm = LLM(target=args.target, draft=draft_spec, mode="ar", device=args.device)
    sets = {name: encode_all(llm, load_prompts(name, args.num_prompts)) for name in args.prompts.split(",")}
    rows = []
    for set_name, ids in sets.items():
        results = []
        llm.configure("ar")
        base = run_ours(llm, "ssdecode-ar", set_name, ids, args.max_tokens, True)
        results.append(base)
        for k in sd_ks if "sd" in modes else []:
            llm.configure("sd", k=k)
            results.append(run_ours(llm, f"ssdecode-sd-k{k}", set_name, ids, args.max_tokens, True))
        for k in ssd_ks if "ssd" in modes else []:
            llm.configure("ssd", k=k, ssd=ssd_options(args))
            results.append(run_ours(llm, f"ssdecode-ssd-k{k}", set_name, ids, args.max_tokens, True))
        llm.configure("ar")
        if not args.no_hf:
            peer = HFPeer(resolve_model(args.target), resolve_model(draft_spec), llm.device)
            hf_ar = run_hf(peer, "hf-generate", set_name, ids, args.max_tokens, False, True)
            hf_as = run_hf(peer, "hf-assisted", set_name, ids, args.max_tokens, True, True)
            hf_as.extra["speedup_vs_hf_ar"] = round(hf_as.tokens_per_s / hf_ar.tokens_per_s, 3)
            results += [hf_ar, hf_as]
            del peer
        rows += [r.row(base) for r in results]
        _print_table([r for r in rows if r["prompts"] == set_name])
    llm.close()
    summary = {"bench": rows, "max_tokens": args.max_tokens, "num_prompts": args.num_prompts}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    return 0


def _print_table(rows: list[dict]) -> None:
    cols = ["system", "prompts", "tokens_per_s", "speedup_vs_ar", "acceptance", "mean_accepted_len",
            "hit_rate", "e_hit", "matches_ar"]
    print(" | ".join(f"{c:>17}" for c in cols))
    for r in rows:
        print(" | ".join(f"{'-' if r.get(c) is None else r.get(c)!s:>17}" for c in cols))
    sys.stdout.flush()
