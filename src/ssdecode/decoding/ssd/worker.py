"""The draft worker: owns the draft model, its KV cache and every sequence's draft-side state.

Transport-agnostic: ``handle(request) -> reply`` and ``prepare()``, which the serve loop
(transport/base.py) calls right after sending each reply, i.e. while the target verifies the
speculation just sent. ``prepare`` runs glue + fork + tree decode (tree.py) and keeps each
sequence's branches; the next ``Outcome (k, t)`` then picks the branch keyed (k, t) (hit) or runs
the backup speculator for the rows that missed (miss), per sequence.

Draft cache invariant between messages: a sequence's slot holds its committed tokens but the
last one (t_prev), i.e. P = len(history) - 1 rows, plus scratch past P that the next truncate
drops (speculation glue, tree rows, just-in-time draft tokens).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import replace

import torch

from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.sample_steps import feed_logits
from ssdecode.decoding.ssd.backup import AdaptiveBackup, FastBackup, NeuralBackup, make_backup
from ssdecode.decoding.ssd.fanout import FanoutPolicy, position_caps
from ssdecode.decoding.ssd.state import SeqState
from ssdecode.decoding.ssd.stats import WorkerStats
from ssdecode.decoding.ssd.tree import TreeRow, build_branches
from ssdecode.decoding.vocab import AlignedVocab
from ssdecode.models.base import CausalLM
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors, make_generator
from ssdecode.transport.messages import Outcome, Ready, Setup, Speculation, SpeculationBatch, Start, Stats, StatsRequest

log = logging.getLogger(__name__)


class DraftWorker:
    def __init__(self, model: CausalLM):
        self.base_model = self.model = model
        self.config = self.runner = self.fanout = self.backup = None
        self.seqs: dict[int, SeqState] = {}
        self.pending: list[int] = []  # seq ids whose speculation was just sent, cache not built yet
        self.stats = WorkerStats()
        self.last_tree_time = 0.0
        # On CUDA the worker runs on its own stream (overlap with the target's kernels when they
        # share a GPU); replies are complete (synchronized) before they leave handle().
        self.stream = torch.cuda.Stream(model.device) if model.device.type == "cuda" else None

    @property
    def cache(self):
        """The draft runner's KV cache."""
        return self.runner.cache

    # -- requests --------------------------------------------------------------------------
    def handle(self, msg):
        if self.stream is None:
            return self._handle(msg)
        with torch.cuda.stream(self.stream):
            reply = self._handle(msg)
        self.stream.synchronize()
        if self.runner is not None:
            self.runner.check()
        return reply

    def _handle(self, msg):
        if isinstance(msg, Setup):
            return self._setup(msg)
        if self.config is None:
            raise RuntimeError(f"{type(msg).__name__} before Setup")
        if isinstance(msg, Start):
            return self._start(msg)
        if isinstance(msg, Outcome):
            return self._outcome(msg)
        if isinstance(msg, StatsRequest):
            return Stats(self.summary())
        raise TypeError(f"unexpected request {type(msg).__name__}")

    def _setup(self, msg: Setup) -> Ready:
        cfg = self.config = SSDConfig.from_dict(msg.config)
        base = self.base_model
        self.model = base if base.vocab_size == msg.vocab_size else AlignedVocab(base, msg.vocab_size)
        vocab = self.model.vocab_size
        widest = min(cfg.total_budget, sum(position_caps(cfg.k, vocab, cfg.fanout_cap)))
        want = msg.max_len + cfg.k + 2 + cfg.k * widest  # glue + tree scratch past the committed tokens
        backend = msg.backend or None
        try:
            self.runner = ModelRunner(self.model, msg.num_slots, want, backend)
        except ValueError:  # a model that caps its cache at its context: trees near the end get skipped
            self.runner = ModelRunner(self.model, msg.num_slots, min(want, self.model.max_context), backend)
            log.warning("draft cache capped at %d rows (wanted %d): rows near the context end get no forks",
                        self.cache.max_len, want)
        if not self.model.supports_tree_mask and cfg.fanout_cap != 0:
            log.warning("the draft model has no tree attention masks: no speculation cache (every round misses)")
            cfg = replace(cfg, fanout_cap=0)
        # CUDA graphs at start-up: glue (1..K+1 tokens), tree steps (up to the widest fan-out),
        # the neural backup's draft steps
        self.runner.capture(msg.num_slots, list(range(1, cfg.k + 2)))
        self.runner.capture(msg.num_slots, list(range(1, widest + 1)) if cfg.fanout_cap != 0 else [], tree=True)
        self.runner.capture(msg.num_slots, [1], last_only=True)
        self.fanout = FanoutPolicy(cfg, vocab)
        self.backup = make_backup(cfg.backup)
        self.seqs, self.pending, self.stats = {}, [], WorkerStats()
        return Ready(base.vocab_size, self.cache.max_len)

    def _start(self, msg: Start) -> SpeculationBatch:
        self._release(msg.released)
        device = self.model.device
        states = []
        for s in msg.seqs:
            state = SeqState(s.seq_id, s.slot, s.params, SamplingTensors.from_params([s.params], device),
                             make_generator(s.params, stream=s.draft_stream), list(s.prompt_ids) + [s.first_token])
            self.seqs[s.seq_id] = state
            self.cache.reset(s.slot)
            states.append(state)
        if not states:
            return self._reply([], 0.0)
        slots = [s.slot for s in states]
        feed_logits(self.runner, slots, [s.history[:-1] for s in states])
        first = FastBackup() if self.config.backup == "fast" else NeuralBackup()
        t0 = time.perf_counter()
        for s, speculation in zip(states, first.propose(self, states)):
            s.speculation = speculation
        elapsed = self._elapsed(t0)
        self.pending.extend(s.seq_id for s in states)
        return self._reply(states, elapsed)

    def _outcome(self, msg: Outcome) -> SpeculationBatch:
        self._release(msg.released)
        self.stats.verify_time.add(msg.verify_time)
        rows = [self.seqs[i] for i in msg.seq_ids]
        batch, missed = len(rows), []
        for s, k, t in zip(rows, msg.accepted, msg.next_token):
            speculation, br = s.speculation, s.branches
            if not 0 <= k <= len(speculation.tokens):
                raise ValueError(f"sequence {s.seq_id}: {k} accepted of {len(speculation.tokens)} draft tokens")
            s.history.extend(speculation.tokens[:k])
            s.history.append(t)
            self.cache.truncate(s.slot, s.prefix_len)
            w = br.lookup(k, t) if br is not None else None
            hit = w is not None
            self.fanout.record_outcome(k, len(speculation.tokens))
            if br is not None and k < len(br.widths):
                self.fanout.record_fork(br.widths[k], hit)
            self.stats.record_row(k, k + 1, speculation.origin, hit, batch)
            if hit:
                probs = br.probs[w] if br.probs is not None else None
                s.speculation = Speculation(br.tokens[w].tolist(), probs, not s.samples, "hit", br.fanout)
            else:
                missed.append(s)
            s.branches = None
        self.fanout.update()  # between rounds: the next trees and backups use the new allocation
        elapsed = 0.0
        if missed:
            policy = self.backup
            if isinstance(policy, AdaptiveBackup):
                policy = policy.choose(self, batch, len(missed))
                self.stats.adaptive_choices[policy.name] += 1
            t0 = time.perf_counter()
            for s, speculation in zip(missed, policy.propose(self, missed)):
                s.speculation = speculation
            elapsed = self._elapsed(t0)
            self.stats.record_backup(policy.name, elapsed, len(missed))
        self.pending.extend(s.seq_id for s in rows)
        return self._reply(rows, elapsed)

    def _release(self, seq_ids: list[int]) -> None:
        for i in seq_ids:
            self.seqs.pop(i, None)
        if seq_ids:
            gone = set(seq_ids)
            self.pending = [i for i in self.pending if i not in gone]

    def _reply(self, rows: list[SeqState], backup_time: float) -> SpeculationBatch:
        return SpeculationBatch.pack([s.seq_id for s in rows], [s.speculation for s in rows], self.config.k,
                                     backup_time, self.last_tree_time)

    # -- between reply and next request: overlaps with the target's verification --------------
    def prepare(self) -> None:
        if self.stream is None:
            return self._prepare()
        with torch.cuda.stream(self.stream):
            self._prepare()

    def _prepare(self) -> None:
        rows = [self.seqs[i] for i in dict.fromkeys(self.pending) if i in self.seqs]
        self.pending = []
        if not rows:
            return
        t0 = time.perf_counter()
        tree_rows = [TreeRow(s.slot, s.prefix_len, s.history[-1], s.speculation.tokens, s.speculation.fanout, s.st,
                             s.generator) for s in rows]
        branches = build_branches(self.runner, tree_rows, self.config.k, self.config.saguaro_c,
                                  list(self.fanout.fanout))
        for s, br in zip(rows, branches):
            s.branches = br
        self.last_tree_time = self._elapsed(t0)
        self.stats.tree_time.add(self.last_tree_time)

    def _elapsed(self, t0: float) -> float:
        if self.stream is not None:
            self.stream.synchronize()
        return time.perf_counter() - t0

    def summary(self) -> dict:
        out = self.stats.summary()
        out.update(self.fanout.stats() if self.fanout is not None else {})
        out["config"] = {"k": self.config.k, "fanout_mode": self.config.fanout_mode,
                         "saguaro_c": self.config.saguaro_c, "backup": self.config.backup}
        return json.loads(json.dumps(out))  # the same (string-keyed) dict whatever the transport

