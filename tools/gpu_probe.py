"""GPU probe on random-weight models of real shapes (``tools/gpu_shapes.py``): decode step time
against the weights-read floor, verify time by K, AR/SD/SSD tokens/s with acceptance replayed
(the draft agrees with the target on a fraction ``--agree`` of next tokens: 0.84 and 0.96 are what
the demo pair measured on stdlib-like and HumanEval-like prompts) and Transformers ``generate``
on the same weights. Greedy AR/SD/SSD must agree (exit 1 otherwise). Prints readable lines and a
final JSON line.

    python -m tools.gpu_probe --device cuda --target qwen2.5-7b --draft qwen2.5-0.5b
    python -m tools.gpu_probe --device cpu --target tiny --draft tiny   # CPU smoke test
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams
from tools.gpu_shapes import SHAPES, IdTokenizer, RandomWeights, hf_model, random_model, shape_config
from tools.gpu_timing import free, sync, time_forward, timed

FLOOR_BPS = 4.3e12  # H200 weights-read bandwidth the issue takes (4.8 TB/s nominal)
LABEL = "acceptance replayed, random weights"


def engine_row(tok, target, draft, mode: str, args, prompt, cuda_graphs=None) -> dict:
    """One mode through ``LLM.generate``; ``cuda_graphs`` None: the engine's default."""
    ssd = {"transport": "thread", "budget": args.budget} if mode == "ssd" else None
    llm = LLM.from_models(tok, target, draft, mode=mode, k=args.k, ssd=ssd, max_num_seqs=1,
                          max_model_len=len(prompt) + args.tokens + 8, cuda_graphs=cuda_graphs)
    try:
        llm.generate([prompt[:16]], SamplingParams(max_tokens=4, ignore_eos=True))  # warm-up
        out, wall = timed(args.device, lambda: llm.generate([prompt], SamplingParams(
            max_tokens=args.tokens, ignore_eos=True))[0])
        s, extra = out.stats, llm.strategy.stats()
    finally:
        llm.close()
    row = {"mode": mode, "cuda_graphs": cuda_graphs, "tokens_per_s": round(len(out.token_ids) / wall, 2),
           "decode_tokens_per_s": s["decode_tokens_per_s"], "mean_accepted_len": s["mean_accepted_length"],
           "acceptance_rate": s["acceptance_rate"], "verify_s": s["time_verify_s"],
           "draft_wait_s": s["time_draft_s"], "ids": out.token_ids}
    if s["verifications"] and s["draft_proposed"]:
        # per-token agreement: accepted / tokens tried (a round tries up to its first rejection)
        full = round((s["acceptance_by_position"][args.k - 1:] or [0])[0] * s["verifications"])
        row["acceptance_measured"] = round(s["draft_accepted"] / (s["verifications"] + s["draft_accepted"] - full), 4)
    row.update({k: v for k, v in extra.items() if k in ("T_p", "mean_verify_s", "mean_tree_s", "hit_rate")})
    return row


def hf_row(weights: RandomWeights, config, args, prompt) -> dict:
    model = hf_model(weights, config, args.hf_attn)
    ids = torch.tensor([prompt], device=args.device)

    def gen(n):
        with torch.inference_mode():
            return model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n,
                                  min_new_tokens=n, pad_token_id=0)

    gen(4)  # warm-up
    out, wall = timed(args.device, lambda: gen(args.tokens))
    return {"mode": f"transformers ({args.hf_attn})", "tokens_per_s": round(args.tokens / wall, 2),
            "ids": out[0, len(prompt):].tolist()}


def _name(row: dict) -> str:
    eager = " (eager, cuda_graphs=False)" if row["cuda_graphs"] is False else ""
    return row["mode"] + eager + (f" @agree {row['agree']}" if "agree" in row else "")


def _describe(row: dict, ar: dict) -> str:
    """One readable line per engine row."""
    line = f"{_name(row):<32} {row['tokens_per_s']:>9.2f} tok/s  {row['tokens_per_s'] / ar['tokens_per_s']:.2f}x AR"
    if "agree" in row:
        line += (f"  measured acceptance {row.get('acceptance_measured')} (accepted len "
                 f"{row['mean_accepted_len']})  [{LABEL}]")
    if "hit_rate" in row:
        line += f"  hit rate {row['hit_rate']}"
    return line


