"""The model runner: the one place a model's forward runs. Strategies, the SSD draft worker and
the tree decode call ``ModelRunner.forward``; never ``model.forward``.

A runner owns its model's KV cache. Per call it checks the arguments, reserves cache rows, builds
one attention-metadata object (kv/forward_meta.py) that every layer reads, runs the model,
advances the cache lengths and checks the logits are finite. Where the metadata comes from is
the attention backend:

- ``eager`` (the default on CPU): addressing sized to each call, today's numbers exactly.
- ``static``: fixed shapes per (batch, query length) bucket in persistent buffers, keys over the
  whole cache row with device-side lengths. On CUDA each bucket's forward is captured once in a
  CUDA graph (runtime/graphs.py) and replayed; elsewhere it runs eagerly, which is how the CPU
  tests check that static addressing gives the same tokens as eager.

Contract of ``forward(input_ids, positions, slots, num_new=None, attn_mask=None, last_only=False)``:

- ``input_ids``, ``positions``: ``[B, T]`` long. Positions are LOGICAL positions (RoPE), chosen by
  the caller; for tree branches they are positions in the branch's own sequence, not cache rows.
- ``slots``: B cache slots, one per row. Row b writes its new K/V at cache rows
  ``cache.lengths[slots[b]] + i`` and then its length advances by ``num_new[b]`` (default T).
  ``num_new`` makes a ragged batch: tokens past ``num_new[b]`` are padding whose outputs are
  garbage and whose K/V land past the length (scratch), invisible to later forwards.
- ``attn_mask``: None means causal: query i of row b sees cache rows ``< start_b + i + 1`` where
  ``start_b`` is the length before the call. Otherwise a bool tensor ``[B, T, Lk]`` with
  ``Lk = max_b(start_b) + T`` (the key span) over cache rows, True = visible.
- returns float32 logits ``[B, T, V]``, or ``[B, 1, V]`` at each row's last real token
  (``num_new[b] - 1``) when ``last_only``.
- no host synchronization inside (lengths are host ints). NaN/inf logits at real positions
  (damaged weights) become a clear ``NonFiniteLogits``: checked at once (one sync) by the eager
  backend; on CUDA graphs noted in a device flag that ``check()`` reads when the round has
  synchronized anyway (its tokens reached the host), so a round never waits for it.
"""
from __future__ import annotations

import torch

from ssdecode.kv.forward_meta import EagerMeta, ForwardMeta
from ssdecode.models.base import CausalLM
from ssdecode.runtime.graphs import StaticForwards

BACKENDS = ("eager", "static")


def default_backend(model: CausalLM) -> str:
    """static (CUDA graphs) for native models on CUDA, eager otherwise."""
    return "static" if model.device.type == "cuda" and model.supports_static else "eager"


class ModelRunner:
    def __init__(self, model: CausalLM, num_slots: int, max_len: int | None = None, backend: str | None = None):
        backend = backend or default_backend(model)
        if backend not in BACKENDS:
            raise ValueError(f"attention backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "static" and not model.supports_static:
            raise ValueError(f"{type(model).__name__} has no static attention backend")
        self.model, self.backend = model, backend
        self.graphs = self.nonfinite = None
        if backend == "static":
            # one slot more: the scratch slot padding rows and out-of-range padding tokens write to
            self.cache = model.new_cache(num_slots + 1, max_len)
            self.cache.readable(self.cache.max_len)
            self.cache.lengths.pop()  # hidden from callers: num_slots is theirs
            self.graphs = StaticForwards(model, self.cache, scratch=num_slots)
            if self.graphs.use_graphs:
                self.nonfinite = torch.zeros((), dtype=torch.bool, device=model.device)
        else:
            self.cache = model.new_cache(num_slots, max_len)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def max_context(self) -> int:
        return self.model.max_context

    @property
    def supports_tree_mask(self) -> bool:
        return self.model.supports_tree_mask

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, slots: list[int],
                num_new: list[int] | None = None, attn_mask: torch.Tensor | None = None,
                last_only: bool = False) -> torch.Tensor:
        b, t = input_ids.shape
        counts = [t] * b if num_new is None else list(num_new)
        if positions.shape != input_ids.shape or len(slots) != b or len(counts) != b:
            raise ValueError(f"input_ids {tuple(input_ids.shape)}, positions {tuple(positions.shape)}, "
                             f"{len(slots)} slots and {len(counts)} num_new must agree")
        if not all(0 < n <= t for n in counts):
            raise ValueError(f"num_new {counts} must lie in [1, {t}]")
        starts = self.cache.reserve(slots, counts)
        if attn_mask is not None:
            span = max(starts) + t
            if tuple(attn_mask.shape) != (b, t, span) or attn_mask.dtype != torch.bool:
                raise ValueError(f"attn_mask must be bool [{b}, {t}, {span}], got "
                                 f"{attn_mask.dtype} {tuple(attn_mask.shape)}")
        base = ForwardMeta(self.cache, list(slots), starts, counts, attn_mask, last_only)
        if self.graphs is not None:
            logits = self.graphs.run(input_ids, positions, base)
        else:
            logits = self.model.forward(input_ids, positions, EagerMeta.plan(base, t, self.device))
        self.cache.advance(slots, counts)
        if self.nonfinite is None:
            self.model.check_finite(logits, counts)
        else:
            # padding positions may hold anything; a last-token row is always real
            real = torch.arange(logits.shape[1]) < torch.tensor([1] * b if last_only else counts)[:, None]
            bad = ~torch.isfinite(logits).all(-1) & real.to(self.device, non_blocking=True)
            self.nonfinite |= bad.any()
        return logits

    def capture(self, rows: int, tokens: list[int], tree: bool = False, last_only: bool = False) -> None:
        """Capture the CUDA graphs of forwards of up to ``rows`` rows x each of ``tokens`` now, at
        start-up, not on first use (a no-op without graphs)."""
        if self.graphs is not None and self.graphs.use_graphs:
            self.graphs.prepare(rows, tokens, tree, last_only)

    def check(self) -> None:
        """Raise ``NonFiniteLogits`` if a forward since the last check gave NaN/inf logits (graphs
        on CUDA; a no-op where each forward checks itself). Call it after the round's sync."""
        if self.nonfinite is not None and bool(self.nonfinite):
            self.nonfinite.zero_()
            raise self.model.nonfinite_error("in a forward of this round")
