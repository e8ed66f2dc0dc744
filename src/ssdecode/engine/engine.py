"""The engine loop: prefill, then rounds of the chosen strategy until every sequence stops.

It never branches on AR / SD / SSD; it commits what the strategy returns (trimmed at stops),
frees finished sequences and keeps the metrics.
"""
from __future__ import annotations

import time
from typing import Iterator

from ssdecode.decoding.base import StepOutput, Strategy
from ssdecode.engine.metrics import RequestMetrics
from ssdecode.engine.sequence import Sequence
from ssdecode.engine.stopping import StopChecker
from ssdecode.params import SamplingParams
from ssdecode.runtime.kv_cache import ContextOverflow
from ssdecode.sampling import make_generator


class Engine:
    def __init__(self, strategy: Strategy, stopper: StopChecker, model_context: int):
        self.strategy = strategy
        self.stopper = stopper
        # The strategy looks ahead (draft tokens verified past the last committed one), so a
        # sequence may only grow to what leaves that lookahead inside the model's context.
        self.max_context = model_context - strategy.cache_tokens_needed()
        self.run_metrics = RequestMetrics()  # counts summed over requests, times per round

    def run(self, prompts: list[list[int]], params: list[SamplingParams]) -> Iterator[tuple[Sequence, list[int]]]:
        """Yield (sequence, newly emitted token ids) as rounds commit them."""
        for i, p in enumerate(prompts):
            if not p:
                raise ValueError(f"prompt {i} is empty")
            if len(p) >= self.max_context:
                raise ContextOverflow(f"prompt {i} has {len(p)} tokens; the context holds "
                                      f"{self.max_context} (prompt + at least 1 generated token)")
        seqs = [Sequence(i, i, list(p), sp, make_generator(sp)) for i, (p, sp) in
                enumerate(zip(prompts, params))]
        need = max(len(p) + sp.max_tokens for p, sp in zip(prompts, params))
        self.strategy.setup(len(seqs), min(need, self.max_context) + self.strategy.cache_tokens_needed())
        start = time.perf_counter()
        first = self.strategy.prefill(seqs)
        prefill_time = time.perf_counter() - start
        self.run_metrics.time_prefill += prefill_time
        for s, tok in zip(seqs, first):
            s.metrics.time_prefill = prefill_time
            yield s, self.stopper.commit(s, [tok], self.max_context)
        active = self._retire(seqs)
        while active:
            out = self.strategy.step(active)
            self._record(active, out)
            for s, toks in zip(active, out.tokens):
                yield s, self.stopper.commit(s, toks, self.max_context)
            active = self._retire(active)
        elapsed = time.perf_counter() - start
        self.run_metrics.time_total += elapsed
        for s in seqs:
            s.metrics.generated = len(s.output_ids)
            s.metrics.time_total = elapsed
            self.run_metrics.generated += s.metrics.generated

    def _retire(self, seqs: list[Sequence]) -> list[Sequence]:
        done = [s for s in seqs if s.finished]
        if done:
            self.strategy.release(done)
        return [s for s in seqs if not s.finished]

    def _record(self, seqs: list[Sequence], out: StepOutput) -> None:
        for i, s in enumerate(seqs):
            m = s.metrics
            if out.proposed:
                m.record_round(out.proposed[i], out.accepted[i])
                self.run_metrics.record_round(out.proposed[i], out.accepted[i])
            if out.hit:
                for target in (m, self.run_metrics):
                    target.hits += out.hit[i]
                    target.misses += not out.hit[i]
                    if out.hit[i]:
                        target.tokens_on_hit += len(out.tokens[i])
                    else:
                        target.tokens_on_miss += len(out.tokens[i])
            m.time_draft += out.time_draft
            m.time_verify += out.time_verify
        self.run_metrics.time_draft += out.time_draft
        self.run_metrics.time_verify += out.time_verify