def _log(t0: float, what: str) -> None:
    print(f"[{time.perf_counter() - t0:7.1f}s] {what}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--target", default="qwen2.5-7b", choices=sorted(SHAPES))
    p.add_argument("--draft", default="qwen2.5-0.5b", choices=sorted(SHAPES))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--tokens", type=int, default=128, help="new tokens per mode")
    p.add_argument("--prompt", type=int, default=128, help="prompt tokens (the cached context of the timings)")
    p.add_argument("--budget", type=int, default=12)
    p.add_argument("--agree", type=float, nargs="+", default=[0.84, 0.96],
                   help="fractions of next tokens the draft agrees on (acceptance replayed)")
    p.add_argument("--reps", type=int, default=10, help="forwards per timing (median)")
    p.add_argument("--max-verify-k", type=int, default=8)
    p.add_argument("--hf-attn", default="eager", help="Transformers attention (eager, sdpa); 'none' skips it")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    vocab = min(SHAPES[args.target][5], SHAPES[args.draft][5])
    tcfg, dcfg = shape_config(args.target, vocab), shape_config(args.draft, vocab)
    tweights = RandomWeights(tcfg, args.device, dtype, 0)
    target = random_model(tweights, tcfg)
    sync(args.device)
    _log(t0, f"built target {args.target} ({tweights.nbytes() / 1e9:.2f} GB)")
    prompt = torch.randint(0, vocab, (args.prompt,), generator=torch.Generator().manual_seed(0)).tolist()
    floor = tweights.nbytes() / FLOOR_BPS
    step = time_forward(target, 1, args.prompt, args.reps)
    step_eager = time_forward(target, 1, args.prompt, args.reps, graphs=False)
    verify = {k: round(time_forward(target, k + 1, args.prompt, args.reps) * 1e3, 3)
              for k in range(1, args.max_verify_k + 1)}
    print(f"decode step (raw forward, {args.prompt} cached): {step * 1e3:.3f} ms; weights-read floor "
          f"{floor * 1e3:.3f} ms ({tweights.nbytes() / 1e9:.2f} GB / 4.3 TB/s); ratio {step / floor:.2f}; "
          f"eager (no graphs) {step_eager * 1e3:.3f} ms")
    print(f"verify ms by K (forward of K+1 tokens): {verify}")
    _log(t0, "forward timings")
    tok = IdTokenizer(vocab)
    rows = [engine_row(tok, target, None, "ar", args, prompt)]
    print(_describe(rows[0], rows[0]), flush=True)
    rows.append(engine_row(tok, target, None, "ar", args, prompt, cuda_graphs=False))
    print(_describe(rows[-1], rows[0]), flush=True)
    for agree in args.agree:
        draft = random_model(RandomWeights(dcfg, args.device, dtype, 1, agree), dcfg)
        for mode in ("sd", "ssd"):
            rows.append({**engine_row(tok, target, draft, mode, args, prompt), "agree": agree, "label": LABEL})
            print(_describe(rows[-1], rows[0]), flush=True)
        del draft
        free(args.device)
    _log(t0, "engine rows")
    engine_step = 1 / rows[0]["decode_tokens_per_s"] if rows[0]["decode_tokens_per_s"] else None
    if engine_step:
        print(f"decode step (engine AR): {engine_step * 1e3:.3f} ms; ratio to floor {engine_step / floor:.2f}")
    del target
    free(args.device)
    hf = None
    if args.hf_attn != "none":
        try:  # a Transformers failure (version, memory) must not cost the rows above
            hf = hf_row(tweights, tcfg, args, prompt)
            hf["matches_ar"] = hf["ids"] == rows[0]["ids"]
            hf["ids"] = hf["ids"][:8]
            for r in rows:
                r["over_transformers"] = round(r["tokens_per_s"] / hf["tokens_per_s"], 2)
            print(f"transformers generate ({args.hf_attn}): {hf['tokens_per_s']} tok/s; greedy output "
                  f"{'matches' if hf['matches_ar'] else 'DIFFERS FROM'} ours; ours over it: "
                  + ", ".join(f"{_name(r)} {r['over_transformers']}x" for r in rows))
        except Exception as e:
            hf = {"error": repr(e)}
            print(f"transformers generate FAILED: {e!r}")
        free(args.device)
        _log(t0, "transformers generate")
    same = all(r["ids"] == rows[0]["ids"] for r in rows)
    for r in rows:
        r["ids"] = r["ids"][:8]
    result = {"target": args.target, "draft": args.draft, "device": args.device, "dtype": str(dtype),
              "prompt_tokens": args.prompt, "new_tokens": args.tokens, "k": args.k,
              "weight_bytes": tweights.nbytes(), "floor_ms": round(floor * 1e3, 3),
              "floor_ms_without_embedding": round(tweights.nbytes(True) / FLOOR_BPS * 1e3, 3),
              "decode_step_ms": round(step * 1e3, 3), "decode_step_over_floor": round(step / floor, 2),
              "engine_decode_step_ms": engine_step and round(engine_step * 1e3, 3),
              "engine_decode_step_over_floor": engine_step and round(engine_step / floor, 2),
              "decode_step_eager_ms": round(step_eager * 1e3, 3), "verify_ms_by_k": verify, "rows": rows,
              "transformers": hf,
              "greedy_outputs_agree": same, "elapsed_s": round(time.perf_counter() - t0, 1)}
    print(json.dumps({"gpu_probe": result}), flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
