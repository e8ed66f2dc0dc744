"""Runs decoding systems over a prompt set in one process and collects comparable numbers.

Every system decodes the same prompts greedily to a fixed length (EOS ignored), batch 1, after
one warm-up generation that is not timed. Systems are interleaved prompt by prompt, so a slow
phase of a shared, noisy machine hits every system alike and the ratios stay meaningful.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from tqdm import tqdm

from ssdecode.engine.llm import LLM
from ssdecode.engine.metrics import RequestMetrics
from ssdecode.params import SamplingParams

WARMUP_PROMPT_TOKENS, WARMUP_NEW_TOKENS = 32, 8


@dataclass
class System:
    name: str
    generate: Callable[[list[int], int], list[int]]  # (prompt ids, new tokens) -> generated ids
    metrics: Callable[[], RequestMetrics] = RequestMetrics  # accumulated since the last reset
    reset: Callable[[], None] = lambda: None
    stats: Callable[[], dict] = dict


def our_system(name: str, llm: LLM) -> System:
    def generate(ids: list[int], n: int) -> list[int]:
        return llm.generate([ids], SamplingParams(max_tokens=n, ignore_eos=True))[0].token_ids

    def reset() -> None:
        llm.core.run_metrics = RequestMetrics()
    return System(name, generate, lambda: llm.core.run_metrics, reset, llm.strategy.stats)


def hf_system(name: str, peer, assisted: bool) -> System:
    return System(name, lambda ids, n: peer.generate(ids, n, assisted))


@dataclass
class SystemResult:
    system: str
    prompt_set: str
    tokens: int = 0
    seconds: float = 0.0
    outputs: list[list[int]] = field(default_factory=list)
    metrics: RequestMetrics = field(default_factory=RequestMetrics)
    extra: dict = field(default_factory=dict)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def row(self, baseline: "SystemResult") -> dict:
        s = self.metrics.summary()
        return {"system": self.system, "prompts": self.prompt_set, "tokens_per_s": round(self.tokens_per_s, 3),
                "speedup_vs_ar": round(self.tokens_per_s / baseline.tokens_per_s, 3),
                "decode_tokens_per_s": s["decode_tokens_per_s"],  # prefill excluded (what plan predicts)
                "acceptance": s["acceptance_rate"], "mean_accepted_len": s["mean_accepted_length"],
                "proposed_per_round": round(s["draft_proposed"] / s["verifications"], 4)
                if s["verifications"] else None,
                "acceptance_by_position": s["acceptance_by_position"],
                "hit_rate": s.get("hit_rate"), "e_hit": s.get("e_hit"), "e_miss": s.get("e_miss"),
                "time_draft_s": s["time_draft_s"], "time_verify_s": s["time_verify_s"],
                "matches_ar": round(sum(a == b for a, b in zip(self.outputs, baseline.outputs))
                                    / len(self.outputs), 3),
                # the strategy's own stats (SSD worker: T_p, hit rate by k, ...) since the system's
                # engine core was built, so the warm-up generation is included
                **({"strategy": self.extra} if self.extra else {})}


def run_systems(systems: list[System], set_name: str, prompts: list[list[int]], max_tokens: int,
                progress: bool = True) -> list[SystemResult]:
    """The first system is the baseline (our AR) for speedups and token-for-token matches."""
    results = [SystemResult(s.name, set_name) for s in systems]
    for s in systems:
        s.generate(prompts[0][:WARMUP_PROMPT_TOKENS], WARMUP_NEW_TOKENS)
        s.reset()  # forget the warm-up
    for ids in tqdm(prompts, desc=f"bench [{set_name}]", disable=not progress):
        for s, res in zip(systems, results):
            t0 = time.perf_counter()
            out = s.generate(ids, max_tokens)
            res.seconds += time.perf_counter() - t0
            res.tokens += len(out)
            res.outputs.append(out)
    for s, res in zip(systems, results):
        res.metrics = s.metrics()
        res.extra.update(s.stats())
    return results
