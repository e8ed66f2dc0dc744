"""A GGUF file's tensors under their Hugging Face names, for the ``gguf`` weight format: the model
runs the quantized tensors as stored instead of their fp32 conversion (issue 11).

Names and the llama q/k row order are those of ``gguf_convert`` (its helpers, so the two cannot
disagree); permuting whole rows of blocks is exact, as each row is its own run of blocks. Matrix
weights of a type with a kernel (``kernels/ggml.py``) become ``QuantizedLinear``s on views of the
file's map (``gguf_file.py``): no copy, except where parts fuse (same type) but do not lie back to
back in the file or rows must be unpermuted (q/k/v: a few MB a layer; gate/up are adjacent). The
embedding table stays quantized too (``embedding.py``), one view shared with a tied output head.
Parts of other types run as a ``SplitLinear``; types without a kernel are dequantized at load
into the packed fp32 format, and so are the plain tensors: norms and biases.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ssdecode.kernels import ggml
from ssdecode.models.config import ModelConfig
from ssdecode.models.embedding import Embedding, QuantizedEmbedding
from ssdecode.models.errors import ModelLoadError
from ssdecode.models.gguf_convert import _fp32_chunks, _unpermute, fingerprint, hf_tensors, read_marker
from ssdecode.models.gguf_file import GGUFFile
from ssdecode.models.linear import Linear, QuantizedLinear, SplitLinear, make_linear, resolve_format
from ssdecode.models.weights_io import TensorIndex

log = logging.getLogger(__name__)
_FLOAT = ("F32", "F16")


def gguf_source(folder: Path) -> Path:
    """The GGUF a converted ``folder`` was made from (its marker's source), checked unchanged."""
    marker = read_marker(folder) or {}
    source = marker.get("source")
    if not source:
        raise ModelLoadError(f"{folder} is not a GGUF conversion: weight format 'gguf' needs a .gguf model")
    if not Path(source).is_file() or fingerprint(source) != marker.get("fingerprint"):
        raise ModelLoadError(f"the GGUF {source} that {folder} was converted from is gone or changed")
    return Path(source)


class GGUFWeights(TensorIndex):
    """Plain tensors as fp32 by HF name (``weights[name]``), products via ``linear`` and the
    embedding's lookup via ``embedding``."""

    def __init__(self, path: Path, config: ModelConfig, activations: str = "fp32"):
        """``activations``: int8 for the products of the types that have such a kernel (gguf-a8)."""
        self.file, self.activations = GGUFFile(path), activations
        self._index, self._dequantized = {}, set()
        for t, name, shape, permute in hf_tensors(path, self.file, config.num_heads, config.num_kv_heads):
            self._index[name] = (t, shape, permute)  # t.data: a view of the file's map

    def __getitem__(self, name: str) -> torch.Tensor:
        """fp32, dequantized by row chunks as in the conversion (whole-tensor numpy dequantization
        has temporaries several times the embedding's size)."""
        t, shape, permute = self._index[name]
        out = torch.empty(shape)
        flat, at = out.view(-1).numpy(), 0
        for chunk in _fp32_chunks(t, list(shape), permute):
            flat[at:at + chunk.size] = chunk.reshape(-1)
            at += chunk.size
        return out

    def embedding(self, name: str) -> Embedding:
        """The lookup of ``name``: rows of its stored blocks when quantized."""
        t, shape, _ = self._index[name]
        if t.tensor_type.name in _FLOAT:
            return Embedding(self[name])
        return MappedEmbedding(self.file, t.data_offset, t.tensor_type.name, *shape)

    def linear(self, weights: Sequence[str], biases: Sequence[str] = ()) -> Linear:
        """The product of ``weights`` (q/k/v, gate/up fused along the output dim when their types
        allow), with ``biases``."""
        kinds = [self._kind(n) for n in weights]
        if len(set(kinds)) == 1:
            return self._linear(kinds[0], weights, biases)
        bias_names = biases or [None] * len(weights)
        return SplitLinear([self._linear(kind, [w], [b] if b else [])
                            for kind, w, b in zip(kinds, weights, bias_names)])

    def _kind(self, name: str) -> str:
        """The GGML type a weight runs in, or fp32 when there is no kernel for its type."""
        qtype = self._index[name][0].tensor_type.name
        if qtype in ggml.QTYPES:
            return qtype
        if qtype not in _FLOAT and qtype not in self._dequantized:
            self._dequantized.add(qtype)
            log.warning("no kernel for GGUF type %s: its tensors are dequantized to fp32 at load", qtype)
        return "fp32"

    def _linear(self, kind: str, weights: Sequence[str], biases: Sequence[str]) -> Linear:
        bias = torch.cat([self[b] for b in biases]) if biases else None
        if kind == "fp32":
            fmt = resolve_format("auto", torch.device("cpu"), torch.float32)
            return make_linear(torch.cat([self[w] for w in weights]), bias, fmt)
        parts = [self._index[w] for w in weights]
        n, k = sum(shape[0] for _, shape, _ in parts), parts[0][1][1]
        activations = self.activations if kind in ggml.INT8_QTYPES else "fp32"
        if _adjacent(parts):
            return MappedLinear(self.file, parts[0][0].data_offset, kind, n, k, bias, activations)
        blocks = np.concatenate([_unpermute(t.data, p) if p else t.data for t, _, p in parts])
        return QuantizedLinear(torch.from_numpy(blocks), kind, n, k, bias, activations=activations)


def _adjacent(parts) -> bool:
    """Whether the (tensor, shape, permute) ``parts`` lie back to back in the file as they run."""
    return not any(p for _, _, p in parts) and all(
        a.data_offset + a.n_bytes == b.data_offset for (a, _, _), (b, _, _) in zip(parts, parts[1:]))


class MappedLinear(QuantizedLinear):
    """Blocks packed from a view of a GGUF's map, pickled as the file and their offset: a spawned
    worker reads (and packs) them from the file itself instead of getting a copy. Once packed, the
    view's pages leave this process's resident memory (the packed copy is what runs)."""

    def __init__(self, file: GGUFFile, offset: int, qtype: str, n: int, k: int, bias: torch.Tensor | None = None,
                 activations: str = "fp32"):
        blocks = file.blocks(offset, qtype, n, k)
        super().__init__(blocks, qtype, n, k, bias, activations=activations)
        file.release(offset, blocks.numel())
        self.file, self.offset = file, offset

    def __reduce__(self):
        return MappedLinear, (self.file, self.offset, self.qtype, self.n, self.k, self.bias, self.activations)


class MappedEmbedding(QuantizedEmbedding):
    """As ``MappedLinear``, for an embedding table."""

    def __init__(self, file: GGUFFile, offset: int, qtype: str, n: int, k: int):
        super().__init__(file.blocks(offset, qtype, n, k), qtype, n, k)
        self.file, self.offset = file, offset

    def __reduce__(self):
        return MappedEmbedding, (self.file, self.offset, self.qtype, self.n, self.k)
