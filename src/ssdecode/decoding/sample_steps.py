"""Sampling k tokens autoregressively: AR's prefill and decode, SD's drafter and SSD's neural
(just-in-time) backup all run this one loop.

The model's KV cache holds every committed token except the ``feed`` tokens of each row (the last
committed token, plus any accepted draft token the cache never saw). Drafting feeds them, then
each sampled draft token but the last, so afterwards the cache holds feed + s_1..s_{K-1}. Each
draft token is sampled from the distribution stored for it (after the request's transforms and
any reweighting), which is what makes the verifier exact.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ssdecode.kernels.attention import MAX_TOKENS
from ssdecode.kv.cache import KVCache
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors, probs_from_logits, sample


@dataclass
class Draft:
    tokens: torch.Tensor  # [B, n] long: s_1..s_n, n <= k draft steps run
    probs: torch.Tensor | None  # [B, n, V] float32: q_i each s_i was sampled from; None = not kept
    num_draft: list[int]  # [B] proposals per row (<= n: a row may stop early on low confidence)


def feed_batch(cache: KVCache, slots: list[int], feed: list[list[int]], device) -> tuple:
    """Right-padded ids, logical positions (= cache rows, the cache being linear) and lengths."""
    width = max(len(f) for f in feed)
    ids = torch.zeros(len(feed), width, dtype=torch.long)
    for b, f in enumerate(feed):
        ids[b, : len(f)] = torch.tensor(f, dtype=torch.long)
    starts = torch.tensor([cache.lengths[s] for s in slots], dtype=torch.long)
    positions = starts[:, None] + torch.arange(width)[None, :]
    return ids.to(device), positions.to(device), [len(f) for f in feed]


def feed_logits(runner: ModelRunner, slots: list[int], feed: list[list[int]]) -> torch.Tensor:
    """Logits ``[B, V]`` at each row's last fed token, every row computed as if it were alone.

    Rows share one forward only where that gives each row its own bits: decode and verification
    feeds on filled slots (CPU attention takes each row over exactly its keys, and the products are
    batch invariant). A prompt (an empty slot) or a feed longer than the attention kernel takes
    runs alone: prompts padded into one batch attend, and multiply through oneDNN's GEMM, in other
    blocks than one prompt alone; the fp32 differences (~1e-5) become other tokens once gguf-a8
    rounds activations to int8. So a request's output does not depend on who was admitted with it."""
    if len(slots) > 1 and (min(runner.cache.lengths[x] for x in slots) == 0 or max(map(len, feed)) > MAX_TOKENS):
        return torch.cat([feed_logits(runner, [x], [f]) for x, f in zip(slots, feed)])
    ids, positions, num_new = feed_batch(runner.cache, slots, feed, runner.device)
    return runner.forward(ids, positions, slots, num_new=num_new, last_only=True)[:, 0]


def autoregress(runner: ModelRunner, slots: list[int], feed: list[list[int]], k: int,
                 st: SamplingTensors, generators: list[torch.Generator], keep_probs: bool,
                 reweight: Callable[[torch.Tensor, int], torch.Tensor] | None = None,
                 min_confidence: float | None = None) -> Draft:
    """Sample up to ``k`` tokens per row after feeding ``feed[b]`` (ragged). ``reweight(q, i)``
    (Saguaro sampling) maps position i's q to the distribution actually sampled from.

    ``min_confidence``: a row stops proposing after a token its draft gave (untransformed)
    probability below this, and drafting ends when every row has stopped. The length depends on
    the draft alone, so verification stays exact; it saves the steps most likely rejected."""
    tokens, probs = [], []
    lengths = [k] * len(slots)
    logits = feed_logits(runner, slots, feed)
    for i in range(k):
        q = probs_from_logits(logits, st)
        if reweight is not None:
            q = reweight(q, i)
        s = sample(q, generators)
        tokens.append(s)
        if keep_probs:
            probs.append(q)
        if min_confidence is not None:
            conf = torch.softmax(logits.float(), -1).gather(-1, s[:, None])[:, 0].tolist()
            lengths = [i + 1 if n == k and c < min_confidence else n for n, c in zip(lengths, conf)]
            if all(n <= i + 1 for n in lengths):
                break
        if i + 1 < k:  # feed the token just sampled, at each row's next position
            positions = torch.tensor([[runner.cache.lengths[x]] for x in slots], device=runner.device)
            logits = runner.forward(s[:, None], positions, slots, last_only=True)[:, 0]
    return Draft(torch.stack(tokens, 1), torch.stack(probs, 1) if keep_probs else None,
                 [min(n, len(tokens)) for n in lengths])
