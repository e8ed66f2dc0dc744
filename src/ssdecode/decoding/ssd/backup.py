"""Backup speculators: what a sequence gets when the outcome (k, t) is not in its speculation cache
(ssd-algorithm.md section 6). Misses are handled per sequence: only the missed rows run the
backup; hit rows keep their cached branch.

- ``neural``: draft K tokens just in time from the true state (SD quality, costs T_b).
- ``fast``: near-zero cost; propose the continuation of the longest n-gram of the sequence's own
  history that occurred before (prompt lookup), or nothing. Proposals are point masses: the
  verifier accepts s with probability p(s), which is exact at every temperature.
- ``adaptive``: per round, whichever of the two gives the higher expected throughput for this
  round's batch size and number of missed rows, from measured h, E, T_p and T_b.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import torch

from ssdecode.decoding.sample_steps import autoregress
from ssdecode.decoding.ssd.state import SeqState
from ssdecode.plan import theory
from ssdecode.sampling import SamplingTensors, saguaro_reweight
from ssdecode.transport.messages import Speculation

log = logging.getLogger(__name__)


class Backup(ABC):
    name: str

    @abstractmethod
    def propose(self, worker, seqs: list[SeqState]) -> list[Speculation]:
        """Speculations for ``seqs``, whose draft caches hold exactly their committed tokens but
        the last (``worker`` gives model, runner, config and the current fan-out)."""


class NeuralBackup(Backup):
    name = "neural"

    def propose(self, worker, seqs: list[SeqState]) -> list[Speculation]:
        model, cfg = worker.model, worker.config
        fanout = list(worker.fanout.fanout)
        # Near the end of the context, draft only what fits (positions stay < max_context).
        k = max(1, min([cfg.k] + [model.max_context - s.prefix_len for s in seqs]))
        gens = [s.generator for s in seqs]
        keep = any(g is not None for g in gens)
        st = stack_rows([s.st for s in seqs])
        reweight = None
        if keep and cfg.saguaro_c < 1.0:
            reweight = lambda q, i: saguaro_reweight(q, cfg.saguaro_c, fanout[i])
        draft = autoregress(worker.runner, [s.slot for s in seqs], [[s.history[-1]] for s in seqs], k,
                            st, gens, keep_probs=keep, reweight=reweight)
        tokens = draft.tokens.tolist()
        return [Speculation(tokens[b], draft.probs[b] if s.samples else None, not s.samples, "neural", fanout)
                for b, s in enumerate(seqs)]


class FastBackup(Backup):
    name = "fast"

    def propose(self, worker, seqs: list[SeqState]) -> list[Speculation]:
        cfg = worker.config
        fanout = list(worker.fanout.fanout)
        room = [max(0, min(cfg.k, worker.model.max_context - 1 - s.prefix_len)) for s in seqs]
        return [Speculation(ngram_lookup(s.history, cfg.fast_ngram, n), None, True, "fast", fanout)
                for s, n in zip(seqs, room)]


def ngram_lookup(history: list[int], max_n: int, k: int) -> list[int]:
    """Up to k tokens that followed the latest earlier occurrence of the longest suffix n-gram
    (n = max_n .. 1) of ``history``; [] when no suffix occurred before."""
    if k <= 0:
        return []
    length = len(history)
    for n in range(min(max_n, length - 1), 0, -1):
        pattern = history[-n:]
        first = pattern[0]
        for i in range(length - n - 1, -1, -1):
            if history[i] == first and history[i:i + n] == pattern:
                return history[i + n:i + n + k]
    return []


class AdaptiveBackup(Backup):
    name = "adaptive"

    def __init__(self):
        self.neural, self.fast = NeuralBackup(), FastBackup()

    def choose(self, worker, batch: int, misses: int) -> Backup:
        stats = worker.stats
        t_b = stats.t_b("neural")
        if t_b is None:
            return self.neural  # measure the neural backup's cost first
        a, k = worker.fanout.acceptance, worker.config.k
        e_sd = theory.expected_tokens(a, k)  # SD's expected tokens per round
        e_hit = stats.expected_tokens("hit") or e_sd
        e_neural = stats.expected_tokens("neural") or e_sd
        e_fast = stats.expected_tokens("fast") or 1.0
        t_p = stats.t_p or 0.0
        neural = theory.round_throughput(batch, misses, e_hit, e_neural, t_p, t_b)
        fast = theory.round_throughput(batch, misses, e_hit, e_fast, t_p, stats.t_b("fast") or 0.0)
        return self.neural if neural >= fast else self.fast

    def propose(self, worker, seqs: list[SeqState]) -> list[Speculation]:
        return self.choose(worker, len(seqs), len(seqs)).propose(worker, seqs)


def make_backup(name: str) -> Backup:
    return {"neural": NeuralBackup, "fast": FastBackup, "adaptive": AdaptiveBackup}[name]()


def stack_rows(sts: list[SamplingTensors]) -> SamplingTensors:
    """One SamplingTensors from per-sequence single rows."""
    return SamplingTensors(torch.cat([s.temperature for s in sts]), torch.cat([s.top_k for s in sts]),
                           torch.cat([s.top_p for s in sts]), tuple(g for s in sts for g in s.greedy),
                           tuple(f for s in sts for f in s.filtered))
