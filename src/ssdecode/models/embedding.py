"""Token embedding lookups: ``F.embedding`` on a dense table, or rows of a GGML-quantized table
dequantized per forward (the gguf weight format, issue 11): the table stays as stored (Q4_K: 131 MB
for the demo target's, against 0.93 GB in fp32) and a forward dequantizes only its tokens' rows,
to the fp32 values the dequantized table holds (each row is its own run of blocks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from gguf import GGMLQuantizationType
from gguf.quants import dequantize

from ssdecode.kernels import ggml


def dequantize_rows(blocks: torch.Tensor, qtype: str, rows: torch.Tensor, k: int) -> torch.Tensor:
    """fp32 ``[len(rows), k]``: the ``rows`` of the ``[n, k]`` weight stored as ``blocks`` (uint8
    ``[n, row_bytes]``), by the C kernels for their types, else by gguf's numpy code (the same
    values either way; ids out of range are an error, as for ``F.embedding``)."""
    if qtype in ggml.QTYPES and ggml.is_available():
        return ggml.dequantize_rows(blocks, qtype, rows, k)
    if rows.numel() and not 0 <= int(rows.min()) <= int(rows.max()) < blocks.shape[0]:
        raise ValueError(f"token ids must lie in [0, {blocks.shape[0]})")
    return torch.from_numpy(dequantize(blocks[rows].numpy(), GGMLQuantizationType[qtype])).view(-1, k)


class Embedding:
    """Rows of a dense ``[vocab, hidden]`` table."""

    def __init__(self, weight: torch.Tensor):
        self.weight = weight

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class QuantizedEmbedding(Embedding):
    """Rows of the ``[n, k]`` table stored as GGML ``blocks`` of ``qtype`` (any type gguf reads)."""

    def __init__(self, blocks: torch.Tensor, qtype: str, n: int, k: int):
        super().__init__(blocks)
        self.qtype, self.n, self.k = qtype, n, k

    def __call__(self, ids: torch.Tensor) -> torch.Tensor:
        return dequantize_rows(self.weight, self.qtype, ids.reshape(-1), self.k).view(*ids.shape, self.k)
