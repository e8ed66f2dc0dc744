"""A GGUF file's tensors under their Hugging Face names, for the ``gguf`` weight format: the model
runs the quantized tensors as stored instead of their fp32 conversion (issue 11).

Names and the llama q/k row order are those of ``gguf_convert`` (its helpers, so the two cannot
disagree); permuting whole rows of blocks is exact, as each row is its own run of blocks. Matrix
weights of a type with a kernel (``kernels/ggml.py``) become ``QuantizedLinear``: their blocks are
copied out of the file's map (the quantized bytes once, ~1 GB for a 1.5B Q4_K_M; the map lives
only as long as this loader). Parts of one product fuse when they share a type, else they run as
a ``SplitLinear``. Other quantized types are dequantized at load into the packed fp32 format, and
so is everything read as a plain tensor: norms, biases, and for now the embedding table
(vocabulary x hidden in fp32: 0.93 GB for the demo target; a tied output head still uses the
quantized blocks).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from ssdecode.kernels import ggml
from ssdecode.models.config import ModelConfig
from ssdecode.models.errors import ModelLoadError
from ssdecode.models.gguf_convert import (_fp32_chunks, _open_reader, _unpermute, fingerprint, hf_tensors,
                                          read_marker)
from ssdecode.models.linear import Linear, QuantizedLinear, SplitLinear, make_linear, resolve_format

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


class GGUFWeights(Mapping):
    """Plain tensors as fp32 by HF name (``weights[name]``), and products via ``linear``."""

    def __init__(self, path: Path, config: ModelConfig):
        reader = _open_reader(Path(path))
        self._tensors, self._dequantized = {}, set()
        for t, name, shape, permute in hf_tensors(path, reader, config.num_heads, config.num_kv_heads):
            self._tensors[name] = (t, shape, permute)  # t.data: a view of the file's map

    def __getitem__(self, name: str) -> torch.Tensor:
        """fp32, dequantized by row chunks as in the conversion (whole-tensor numpy dequantization
        has temporaries several times the embedding's size)."""
        t, shape, permute = self._tensors[name]
        out = torch.empty(shape)
        flat, at = out.view(-1).numpy(), 0
        for chunk in _fp32_chunks(t, list(shape), permute):
            flat[at:at + chunk.size] = chunk.reshape(-1)
            at += chunk.size
        return out

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._tensors

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

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
        qtype = self._tensors[name][0].tensor_type.name
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
        parts = [self._tensors[w] for w in weights]
        blocks = np.concatenate([_unpermute(t.data, p) if p else t.data for t, _, p in parts])  # a copy
        return QuantizedLinear(torch.from_numpy(blocks), kind, blocks.shape[0], parts[0][1][1], bias)
