"""Static forwards by shape bucket, captured as CUDA graphs on CUDA.

A forward of B rows x T tokens runs in the bucket (B', T') with B' and T' the next sizes in
``BATCH_BUCKETS`` / ``TOKEN_BUCKETS`` (rows and tokens past the call's own are padding that
writes only into the scratch slot), separately for causal and tree-masked calls and for
last-token-only logits. Each bucket owns its input buffers (attention.StaticBuffers); on CUDA its
forward is captured once (after a warm-up run on a side stream; all graphs share one memory
pool), at start-up for the shapes a strategy will run (``prepare``) or else the first time the
bucket is used, and every later call only refills the buffers and replays: AR decode (T = 1),
verification (T = K + 1), the draft's glue and tree steps (T = the tree's width) each hit their
own bucket. Off CUDA the same buffers and addressing run eagerly, which is what the CPU tests
exercise. Calls larger than every bucket (prefill) run eagerly with per-call addressing.
"""
from __future__ import annotations

import logging
from bisect import bisect_left
from dataclasses import dataclass

import torch

from ssdecode.kv.cache import KVCache
from ssdecode.kv.forward_meta import EagerMeta, ForwardMeta, StaticBuffers, StaticMeta
from ssdecode.models.base import CausalLM

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32)
TOKEN_BUCKETS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 16, 24, 32, 48, 64)


def bucket(sizes: tuple[int, ...], n: int) -> int | None:
    i = bisect_left(sizes, n)
    return sizes[i] if i < len(sizes) else None


@dataclass
class _Entry:
    buffers: StaticBuffers
    graph: "torch.cuda.CUDAGraph | None" = None
    out: torch.Tensor | None = None


class StaticForwards:
    def __init__(self, model: CausalLM, cache: KVCache, scratch: int):
        self.model, self.cache, self.scratch = model, cache, scratch
        self.use_graphs = model.device.type == "cuda"
        self.entries: dict[tuple[int, int, bool, bool], _Entry] = {}
        self.pool = torch.cuda.graph_pool_handle() if self.use_graphs else None
        self.replays = 0  # calls served by a captured graph (for tests and stats)

    def prepare(self, rows: int, tokens: list[int], tree: bool, last_only: bool) -> None:
        """Capture now, at start-up, every bucket that calls of up to ``rows`` rows and these
        token counts will use (buckets past the largest run eagerly anyway)."""
        top = bucket(BATCH_BUCKETS, rows) or BATCH_BUCKETS[-1]
        for bb in BATCH_BUCKETS[:BATCH_BUCKETS.index(top) + 1]:
            for tb in {bucket(TOKEN_BUCKETS, t) for t in tokens} - {None}:
                if (bb, tb, tree, last_only) not in self.entries:
                    self._add((bb, tb, tree, last_only))

    def run(self, ids: torch.Tensor, positions: torch.Tensor, base: ForwardMeta) -> torch.Tensor:
        b, t = ids.shape
        bb, tb = bucket(BATCH_BUCKETS, b), bucket(TOKEN_BUCKETS, t)
        if bb is None or tb is None:
            return self.model.forward(ids, positions, EagerMeta.plan(base, t, self.model.device))
        key = (bb, tb, base.tree_mask is not None, base.last_only)
        entry = self.entries.get(key) or self._add(key)
        entry.buffers.fill(ids, positions, base)
        if entry.graph is None:
            out = self._forward(entry.buffers, base)
        else:
            entry.graph.replay()
            self.replays += 1
            out = entry.out
        return out[:b, :1 if base.last_only else t].clone()

    def _forward(self, buf: StaticBuffers, base: ForwardMeta) -> torch.Tensor:
        return self.model.forward(buf.ids, buf.positions, StaticMeta.plan(base, buf))

    def _add(self, key: tuple[int, int, bool, bool]) -> _Entry:
        bb, tb, tree, last_only = key
        entry = self.entries[key] = _Entry(StaticBuffers(self.cache, self.scratch, bb, tb, tree, self.model.device))
        if self.use_graphs:
            self._capture(entry, ForwardMeta(self.cache, [self.scratch] * bb, [0] * bb, [tb] * bb, None, last_only))
        return entry

    def _capture(self, entry: _Entry, base: ForwardMeta) -> None:
        """Capture the bucket's forward; its buffers still hold the scratch-only defaults, so the
        warm-up and capture runs write nowhere a sequence can see."""
        buf = entry.buffers
        if buf.tree_mask is not None:
            buf.tree_mask[..., 0] = True
        with torch.cuda.device(self.model.device):  # a draft on its own GPU captures there
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(2):
                    self._forward(buf, base)
            torch.cuda.current_stream().wait_stream(side)
            entry.graph = torch.cuda.CUDAGraph()
            # thread_local: SSD's draft worker may capture in its thread while the target runs in another
            with torch.cuda.graph(entry.graph, pool=self.pool, capture_error_mode="thread_local"):
                entry.out = self._forward(buf, base)
        log.debug("captured a CUDA graph for batch %d x %d tokens (tree %s, last only %s)", buf.b, buf.t,
                  buf.tree_mask is not None, base.last_only)
