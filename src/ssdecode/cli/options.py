"""The model and decoding options shared by ``generate``, ``serve`` and ``bench``, and the
``EngineSettings`` they make (validated at once: a bad option fails before any model loads)."""
from __future__ import annotations

import argparse

from ssdecode.config.deploy import TRANSPORTS
from ssdecode.config.formats import DRAFT_FORMATS, TARGET_FORMATS
from ssdecode.config.settings import ACCEPTANCE_PRIOR, EngineSettings
from ssdecode.config.ssd import BACKUPS


def count(minimum: int):
    """An argparse type: an integer >= ``minimum`` (checked before anything loads)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--target", default="demo-target",
                   help="target model: demo-target, an HF folder, a .gguf file or a hub id")
    p.add_argument("--draft", default=None, help="draft model for sd/ssd (default: demo-draft)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:0 ... (default: cuda if present)")
    p.add_argument("--threads", type=count(1), default=None, help="torch CPU threads for the target")
    p.add_argument("--cuda-graphs", action=argparse.BooleanOptionalAction, default=None,
                   help="static shapes captured as CUDA graphs for decode, verification and the "
                        "draft's steps (default: on for CUDA devices)")
    p.add_argument("--k", type=int, default=None,
                   help="draft tokens per round (sd/ssd; default 5), the most auto may pick (default 8)")
    p.add_argument("--weights", default="auto", choices=TARGET_FORMATS,
                   help="target matmul weights: auto (gguf-a8 for a GGUF model on CPU, else dequant), "
                        "gguf-a8 (the blocks as stored, activations rounded to int8 per 256 as llama.cpp "
                        "computes: the GGUF's model), gguf (as stored, fp32 activations: the fp32 "
                        "conversion's model up to rounding), dequant (the fp32 conversion)")
    p.add_argument("--draft-weights", default="auto", choices=DRAFT_FORMATS,
                   help="draft matmul weights: as --weights, or q4k / int4 / int8 (CPU; the fp32 "
                        "conversion re-quantized to Q4_K blocks, 4-bit blocks or int8 per channel; "
                        "decoding stays exact whatever the draft computes)")
    p.add_argument("--acceptance-prior", type=float, default=ACCEPTANCE_PRIOR,
                   help=f"auto: the per-token acceptance its first pick assumes and its estimates start "
                        f"from (default {ACCEPTANCE_PRIOR}, the demo pair on real text; ~0.99 for code)")
    p.add_argument("--draft-confidence", type=float, default=None,
                   help="sd: end a round's drafting after a token the draft gives less than this "
                        "probability (K is then the maximum per round)")
    ssd = p.add_argument_group("ssd (speculative speculative decoding)")
    ssd.add_argument("--fanout", default="geometric",
                     help="'geometric', 'uniform:F', or a comma list F_0,...,F_K")
    ssd.add_argument("--budget", type=int, default=None, help="total fan-out B for geometric")
    ssd.add_argument("--saguaro-c", type=float, default=1.0, help="Saguaro sampling constant C in (0,1]")
    ssd.add_argument("--backup", default="neural", choices=BACKUPS)
    ssd.add_argument("--transport", default="process", choices=TRANSPORTS,
                     help="draft worker in a thread or in a second process (torch.distributed)")
    ssd.add_argument("--draft-device", default=None, help="device of the draft worker")
    ssd.add_argument("--draft-threads", type=count(1), default=1, help="CPU threads of the draft worker")
    ssd.add_argument("--draft-timeout", type=float, default=None,
                     help="seconds to wait for a draft worker reply before dropping the worker and going on "
                          "with SD on the in-process draft (exact either way) while a new worker starts "
                          "(default: automatic, 5 s plus 10x the slowest reply measured for the same work)")


def ssd_options(args) -> dict:
    """The SSD algorithm and deployment options (split by ``DecodingSettings.build``)."""
    return {"fanout": args.fanout, "budget": args.budget, "saguaro_c": args.saguaro_c,
            "backup": args.backup, "transport": args.transport, "draft_device": args.draft_device,
            "draft_threads": args.draft_threads, "round_timeout_s": args.draft_timeout}


def engine_settings(args, mode: str | None = None, **sizes) -> EngineSettings:
    """The settings of ``args`` (``mode``: instead of ``--mode``; ``sizes``: max_num_seqs,
    max_model_len)."""
    return EngineSettings.build(
        target=args.target, draft=args.draft, mode=mode or args.mode, k=args.k, device=args.device,
        ssd=ssd_options(args), min_confidence=args.draft_confidence, weights=args.weights,
        draft_weights=args.draft_weights, cuda_graphs=args.cuda_graphs, acceptance_prior=args.acceptance_prior,
        **sizes)
