"""A GGUF file as the ``gguf`` weight format reads it: its tensor index, parsed straight from the
header, and its bytes as one private memory map that the weights are views of (issue 11).

Why not ``gguf.GGUFReader``: it also splits every metadata array into numpy views of its map, one
per item. The tokenizer's ~150k tokens and merges made that ~10 s of a 1.5B model's start-up;
here arrays are skipped (the conversion has the tokenizer) and the header reads in ~0.2 s.

Why a map: the blocks run as stored, so views need no copy and loading touches nothing; pages
come from the page cache, shared with any other process mapping the file (a spawned draft worker,
another server), and only the parts a forward reads become resident (an embedding table's looked-up
rows). Mapped copy-on-write (writable for numpy and torch; never written), as ``weights_io`` does.
A ``GGUFFile`` pickles as its path, checked unchanged on the other side, so weights that are views
travel as their offsets (``gguf_weights.py``).
"""
from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

from ssdecode.models.errors import ModelLoadError

_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_STRING, _ARRAY = 8, 9
_PLAIN = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16}


class GGUFTensor(NamedTuple):
    """What ``gguf_convert.hf_tensors`` and ``_fp32_chunks`` read of gguf's ``ReaderTensor``."""
    name: str
    tensor_type: GGMLQuantizationType
    shape: np.ndarray  # GGUF order: fastest dim first
    n_bytes: int
    data_offset: int
    data: np.ndarray  # a view of the map, shaped as gguf's reader shapes it


class _Field(NamedTuple):
    value: object

    def contents(self):  # as gguf's ReaderField, for gguf_convert._field
        return self.value


class GGUFFile:
    """``fields``: the scalar and string metadata (arrays left out); ``tensors`` in file order."""

    def __init__(self, path: str | os.PathLike, identity: tuple[int, ...] | None = None):
        self.path = Path(path)
        st = os.stat(self.path)
        self.identity = (st.st_size, st.st_mtime_ns, st.st_ino)
        if identity is not None and identity != self.identity:
            raise ModelLoadError(f"{self.path} changed since its weights were loaded")
        with open(self.path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        try:
            self.fields, infos = _parse(self._map)
        except (struct.error, ValueError, KeyError) as e:
            raise ModelLoadError(f"{self.path} is not a readable GGUF file (corrupt or truncated?): {e}") from e
        self.tensors = [self._tensor(*info) for info in infos]

    def __reduce__(self):
        return GGUFFile, (str(self.path), self.identity)

    def blocks(self, offset: int, qtype: str, n: int, k: int) -> torch.Tensor:
        """uint8 ``[n, row_bytes]``: the ``[n, k]`` weight of ``qtype`` at ``offset``, a view."""
        shape = quant_shape_to_byte_shape((n, k), GGMLQuantizationType[qtype])
        return torch.from_numpy(np.frombuffer(self._map, np.uint8, shape[0] * shape[1], offset).reshape(shape))

    def release(self, offset: int, nbytes: int) -> None:
        """Drop the pages of bytes [offset, offset + nbytes) from this process's resident memory
        (read-only: they stay in the page cache, and a later read maps them again)."""
        start = offset // mmap.PAGESIZE * mmap.PAGESIZE
        self._map.madvise(mmap.MADV_DONTNEED, start, min(offset + nbytes, len(self._map)) - start)

    def _tensor(self, name: str, dims: tuple[int, ...], raw_type: int, offset: int) -> GGUFTensor:
        qtype = GGMLQuantizationType(raw_type)
        block, block_bytes = GGML_QUANT_SIZES[qtype]
        shape = tuple(reversed(dims))
        n_bytes = int(np.prod(dims)) // block * block_bytes
        if offset + n_bytes > len(self._map):
            raise ModelLoadError(f"{self.path} is truncated: tensor {name} ends past the end of file")
        dtype = _PLAIN.get(qtype)
        if dtype is None:
            dtype, shape = np.uint8, quant_shape_to_byte_shape(shape, qtype)
        data = np.frombuffer(self._map, dtype, n_bytes // np.dtype(dtype).itemsize, offset).reshape(shape)
        return GGUFTensor(name, qtype, np.array(dims), n_bytes, offset, data)


def _parse(buf: mmap.mmap) -> tuple[dict[str, _Field], list[tuple[str, tuple[int, ...], int, int]]]:
    """Metadata and (name, dims, type, absolute offset) per tensor of a little-endian GGUF v2/v3."""
    magic, version, n_tensors, n_fields = struct.unpack_from("<4sIQQ", buf, 0)
    if magic != b"GGUF" or version not in (2, 3):
        raise ValueError(f"not a little-endian GGUF of version 2 or 3 (magic {magic!r}, version {version})")
    at = 24

    def take(fmt: str) -> tuple:
        nonlocal at
        values = struct.unpack_from("<" + fmt, buf, at)
        at += struct.calcsize("<" + fmt)
        return values

    def string() -> str:
        nonlocal at
        (n,) = take("Q")
        at += n
        return buf[at - n:at].decode()

    def value(vtype: int):
        nonlocal at
        if vtype == _STRING:
            return string()
        if vtype != _ARRAY:
            return take(_SCALARS[vtype])[0]
        itype, count = take("IQ")
        if itype in _SCALARS:
            at += count * struct.calcsize(_SCALARS[itype])
        elif itype == _STRING:
            for _ in range(count):
                at += 8 + take("Q")[0]
        else:
            for _ in range(count):
                value(itype)

    fields = {}
    for _ in range(n_fields):
        key, (vtype,) = string(), take("I")
        v = value(vtype)
        if vtype != _ARRAY:  # arrays are tokenizer data, not needed for the weights
            fields[key] = _Field(v)
    infos = []
    for _ in range(n_tensors):
        name = string()
        (n_dims,) = take("I")
        dims = take(f"{n_dims}Q")
        infos.append((name, dims, *take("IQ")))
    align = fields.get("general.alignment", _Field(32)).value
    start = at + -at % align
    return fields, [(name, dims, qtype, start + offset) for name, dims, qtype, offset in infos]
