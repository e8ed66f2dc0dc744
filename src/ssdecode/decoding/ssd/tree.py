"""Glue decode, fork and tree decode: building the speculation cache while the target verifies.

For a speculation S = s_1..s_n (n = K, fewer from a fast backup) sent after committed prefix x
(the draft cache holds x minus its last token t_prev: P rows):

1. Glue: one draft forward over [t_prev, s_1..s_n] at rows/positions P..P+n -> n+1 logit rows;
   row j scores the token after x + s_1..s_j.
2. Fork: row j's top-F_j tokens, excluding s_{j+1} for j < n (a rejected token has no residual
   mass; an accepted one doesn't stop there). Row n (all accepted: bonus) excludes nothing and
   takes F_K. Ranked by logits, so greedy rows fork too (their q is one-hot).
3. Tree: K batched forwards over all forks of all rows at once (width W_b per row, ragged). Step m
   writes row b's W_b tokens at cache rows T0_b + m W_b + w (T0_b = P_b + n_b + 1, past the glue);
   branch (j, c) at column w sees rows <= P_b + j (prefix, t_prev, s_1..s_j) and its own column
   of the tree rows of steps <= m. Its logical position is P_b + 1 + j + m. The tree rows are
   scratch: the next ``cache.truncate`` to the accepted length drops them.

Each branch's tokens are sampled like a speculation (transforms, Saguaro reweighting with the
allocation its own fork will use, the row's generator), so a hit's q's are exact.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ssdecode.decoding.sample_steps import feed_batch
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors, probs_from_logits, saguaro_reweight, sample_from_uniform


@dataclass
class TreeRow:
    """One sequence's input to the tree builder."""

    slot: int
    prefix_len: int  # P: draft cache rows before the glue (committed tokens minus t_prev)
    t_prev: int  # last committed token
    speculation: list[int]  # s_1..s_n, the speculation just sent
    fanout: list[int]  # F_0..F_K the speculation was reweighted for (= its fork widths)
    st: SamplingTensors  # one row: the sequence's sampling parameters
    generator: torch.Generator | None  # the sequence's draft generator (None: greedy)


@dataclass
class Branches:
    """One sequence's speculation cache for the current round."""

    keys: dict[tuple[int, int], int]  # outcome (j, c) -> branch index w
    widths: list[int]  # forks actually made at positions j = 0..n
    tokens: torch.Tensor  # [W, K] long: each branch's K draft tokens
    probs: torch.Tensor | None  # [W, K, V] float32: their q's (sampling rows only)
    fanout: list[int]  # allocation the branch tokens were reweighted for (their fork widths next)

    def lookup(self, k: int, t: int) -> int | None:
        return self.keys.get((k, t))


def glue_decode(runner: ModelRunner, rows: list[TreeRow]) -> torch.Tensor:
    """Roll each slot back to P and feed [t_prev, s_1..s_n]: [B, max n + 1, V] logits."""
    for r in rows:
        runner.cache.truncate(r.slot, r.prefix_len)
    slots = [r.slot for r in rows]
    ids, positions, num_new = feed_batch(runner.cache, slots, [[r.t_prev] + r.speculation for r in rows], runner.device)
    # Positions past the context only score tokens that can never be committed; clamp them so
    # the RoPE tables stay in range.
    positions = positions.clamp(max=runner.max_context - 1)
    return runner.forward(ids, positions, slots, num_new=num_new)


def fork(logits: torch.Tensor, rows: list[TreeRow], vocab: int, k: int) -> tuple[torch.Tensor, ...]:
    """Forks of every row: (row index, position j, token c), each [N] long, ordered by row, then
    position, then rank; plus widths [B, T] (forks per row and position).

    ``logits`` [B, T, V] are the glue rows; position j of row b takes F = fanout[j] (fanout[K]
    at j = n_b), capped at V-1 (j < n_b) or V (j = n_b), and none past n_b."""
    b, t, _ = logits.shape
    width = torch.zeros(b, t, dtype=torch.long)
    excl = torch.full((b, t), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r.speculation)
        for j in range(n):
            width[i, j] = min(r.fanout[j], vocab - 1)
        width[i, n] = min(r.fanout[k], vocab)
        if n:
            excl[i, :n] = torch.tensor(r.speculation, dtype=torch.long)
    m = min(int(width.max()) + 1, vocab)
    if int(width.max()) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty, empty, width
    top = logits[..., :vocab].topk(m, dim=-1).indices.cpu()  # [B, T, M], best first
    keep = top != excl.unsqueeze(-1)
    keep &= keep.cumsum(-1) <= width.unsqueeze(-1)
    bi, ji, ci = keep.nonzero(as_tuple=True)
    return bi, ji, top[bi, ji, ci], keep.sum(-1)


