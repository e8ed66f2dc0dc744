"""The ``ssdecode`` command line: generate, serve, models pull/verify, bench, plan."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

# Before torch and the GGUF kernels load their OpenMP runtimes: for the batch commands, keep
# OpenMP threads spinning between parallel regions. A round alternates the draft's kernels and
# the target's, and with the default policy the idle pool's threads fall asleep in between and
# every wake-up costs: SD decoded 15.6 tokens/s with ACTIVE against 10.8-11.8 without (docs/lab/
# benchmarks.md section 11). Not for `serve`: an idle server would spin its cores. The user's
# own OMP_WAIT_POLICY wins (PASSIVE on a machine shared with busy processes).
if sys.argv[1:2] in (["generate"], ["bench"]):
    os.environ.setdefault("OMP_WAIT_POLICY", "ACTIVE")

import torch  # noqa: E402 (after OMP_WAIT_POLICY)

from ssdecode.cli.bench import add_bench_parser, cmd_bench  # noqa: E402
from ssdecode.cli.options import add_model_args, count, engine_settings  # noqa: E402
from ssdecode.cli.plan import add_plan_parser, cmd_plan  # noqa: E402
from ssdecode.config.settings import MODES  # noqa: E402
from ssdecode.engine.llm import LLM  # noqa: E402
from ssdecode.models.demo import pull_demo  # noqa: E402
from ssdecode.models.errors import ModelLoadError  # noqa: E402
from ssdecode.models.gguf_convert import cached_conversions  # noqa: E402
from ssdecode.models.loader import verify_model  # noqa: E402
from ssdecode.params import InvalidParams, SamplingParams  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssdecode", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="generate text, streaming it to the terminal")
    g.add_argument("prompt")
    g.add_argument("--mode", default="auto", choices=MODES,
                   help="auto (default): the mode and K predicted fastest on this machine (measured once, "
                        "then adapted per round); ar, sd or ssd")
    add_model_args(g)
    g.add_argument("--raw", action="store_true", help="raw completion: skip the chat template")
    g.add_argument("--max-tokens", type=int, default=128)
    g.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    g.add_argument("--top-k", type=int, default=0, help="0 = off")
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    g.add_argument("--stats", action="store_true", help="print decoding metrics")
    g.add_argument("--json", action="store_true",
                   help="print one JSON object with text, token_ids and stats instead of streaming")

    s = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API")
    s.add_argument("--mode", default="auto", choices=MODES, help="as for generate")
    add_model_args(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' on /v1 routes")
    s.add_argument("--max-num-seqs", type=count(1), default=8, help="requests decoded at once")
    s.add_argument("--max-model-len", type=int, default=None, help="prompt + output tokens per request")
    s.add_argument("--max-queue", type=count(0), default=64, help="requests waiting for a slot before 429")
    s.add_argument("--served-model-name", default=None, help="the model name clients send (default: --target)")

    m = sub.add_parser("models", help="manage models")
    msub = m.add_subparsers(dest="models_command", required=True)
    pull = msub.add_parser("pull", help="download, verify and convert a model")
    pull.add_argument("name", choices=["demo"], help="'demo': the default target/draft pair")
    verify = msub.add_parser("verify", help="checksum converted models, converting damaged ones again; "
                                            "exit 1 if any was damaged")
    verify.add_argument("specs", nargs="*", metavar="SPEC",
                        help="models to check (default: every converted model in the cache)")

    add_bench_parser(sub)
    add_plan_parser(sub)
    return parser


def _stats(completion, llm) -> dict:
    """The request's metrics, plus the strategy's own (SSD worker) under its mode's name."""
    extra = llm.stats()
    out = {**completion.stats, llm.mode: extra} if extra else dict(completion.stats)
    if llm.choice:
        out["mode"] = f"auto: {llm.choice}"
    return out


def cmd_generate(args) -> int:
    params = SamplingParams(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                            max_tokens=args.max_tokens, seed=args.seed, stop=tuple(args.stop))
    with LLM(engine_settings(args)) as llm:
        if llm.choice:
            print(f"mode auto: {llm.choice}", file=sys.stderr, flush=True)
        if args.json:
            c = llm.generate([args.prompt], params, chat=not args.raw)[0]
            print(json.dumps({"text": c.text, "token_ids": c.token_ids,
                              "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                              "stats": _stats(c, llm)}))
            return 0
        for piece in llm.stream(args.prompt, params, chat=not args.raw):
            if isinstance(piece, str):
                sys.stdout.write(piece)
                sys.stdout.flush()
            else:
                sys.stdout.write("\n")
                if args.stats:
                    print(json.dumps(_stats(piece, llm), indent=2), file=sys.stderr)
    return 0


def cmd_serve(args) -> int:
    from ssdecode.server.serve import serve  # the server extra (fastapi, uvicorn) is optional

    llm = LLM(engine_settings(args, max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len))
    name = args.served_model_name or args.target
    if llm.choice:
        print(f"mode auto: {llm.choice}", file=sys.stderr, flush=True)
    print(f"serving {name} ({args.mode}) at http://{args.host}:{args.port}/v1", file=sys.stderr, flush=True)
    serve(llm, name, host=args.host, port=args.port, api_key=args.api_key, max_queue=args.max_queue)
    return 0


def cmd_models(args) -> int:
    if args.models_command == "verify":
        return cmd_models_verify(args)
    paths = pull_demo(progress=True)
    print(f"target: {paths.target_dir}\ndraft:  {paths.draft_dir}")
    return 0


def cmd_models_verify(args) -> int:
    """One line per model: ``ok`` or ``BAD`` with what was wrong and done about it."""
    specs = args.specs or cached_conversions()
    if not specs:
        print("no converted models in the cache", file=sys.stderr)
    bad = 0
    for spec in specs:
        try:
            folder, ok, note = verify_model(spec)
        except ModelLoadError as e:
            ok, line = False, str(e)
        else:
            line = f"{folder}: {note}" if note else str(folder)
        bad += not ok
        print(f"{'ok ' if ok else 'BAD'} {line}", flush=True)
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if getattr(args, "threads", None):  # not every command has --threads
        torch.set_num_threads(args.threads)
    handlers = {"generate": cmd_generate, "models": cmd_models, "serve": cmd_serve, "bench": cmd_bench,
                "plan": cmd_plan}
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ModelLoadError, InvalidParams, ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
