"""``ssdecode bench``: AR, SD (K sweep), SSD and the Transformers peers on the same prompts;
``ssdecode bench --serve``: the same modes behind ``ssdecode serve`` under concurrent streaming
clients (bench/serving.py)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ssdecode import envs
from ssdecode.bench.hf_peer import HFPeer
from ssdecode.bench.llamacpp import find_bin_dir, render_prompts, run_llamacpp
from ssdecode.bench.plots import draw
from ssdecode.bench.predict import add_predictions
from ssdecode.bench.prompts import load_prompts
from ssdecode.bench.runner import hf_system, our_system, run_systems
from ssdecode.bench.serving import COLUMNS, bench_serving
from ssdecode.cli.options import add_model_args, ssd_options
from ssdecode.config.settings import AUTO_K_MAX, DEFAULT_DRAFT
from ssdecode.engine.llm import LLM
from ssdecode.models.gguf_weights import gguf_source
from ssdecode.models.loader import load_model, load_tokenizer, resolve_model
from ssdecode.plan.calibrate import load_or_calibrate
from ssdecode.plan.pick import pick_draft


def add_bench_parser(sub) -> None:
    b = sub.add_parser("bench", help="benchmark decoding modes against Transformers")
    add_model_args(b)
    b.add_argument("--modes", default="ar,sd", help="comma list of ar,sd,ssd,auto")
    b.add_argument("--sd-k", default="5,7", help="K values to sweep for sd (comma list)")
    b.add_argument("--sd-confidence", default="none",
                   help="comma list of draft confidence thresholds to run sd with, for each K "
                        "('none' = no gating), e.g. none,0.4")
    b.add_argument("--ar-weights", default=None,
                   help="comma list of target weight formats to run ar with (default: --weights); "
                        "sd and ssd use --weights")
    b.add_argument("--sd-draft-weights", default=None,
                   help="comma list of draft weight formats to run the sd sweep with (default: --draft-weights)")
    b.add_argument("--ssd-k", default=None, help="K values for ssd (default: --k or 3)")
    b.add_argument("--prompts", default="humaneval,stdlib",
                   help="comma list of prompt sets: humaneval, stdlib, or a file")
    b.add_argument("--num-prompts", default="20", help="prompts per set, or a comma list with one count per set")
    b.add_argument("--max-tokens", type=int, default=128)
    b.add_argument("--no-hf", action="store_true", help="skip the Transformers peers")
    b.add_argument("--llamacpp-bin", default=None, metavar="DIR",
                   help="also run llama.cpp (its binaries in DIR, built separately: docs/lab/benchmarks.md section 11) "
                        "on the same GGUF files and prompts, before ours (all sets): llama-bench, AR and "
                        "llama-speculative-simple for each --sd-k")
    b.add_argument("--out", default=None, help="also write the JSON result to this file")
    b.add_argument("--plot", default=None, metavar="DIR",
                   help="also draw PNG plots of the result into DIR (matplotlib; python -m "
                        "ssdecode.bench.plots RESULT.json DIR draws them from a saved result)")
    b.add_argument("--serve", action="store_true",
                   help="serving benchmark: one `ssdecode serve` per mode in --modes, driven by concurrent "
                        "streaming clients")
    b.add_argument("--concurrency", default="1,2,4,8", help="--serve: comma list of concurrent clients")


def build_systems(args, llm, draft_source: str) -> tuple[list, dict]:
    """The systems to run, and for each of ours (mode, K, draft, confidence) for its prediction."""
    modes = args.modes.split(",")
    sd_formats = (args.sd_draft_weights or args.draft_weights).split(",") if "sd" in modes else []
    drafts = {args.draft_weights: llm.draft}
    for fmt in sd_formats:
        drafts[fmt] = drafts.get(fmt) or load_model(draft_source, device=llm.device, weights=fmt)
    configs = {"ssdecode-ar": ("ar", 0, llm.draft, None)}

    def ours(name: str, mode: str, k: int | None = 5, ssd=None, conf=None, fmt=args.draft_weights):
        built = LLM.from_models(llm.tokenizer, llm.target, drafts[fmt], mode=mode, k=k, ssd=ssd,
                                draft_source=draft_source, min_confidence=conf, draft_weights=fmt,
                                acceptance_prior=args.acceptance_prior)
        configs[name] = (mode, k or AUTO_K_MAX, drafts[fmt], conf)
        return our_system(name, built)

    systems = [our_system("ssdecode-ar", llm)]
    for fmt in (args.ar_weights or args.weights).split(","):
        if fmt != args.weights:
            target = load_model(args.target, device=llm.device, weights=fmt)
            systems.append(our_system(f"ssdecode-ar-{fmt}", LLM.from_models(llm.tokenizer, target)))
    for fmt in sd_formats:
        tag = "" if fmt == "auto" else f"-{fmt}"
        for k in [int(k) for k in args.sd_k.split(",")]:
            for conf in [None if c == "none" else float(c) for c in args.sd_confidence.split(",")]:
                ctag = "" if conf is None else f"-c{conf}"
                systems.append(ours(f"ssdecode-sd-k{k}{ctag}{tag}", "sd", k, conf=conf, fmt=fmt))
    tag = "" if args.draft_weights == "auto" else f"-{args.draft_weights}"
    for k in [int(k) for k in (args.ssd_k or str(args.k or 3)).split(",")] if "ssd" in modes else []:
        systems.append(ours(f"ssdecode-ssd-k{k}{tag}", "ssd", k, ssd_options(args)))
    if "auto" in modes:  # as `generate --mode auto` would load it: the draft's format weighed too
        fmt = args.draft_weights
        if fmt == "auto":
            picked, fmt = pick_draft(llm.target, llm.draft, draft_source, args.acceptance_prior)
            drafts[fmt] = drafts.get(fmt) or picked
        systems.append(ours(f"ssdecode-auto{tag}", "auto", args.k, ssd_options(args), fmt=fmt))
    if not args.no_hf:
        peer = HFPeer(resolve_model(args.target), resolve_model(draft_source), str(llm.device))
        systems += [hf_system("hf-generate", peer, False), hf_system("hf-assisted", peer, True)]
    return systems, configs


def predictions(llm, configs: dict) -> dict:
    """System name -> (calibration of its pair, mode, K, confidence), calibrating each draft once
    (cached)."""
    cals = {}
    out = {}
    for name, (mode, k, draft, conf) in configs.items():
        if id(draft) not in cals:
            cals[id(draft)] = load_or_calibrate(llm.target, draft, progress=True)
        out[name] = (cals[id(draft)], mode, k, conf)
    return out


def llamacpp_rows(args, tokenizer, draft_source: str, set_name: str, prompts: list) -> list[dict]:
    """llama.cpp's rows for one prompt set, on the GGUF files our models are loaded from. Run before
    this process starts any OpenMP pool: with OMP_WAIT_POLICY=ACTIVE (the CLI's default) our idle
    pools would spin on the cores llama.cpp runs on (measured: its AR at 0.6x)."""
    res = run_llamacpp(find_bin_dir(args.llamacpp_bin), str(_gguf_of(args.target)), str(_gguf_of(draft_source)),
                       {set_name: render_prompts(prompts, tokenizer)}, args.max_tokens,
                       args.threads or torch.get_num_threads(), ks=[int(k) for k in args.sd_k.split(",")],
                       omp_wait_policy=envs.omp_wait_policy())  # ours: the CLI's (ACTIVE by default)
    res["bench"][0]["llama_bench"] = res.get("llama_bench")  # the AR row: its synthetic tg figure
    return res["bench"]


def _gguf_of(spec: str):
    """The GGUF file of a model spec: a .gguf path, or the one its conversion was made from."""
    return Path(spec) if spec.lower().endswith(".gguf") else gguf_source(resolve_model(spec))


def _prompt_sets(args) -> dict[str, list]:
    names = args.prompts.split(",")
    counts = [int(n) for n in str(args.num_prompts).split(",")]
    counts += [counts[-1]] * (len(names) - len(counts))
    return {name: load_prompts(name, n) for name, n in zip(names, counts)}


def _serve_args(args, mode: str, max_num_seqs: int) -> list[str]:
    """``ssdecode serve`` arguments for one mode, from the bench's model and SSD options."""
    out = ["--mode", mode, "--target", args.target, "--max-num-seqs", str(max_num_seqs),
           "--weights", args.weights, "--draft-weights", args.draft_weights]
    if args.draft:
        out += ["--draft", args.draft]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if mode == "sd":
        out += ["--k", args.sd_k.split(",")[0]]
        if args.sd_confidence.split(",")[0] != "none":
            out += ["--draft-confidence", args.sd_confidence.split(",")[0]]
    if mode == "ssd":
        out += ["--k", (args.ssd_k or str(args.k or 3)).split(",")[0], "--fanout", args.fanout,
                "--saguaro-c", str(args.saguaro_c), "--backup", args.backup, "--transport", args.transport,
                "--draft-threads", str(args.draft_threads)]
        if args.budget is not None:
            out += ["--budget", str(args.budget)]
    return out


def cmd_bench_serve(args) -> int:
    levels = [int(n) for n in args.concurrency.split(",")]
    sets = _prompt_sets(args)
    servers = {m: _serve_args(args, m, max(levels)) for m in args.modes.split(",")}
    print(" | ".join(f"{c:>10}" for c in COLUMNS))
    rows = bench_serving(servers, sets, levels, args.max_tokens, progress=lambda line: print(line, flush=True))
    summary = {"serve_bench": rows, "max_tokens": args.max_tokens, "concurrency": levels,
               "num_prompts": {k: len(v) for k, v in sets.items()}, "servers": servers}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    print(json.dumps(summary))
    return 0


def cmd_bench(args) -> int:
    if args.serve:
        return cmd_bench_serve(args)
    draft_source = args.draft or DEFAULT_DRAFT
    set_prompts = _prompt_sets(args)
    peer_rows = {}
    if args.llamacpp_bin:  # first: see llamacpp_rows
        tokenizer = load_tokenizer(args.target)
        peer_rows = {name: llamacpp_rows(args, tokenizer, draft_source, name, p) for name, p in set_prompts.items()}
    llm = LLM(target=args.target, draft=draft_source, mode="ar", device=args.device,
              weights=args.weights, draft_weights=args.draft_weights, cuda_graphs=args.cuda_graphs)
    sets = {name: [llm.encode(p.text, chat=p.chat) for p in prompts] for name, prompts in set_prompts.items()}
    systems, configs = build_systems(args, llm, draft_source)
    calibrated = predictions(llm, configs)
    rows = []
    for set_name, ids in sets.items():
        results = run_systems(systems, set_name, ids, args.max_tokens)
        set_rows = [r.row(results[0]) for r in results]
        # the mean context of a decode step: the prompt, then half the generated tokens
        add_predictions(set_rows, calibrated, sum(map(len, ids)) / len(ids) + args.max_tokens / 2)
        by_name = {r["system"]: r for r in set_rows}
        if "hf-assisted" in by_name:
            by_name["hf-assisted"]["speedup_vs_hf_generate"] = round(
                by_name["hf-assisted"]["tokens_per_s"] / by_name["hf-generate"]["tokens_per_s"], 3)
        set_rows += peer_rows.get(set_name, [])
        _print_table(set_rows)
        rows += set_rows
    summary = {"bench": rows, "max_tokens": args.max_tokens, "num_prompts": {k: len(v) for k, v in sets.items()},
               "threads": args.threads}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(summary, f, indent=2)
    if args.plot:
        for path in draw(summary, args.plot):
            print(f"plot: {path}", file=sys.stderr)
    print(json.dumps(summary))
    return 0


def _print_table(rows: list[dict]) -> None:
    cols = ["system", "prompts", "tokens_per_s", "speedup_vs_ar", "acceptance", "mean_accepted_len",
            "hit_rate", "matches_ar", "decode_tokens_per_s", "predicted_tokens_per_s"]
    print(" | ".join(f"{c:>17}" for c in cols))
    for r in rows:
        print(" | ".join(f"{'-' if r.get(c) is None else r.get(c)!s:>17}" for c in cols))
    sys.stdout.flush()