class _TreeMask:
    """Attention masks of the K tree steps, built once per round with tensor ops on the device.

    Step m's mask is ``base[..., :L_m] | (own_column[..., :L_m] & (tree_step[..., :L_m] <= m))``
    with L_m = max_b(T0_b + m W_b) + W_max, the forward's key span (host ints: no sync)."""

    def __init__(self, prefix_len: list[int], tree_start: list[int], width: list[int], fork_pos: torch.Tensor,
                 w_max: int, k: int, device):
        self.spans = [max(t + m * w for t, w in zip(tree_start, width)) + w_max for m in range(k)]
        as_col = lambda xs: torch.tensor(xs, dtype=torch.long, device=device)[:, None]
        keys = torch.arange(self.spans[-1], device=device)
        self.base = keys <= (as_col(prefix_len) + fork_pos)[..., None]  # [B, W, L]: prefix, t_prev, s_1..s_j
        rel = keys[None, :] - as_col(tree_start)  # [B, L]
        in_tree = rel >= 0
        w = as_col(width)
        column = torch.where(in_tree, rel % w, -1)
        self.step = torch.where(in_tree, rel // w, k)[:, None, :]  # [B, 1, L]; k = never visible
        self.own = column[:, None, :] == torch.arange(w_max, device=device)[None, :, None]  # [B, W, L]

    def at(self, m: int) -> torch.Tensor:
        span = self.spans[m]
        return self.base[..., :span] | (self.own[..., :span] & (self.step[..., :span] <= m))


def tree_decode(runner: ModelRunner, rows: list[TreeRow], forks: tuple[torch.Tensor, ...],
                k: int, saguaro_c: float, fanout_next: list[int]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """K batched draft forwards over every fork; per row (tokens [W_b, K], probs [W_b, K, V] or None).

    Must run right after ``glue_decode`` (the slots hold P + n + 1 rows). Rows without forks take
    no part. ``fanout_next[m]`` is the fan-out the branch token at step m is reweighted for.
    Index tensors are built on the host once, so the K steps never synchronize the device."""
    bi, ji, ci, widths = forks
    num = widths.sum(-1).tolist()  # [B] forks per row
    out: list = [(torch.zeros(0, k, dtype=torch.long), None)] * len(rows)
    part = [i for i in range(len(rows)) if num[i] > 0]
    if not part:
        return out
    device, vocab = runner.device, runner.vocab_size
    w_b = [num[i] for i in part]
    w_max, total = max(w_b), sum(w_b)
    # The flat fork list is row-major; place fork f of row `row` at column `col` of [B', W_max].
    local = torch.full((len(rows),), -1, dtype=torch.long)
    local[torch.tensor(part)] = torch.arange(len(part))
    row = local[bi]
    offsets = torch.tensor([0] + w_b[:-1]).cumsum(0)
    col = torch.arange(total) - offsets[row]
    flat_idx = (row * w_max + col).to(device)  # branch n's slot in the flattened [B' * W_max]
    ids = torch.zeros(len(part) * w_max, dtype=torch.long)
    fork_pos = torch.zeros(len(part) * w_max, dtype=torch.long)
    ids[row * w_max + col] = ci
    fork_pos[row * w_max + col] = ji
    fork_pos = fork_pos.view(len(part), w_max).to(device)
    prefix_len = [rows[i].prefix_len for i in part]
    mask = _TreeMask(prefix_len, [p + len(rows[i].speculation) + 1 for p, i in zip(prefix_len, part)], w_b, fork_pos,
                     w_max, k, device)
    positions = torch.tensor(prefix_len, device=device)[:, None] + 1 + fork_pos
    slots = [rows[i].slot for i in part]

    # Per-branch sampling setup, fixed for the round.
    sampling = [rows[i].generator is not None for i in part]
    st = _repeat_rows(part, rows, w_b) if any(sampling) else None
    sampled_idx = torch.tensor([n for n, s in enumerate(s for s, w in zip(sampling, w_b) for _ in range(w)) if s],
                               dtype=torch.long, device=device)
    tokens = torch.zeros(total, k, dtype=torch.long, device=device)
    probs = torch.zeros(sampled_idx.numel(), k, vocab, device=device) if st is not None else None

    ids = ids.to(device)
    for m in range(k):
        pos = (positions + m).clamp(max=runner.max_context - 1)
        logits = runner.forward(ids.view(len(part), w_max), pos, slots, num_new=w_b, attn_mask=mask.at(m))
        flat = logits.flatten(0, 1).index_select(0, flat_idx)  # [N, V] in fork order
        if st is None:
            tok = flat.argmax(-1)  # greedy: one-hot q, lowest index on ties, like the sampler
        else:
            q = probs_from_logits(flat, st)
            if saguaro_c < 1.0:
                q = saguaro_reweight(q, saguaro_c, fanout_next[m])
            u = torch.cat([torch.rand(w, dtype=torch.float64, generator=rows[i].generator)
                           if rows[i].generator is not None else torch.zeros(w, dtype=torch.float64)
                           for w, i in zip(w_b, part)]).to(device)
            tok = sample_from_uniform(q, u)
            probs[:, m] = q.index_select(0, sampled_idx)
        tokens[:, m] = tok
        ids = torch.zeros_like(ids).index_copy_(0, flat_idx, tok)

    per_row = torch.split(tokens, w_b)
    per_row_probs = torch.split(probs, [w if s else 0 for w, s in zip(w_b, sampling)]) if probs is not None else None
    for j, i in enumerate(part):
        out[i] = (per_row[j], per_row_probs[j] if sampling[j] else None)
    return out


def _repeat_rows(part: list[int], rows: list[TreeRow], reps: list[int]) -> SamplingTensors:
    """SamplingTensors with row i of ``part`` repeated reps[j] times (one row per branch)."""
    cat = lambda f: torch.cat([getattr(rows[i].st, f).repeat(n) for i, n in zip(part, reps)])
    return SamplingTensors(cat("temperature"), cat("top_k"), cat("top_p"),
                           tuple(g for i, n in zip(part, reps) for g in rows[i].st.greedy * n),
                           tuple(f for i, n in zip(part, reps) for f in rows[i].st.filtered * n))


def build_branches(runner: ModelRunner, rows: list[TreeRow], k: int, saguaro_c: float,
                   fanout_next: list[int]) -> list[Branches]:
    """Glue + fork + tree decode for ``rows``: each row's speculation cache."""
    if not rows:
        return []
    vocab, cache = runner.vocab_size, runner.cache
    # A cache capped at the context: near its end feed only the glue rows that fit (positions
    # past them can't be committed) and make no forks for that row.
    rows = [r if len(r.speculation) < cache.max_len - r.prefix_len else
            replace(r, speculation=r.speculation[:cache.max_len - r.prefix_len - 1], fanout=[0] * (k + 1))
            for r in rows]
    logits = glue_decode(runner, rows)
    forks = fork(logits, rows, vocab, k)
    # Rows whose tree would not fit in the cache (a cache capped at the model context) get no forks.
    bi, ji, ci, widths = forks
    for i, r in enumerate(rows):
        if cache.lengths[r.slot] + k * int(widths[i].sum()) > cache.max_len:
            keep = bi != i
            bi, ji, ci = bi[keep], ji[keep], ci[keep]
            widths[i] = 0
    forks = (bi, ji, ci, widths)
    decoded = tree_decode(runner, rows, forks, k, saguaro_c, fanout_next)
    out, start = [], 0
    fork_j, fork_c = ji.tolist(), ci.tolist()
    counts = widths.sum(-1).tolist()
    for i, r in enumerate(rows):
        n = counts[i]
        keys = {(fork_j[start + w], fork_c[start + w]): w for w in range(n)}
        start += n
        out.append(Branches(keys, widths[i, :len(r.speculation) + 1].tolist(), decoded[i][0], decoded[i][1],
                            list(fanout_next)))
    return out
