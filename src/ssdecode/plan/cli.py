"""``ssdecode plan``: predicted SD and SSD speedups over AR for a latency profile."""
from __future__ import annotations

import json


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="predict SD/SSD speedups from theory for a latency profile")
    p.add_argument("--a", type=float, nargs="+", default=[0.84, 0.99],
                   help="per-token acceptance rates (0.84 ~ stdlib prompts, 0.99 ~ HumanEval)")
    p.add_argument("--k", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--budget", type=int, default=16, help="total fan-out B")
    p.add_argument("--r", type=float, default=0.8, help="power-law exponent of miss vs fan-out")
    p.add_argument("--profile", default="gpu", help="'gpu' (7B/0.5B on H100s) or 'custom'")
    p.add_argument("--times", type=float, nargs=4, metavar=("T1", "TV", "D1", "DW"),
                   help="custom seconds: target 1 token, target K+1 tokens, draft 1, draft wide")


def cmd_plan(args) -> int:
    from ssdecode.plan.planner import GPU_7B, Profile, prediction_dict

    profile = GPU_7B if args.profile == "gpu" else Profile("custom", *args.times)
    rows = [prediction_dict(profile, a, k, args.budget, args.r) for a in args.a for k in args.k]
    print(f"profile {profile.name}: target {profile.target_1 * 1e3:.2f}/{profile.target_verify * 1e3:.2f} ms, "
          f"draft {profile.draft_1 * 1e3:.2f}/{profile.draft_wide * 1e3:.2f} ms")
    print(f"{'a':>5} {'K':>3} {'fan-out':>24} {'hit':>6} {'T_SD':>6} {'T_p':>6} {'SD/AR':>6} {'SSD/AR':>7} {'SSD/SD':>7}")
    for r in rows:
        print(f"{r['a']:>5} {r['k']:>3} {str(r['fanout']):>24} {r['hit_rate']:>6} {r['t_sd']:>6} {r['t_p']:>6} "
              f"{r['speedup_sd']:>6} {r['speedup_ssd']:>7} {r['ssd_over_sd']:>7}")
    print(json.dumps({"plan": rows}))
    return 0
