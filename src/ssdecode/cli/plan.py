"""``ssdecode plan``: predicted SD and SSD speedups from theory, for a latency profile or for this
machine's calibration (``--calibrate``), and the mode ``--mode auto`` would pick."""
from __future__ import annotations

import json

from ssdecode.models.loader import load_model
from ssdecode.plan.calibrate import load_or_calibrate
from ssdecode.plan.pick import explain
from ssdecode.plan.planner import GPU_7B, Profile, gate_prior, prediction_dict, rank


def add_plan_parser(sub) -> None:
    p = sub.add_parser("plan", help="predict AR/SD/SSD speed from theory and (--calibrate) this machine")
    p.add_argument("--a", type=float, nargs="+", default=[0.84, 0.99],
                   help="per-token acceptance rates (0.84 ~ stdlib prompts, 0.99 ~ HumanEval)")
    p.add_argument("--k", type=int, nargs="+", default=[3, 5, 7])
    p.add_argument("--budget", type=int, default=16, help="total fan-out B")
    p.add_argument("--r", type=float, default=0.8, help="power-law exponent of miss vs fan-out")
    p.add_argument("--profile", default="gpu", choices=["gpu", "custom", "machine"],
                   help="'gpu' (7B/0.5B on H100s), 'custom' (--times) or 'machine' (this machine's "
                        "calibration of --target/--draft, measured once and cached)")
    p.add_argument("--times", type=float, nargs=4, metavar=("T1", "TV", "D1", "DW"),
                   help="custom seconds: target 1 token, target K+1 tokens, draft 1, draft wide")
    p.add_argument("--calibrate", action="store_true", help="measure this machine again (implies --profile machine)")
    p.add_argument("--target", default="demo-target")
    p.add_argument("--draft", default="demo-draft")
    p.add_argument("--weights", default="auto",
                   help="target weight format (models/linear.py), or a comma list to rank them all")
    p.add_argument("--draft-weights", default="auto", help="draft weight format(s), e.g. auto,int4")
    p.add_argument("--confidence", type=float, nargs="*", default=[0.5],
                   help="--profile machine: also rank SD with drafting gated at these draft confidence "
                        "thresholds (--draft-confidence), from the prior acceptance above and below them")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (a calibration is kept per count)")


def cmd_plan(args) -> int:
    if args.calibrate or args.profile == "machine":
        return _plan_machine(args)
    profile = GPU_7B if args.profile == "gpu" else Profile("custom", *args.times)
    rows = [prediction_dict(profile, a, k, args.budget, args.r) for a in args.a for k in args.k]
    print(f"profile {profile.name}: target {profile.target_1 * 1e3:.2f}/{profile.target_verify * 1e3:.2f} ms, "
          f"draft {profile.draft_1 * 1e3:.2f}/{profile.draft_wide * 1e3:.2f} ms")
    print(f"{'a':>5} {'K':>3} {'fan-out':>24} {'hit':>6} {'T_SD':>6} {'T_p':>6} "
          f"{'SD/AR':>6} {'SSD/AR':>7} {'SSD/SD':>7}")
    for r in rows:
        print(f"{r['a']:>5} {r['k']:>3} {str(r['fanout']):>24} {r['hit_rate']:>6} {r['t_sd']:>6} {r['t_p']:>6} "
              f"{r['speedup_sd']:>6} {r['speedup_ssd']:>7} {r['ssd_over_sd']:>7}")
    print(json.dumps({"plan": rows}))
    return 0


def _plan_machine(args) -> int:
    """Calibrate (or load the cached calibration of) each pair of weight formats, then rank every
    configuration of every pair."""
    out, ranked = {"calibrations": [], "ranked": {}}, {a: [] for a in args.a}
    for tfmt in args.weights.split(","):
        target = load_model(args.target, weights=tfmt)
        for dfmt in args.draft_weights.split(","):
            draft = load_model(args.draft, device=target.device, weights=dfmt)
            cal = load_or_calibrate(target, draft, fresh=args.calibrate, progress=True)
            pair = f"{target.weight_format}/{getattr(draft, 'weight_format', dfmt)}"
            print(f"{pair}: calibration {cal.key} of {cal.measured_at}")
            print(f"  target ms by tokens  {ms(cal.target_s)}")
            print(f"  draft ms by rows     {ms(cal.draft_s)}")
            print(f"  contention (target beside the draft) {cal.contention:.2f}x")
            out["calibrations"].append(cal.to_json())
            for a in args.a:
                choices = rank(cal, a, args.r, args.budget)
                print(f"  a={a}: auto picks {explain(choices, cal.measured_at, a)}")
                ranked[a] += [(c, pair) for c in choices]
                for conf in args.confidence:
                    gate = gate_prior(conf)
                    gated = [c for c in rank(cal, a, args.r, args.budget, gate=gate) if c.confidence is not None]
                    print(f"  a={a}, SD gated at {conf} (u={gate.split(a)[0]:.2f} of draft tokens below it): "
                          + ", ".join(f"{c.label} {c.tokens_per_s:.2f}" for c in gated[:3]))
                    ranked[a] += [(c, pair) for c in gated]
            del draft
        del target
    for a, rows in ranked.items():
        rows.sort(key=lambda cp: -cp[0].tokens_per_s)
        print(f"a={a}, weights target/draft: " + ", ".join(f"{c.label} {p} {c.tokens_per_s:.2f}" for c, p in rows[:6])
              + " tokens/s ...")
        out["ranked"][str(a)] = [{"mode": c.mode, "k": c.k, "confidence": c.confidence, "weights": p,
                                  "tokens_per_s": round(c.tokens_per_s, 3)} for c, p in rows]
    print(json.dumps(out))
    return 0


def ms(table: dict[int, float]) -> str:
    return " ".join(f"{n}:{s * 1e3:.1f}" for n, s in sorted(table.items()))
