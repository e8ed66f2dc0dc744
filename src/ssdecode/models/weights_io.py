"""Model weights loaded tensor by tensor straight into the form the model runs them in, so peak
resident memory stays near the weights' own size (docs/lab/benchmarks.md, "Peak memory by mode").

Why not ``safetensors.safe_open``: it hands out views of one memory map of the whole file. A
tensor kept as loaded (the embedding, norms) keeps that map alive, and every page touched while
loading then counts in the process's resident memory: about one extra copy of the model on top
of the packed weights. Here tensors the model keeps are read with ``pread`` into memory of their
own (the page cache it goes through is not resident memory), and a weight that is only packed
is mapped alone, just while it is packed. The format: an 8-byte little-endian header length, a
JSON header ``{name: {dtype, shape, data_offsets: [begin, end]}}``, then the data.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch

from ssdecode.models.linear import GGUF_FORMATS, Linear, make_linear

_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
           "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
           "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


class _Entry(NamedTuple):
    path: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    offset: int  # of the data in the file


def _read_header(path: Path) -> dict[str, _Entry]:
    """The tensors of one file, checked against its size so a truncated file fails here, by name."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else size
        if 8 + n > size:
            raise ValueError(f"{path}: not a safetensors file, or truncated "
                             f"(header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
    entries = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _DTYPES.get(meta["dtype"])
        if dtype is None:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
        shape = tuple(meta["shape"])
        begin, end = meta["data_offsets"]
        nbytes = dtype.itemsize * math.prod(shape)
        if end - begin != nbytes:
            raise ValueError(f"{path}: tensor {name} spans {end - begin} bytes, its shape needs {nbytes}")
        if 8 + n + end > size:
            raise ValueError(f"{path}: truncated: tensor {name} ends at byte {8 + n + end}, "
                             f"the file has {size}")
        entries[name] = _Entry(path, dtype, shape, 8 + n + begin)
    return entries


def _pread_into(path: Path, offset: int, out: torch.Tensor) -> None:
    """Fill the contiguous CPU tensor ``out`` with the file's bytes at ``offset``."""
    buf = memoryview(out.view(-1).view(torch.uint8).numpy())
    fd = os.open(path, os.O_RDONLY)
    try:
        done = 0
        while done < len(buf):  # a read returns at most ~2 GiB, fewer if interrupted
            got = os.preadv(fd, [buf[done:]], offset + done)
            if got == 0:
                raise ValueError(f"{path}: truncated while reading (file changed under the loader?)")
            done += got
    finally:
        os.close(fd)


def _mapped(path: Path, offset: int, count: int, dtype: torch.dtype) -> torch.Tensor:
    """``count`` elements at ``offset`` as a tensor over a private memory map of just those bytes:
    no copy, and the map (its pages resident) lives only as long as the tensor."""
    start = offset - offset % mmap.ALLOCATIONGRANULARITY
    with open(path, "rb") as f:
        view = mmap.mmap(f.fileno(), offset - start + count * dtype.itemsize, offset=start,
                         access=mmap.ACCESS_COPY)  # writable for torch.frombuffer; never written
    return torch.frombuffer(view, dtype=dtype, count=count, offset=offset - start)


class TensorIndex(Mapping):
    """Tensors by name over an index read once (``_index``: name -> where the tensor is):
    ``__getitem__`` reads a tensor; membership, iteration and length only look at the index."""

    _index: dict

    def __contains__(self, name) -> bool:  # Mapping's default would read the tensor
        return name in self._index

    def __iter__(self):
        return iter(self._index)

    def __len__(self) -> int:
        return len(self._index)


class SafetensorsFolder(TensorIndex):
    """Tensors of an HF folder (``model.safetensors``, or sharded with or without
    ``model.safetensors.index.json``) by name; each access reads that tensor afresh."""

    def __init__(self, folder: Path):
        index = folder / "model.safetensors.index.json"
        if index.exists():
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        elif (folder / "model.safetensors").exists():
            files = [folder / "model.safetensors"]
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors weights in {folder}")
        self._index: dict[str, _Entry] = {}
        for f in files:
            self._index.update(_read_header(f))

    def __getitem__(self, name: str) -> torch.Tensor:
        e = self._index[name]
        out = torch.empty(e.shape, dtype=e.dtype)
        self.read_into(name, out)
        return out

    def shape(self, name: str) -> tuple[int, ...]:
        return self._index[name].shape

    def read_into(self, name: str, out: torch.Tensor) -> None:
        """Read ``name`` into ``out`` (its shape; any dtype and device): straight in when ``out``
        is a contiguous CPU tensor of the file's dtype, else converted from a map of the part."""
        e = self._index[name]
        if tuple(out.shape) != e.shape:
            raise ValueError(f"{name} has shape {e.shape}, not {tuple(out.shape)}")
        if out.device.type == "cpu" and out.dtype == e.dtype and out.is_contiguous():
            _pread_into(e.path, e.offset, out)
        elif out.numel():
            out.copy_(self.mapped([name]))

    def mapped(self, names: Sequence[str]) -> torch.Tensor | None:
        """``names`` concatenated along dim 0 without a copy (``_mapped``), or None unless they
        lie back to back in one file, in one dtype (gate/up do in HF and converted files)."""
        first = self._index[names[0]]
        end = first.offset
        for e in map(self._index.__getitem__, names):
            if (e.path, e.dtype, e.shape[1:], e.offset) != (first.path, first.dtype, first.shape[1:], end):
                return None
            end += e.dtype.itemsize * math.prod(e.shape)
        if end == first.offset:
            return None
        shape = (sum(self._index[n].shape[0] for n in names), *first.shape[1:])
        return _mapped(first.path, first.offset, math.prod(shape), first.dtype).view(shape)


class WeightLoader:
    """HF-named weights in the model's device, dtype and matmul format, one tensor at a time.

    Tensors the model keeps (embedding, norms, biases, dense-format weights) get memory of their
    own. A weight that only gets packed (the packed and int8 formats copy it into their own
    layout) is packed straight from a map of the file when it lies there as needed, else it is
    read into one reused scratch buffer: reading into fresh memory costs a page fault per 4 KiB,
    several times the copy itself, and this way that memory is touched once."""

    def __init__(self, weights: Mapping[str, torch.Tensor], device: torch.device | str,
                 dtype: torch.dtype, fmt: str):
        """``fmt``: a format from ``linear.resolve_format``."""
        self.weights, self.device, self.dtype, self.fmt = weights, torch.device(device), dtype, fmt
        self._scratch = torch.empty(0, dtype=torch.uint8)

    def tensor(self, *names: str) -> torch.Tensor:
        """``names`` concatenated along dim 0 (one name: that tensor)."""
        return self._rows(names, transient=False)

    def linear(self, weights: Sequence[str], biases: Sequence[str] = ()) -> Linear:
        """The product of ``weights`` fused along the output dim (q/k/v, gate/up), with ``biases``."""
        if self.fmt in GGUF_FORMATS:  # the weights as stored, from a GGUFWeights
            return self.weights.linear(weights, biases)
        w = self._rows(weights, transient=self.fmt != "dense")
        return make_linear(w, self.tensor(*biases) if biases else None, self.fmt)

    def _rows(self, names: Sequence[str], transient: bool) -> torch.Tensor:
        if not isinstance(self.weights, SafetensorsFolder):  # in memory already: convert only
            parts = [self.weights[n].to(device=self.device, dtype=self.dtype) for n in names]
            return parts[0] if len(parts) == 1 else torch.cat(parts)
        if transient:  # packed and int8 weights: on the CPU
            mapped = self.weights.mapped(names)
            if mapped is not None and mapped.dtype == self.dtype:
                return mapped
        shapes = [self.weights.shape(n) for n in names]
        shape = (sum(s[0] for s in shapes), *shapes[0][1:])
        out = self._take(shape) if transient else torch.empty(shape, device=self.device, dtype=self.dtype)
        row = 0
        for name, part in zip(names, shapes):  # each part read straight into its rows: no concat copy
            self.weights.read_into(name, out[row:row + part[0]])
            row += part[0]
        return out

    def _take(self, shape: tuple[int, ...]) -> torch.Tensor:
        nbytes = self.dtype.itemsize * math.prod(shape)
        if nbytes > self._scratch.numel():
            self._scratch = torch.empty(0, dtype=torch.uint8)  # free the old buffer first
            self._scratch = torch.empty(nbytes, dtype=torch.uint8)
        return self._scratch[:nbytes].view(self.dtype).view(shape)
