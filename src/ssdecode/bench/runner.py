"""Runs decoding systems over prompt sets in one process and collects comparable numbers.

Every system decodes the same prompts greedily to a fixed length (EOS ignored), batch 1, after
one warm-up generation that is not timed. Tokens/s are ratios within one run on one machine.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from tqdm import tqdm

from ssdecode.bench.prompts import Prompt
from ssdecode.engine.llm import LLM
from ssdecode.engine.metrics import RequestMetrics
from ssdecode.params import SamplingParams

log = logging.getLogger(__name__)


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

    def row(self, baseline: "SystemResult | None") -> dict:
        s = self.metrics.summary()
        row = {"system": self.system, "prompts": self.prompt_set, "tokens_per_s": round(self.tokens_per_s, 3),
               "speedup_vs_ar": round(self.tokens_per_s / baseline.tokens_per_s, 3) if baseline else None,
               "acceptance": s["acceptance_rate"], "mean_accepted_len": s["mean_accepted_length"],
               "hit_rate": s.get("hit_rate"), "e_hit": s.get("e_hit"),
               "matches_ar": _match(self.outputs, baseline.outputs) if baseline else None}
        row.update(self.extra)
        return row


def _match(a: list[list[int]], b: list[list[int]]) -> float | None:
    if not a or len(a) != len(b):
        return None
    return round(sum(x == y for x, y in zip(a, b)) / len(a), 3)


def encode_all(llm: LLM, prompts: list[Prompt]) -> list[list[int]]:
    return [llm.encode(p.text, chat=p.chat) for p in prompts]


def run_ours(llm: LLM, label: str, set_name: str, ids: list[list[int]], max_tokens: int,
             progress: bool) -> SystemResult:
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True)
    llm.generate([ids[0][:32]], SamplingParams(max_tokens=8, ignore_eos=True))  # warm-up
    llm.engine.run_metrics = RequestMetrics()
    res = SystemResult(label, set_name)
    for p in tqdm(ids, desc=f"{label} [{set_name}]", disable=not progress, leave=False):
        t0 = time.perf_counter()
        (c,) = llm.generate([p], params)
        res.seconds += time.perf_counter() - t0
        res.tokens += len(c.token_ids)
        res.outputs.append(c.token_ids)
    res.metrics = llm.engine.run_metrics
    stats = getattr(llm.strategy, "stats", None)
    if callable(stats):
        res.extra.update(stats())
    return res


def run_hf(peer, label: str, set_name: str, ids: list[list[int]], max_tokens: int, assisted: bool,
           progress: bool) -> SystemResult:
    peer.generate(ids[0][:32], 8, assisted)  # warm-up
    res = SystemResult(label, set_name)
    for p in tqdm(ids, desc=f"{label} [{set_name}]", disable=not progress, leave=False):
        t0 = time.perf_counter()
        out = peer.generate(p, max_tokens, assisted)
        res.seconds += time.perf_counter() - t0
        res.tokens += len(out)
        res.outputs.append(out)
    return res
