"""Prefill products on block-quantized weights (GGUF blocks, int4): many activation rows per
weight row are bound by FMA throughput, and oneDNN's fp32 GEMM keeps the FMA units busier than
our decode kernels do there. So from ``MIN_ROWS`` tokens of one sequence on (a prompt's prefill),
the weight is dequantized a few MB of rows at a time (into cache) and each block goes through the
GEMM: the dequantized fp32 values, fp32 sums, so the same numbers up to summation order. Decode
and verification (a few tokens per sequence) stay on the kernels whatever the batch, so a
sequence's rounds compute the same bits alone or batched. docs/benchmarks.md section 11.
"""
from __future__ import annotations

from typing import Callable

import torch

MIN_ROWS = 64  # tokens of one sequence from which a product goes block by block through the GEMM
BLOCK_BYTES = 2 << 20  # fp32 weight rows per GEMM


def tokens(x: torch.Tensor) -> int:
    """Tokens per sequence of activations ``[B, T, k]`` (T), ``[T, k]`` (T) or ``[k]`` (1)."""
    return x.shape[1] if x.dim() == 3 else x.shape[0] if x.dim() == 2 else 1


def applies(x: torch.Tensor) -> bool:
    return tokens(x) >= MIN_ROWS and torch.backends.mkldnn.is_available()


def linear(x: torch.Tensor, n: int, k: int, dequantize: Callable[[int, int, torch.Tensor], None],
           bias: torch.Tensor | None = None, align: int = 1) -> torch.Tensor:
    """``x [..., k] @ W^T + bias`` -> ``[..., n]`` for the ``[n, k]`` weight W that ``dequantize(r0,
    count, out)`` writes, rows r0 .. r0 + count - 1 as fp32 into ``out [count, k]``; blocks of a
    multiple of ``align`` rows."""
    rows = x.reshape(-1, k).contiguous()
    block = min(n, max(align, BLOCK_BYTES // (4 * k) // align * align))
    buf, y = torch.empty(block, k), torch.empty(rows.shape[0], n)
    for r0 in range(0, n, block):
        count = min(block, n - r0)
        dequantize(r0, count, buf)
        y[:, r0:r0 + count] = torch.ops.mkldnn._linear_pointwise(rows, buf[:count], None, "none", [], "")
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], n)
