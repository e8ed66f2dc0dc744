"""Matrix products on GGML-quantized weights as stored in a GGUF file, on CPU (issue 11).

``quantized_linear(x, pack(blocks, "Q4_K", n, k), "Q4_K", n, k)`` is ``F.linear(x, W)`` for the
``[n, k]`` weight W that ``gguf.quants.dequantize`` makes of ``blocks`` (the tensor's bytes in GGUF
row order, uint8 ``[n, k / block_size * block_bytes]``), up to fp32 summation order: the C kernel
(ggml_cpu.c) dequantizes each block on the fly to the same fp32 values and accumulates in fp32;
activations stay fp32. So a model run this way is the stored model, like the dequantized one.
``pack`` only reorders the blocks (groups of ``group_rows()`` rows, slice-major, so that a product
streams its weight in memory order: docs/benchmarks.md section 11); the bytes are the file's.
``dequantize_rows`` gives chosen rows of W (as stored, not packed) as fp32, exactly (a quantized
embedding lookup).

A prompt's prefill on AVX2 and AVX-512 goes block by block through oneDNN's GEMM
(``blockwise.py``: 1.1-1.6x at 150 rows).

``activations="int8"`` (the gguf-a8 weight format, the default for GGUF models) rounds each
activation row to int8 per 256 values for the Q4_K and Q6_K products of decode and verification,
as llama.cpp does, and sums integer products (ggml_q8.h): not the stored model computed in fp32,
but that model with its activations rounded, batch invariant like the fp32 kernels. Where the CPU has AVX-512 VNNI
(``interleaves``), those weights are packed interleaved instead (16 rows, four bytes of each in
turn: ggml_q8il.h) and one kernel takes every row count, a prompt's prefill included: 1.1-2.6x
the plain layout at 1-16 rows (docs/benchmarks.md section 11, eighth run).

The kernel uses the widest instruction set the CPU has; ``SSDECODE_ISA`` (scalar, avx2, avx512
or amx; envs.isa) or ``isa=`` forces one, for tests and for AVX2 numbers on an AVX-512 machine.
``amx`` is AVX-512 plus, from ``amx_min_rows(qtype)`` activation rows on (prefill), the AMX-BF16 tile
unit with the activations split exactly into three bf16 parts (ggml_amx.c): the same numbers up
to fp32 summation order, so results are batch invariant below that row count and above it, but
not across it. A batch ``[B, T, k]`` takes the tile unit only when T itself reaches it (a
prompt's prefill), so decode and verification rounds never switch kernels with the batch.
"""
from __future__ import annotations

import functools
from ctypes import CDLL, c_int, c_int64, c_void_p, cast

import gguf
import torch

from ssdecode import envs
from ssdecode.kernels import blockwise
from ssdecode.kernels.build import loads, shared_library
from ssdecode.kernels.fused_layers import GGML, GGML_Q8, Part

QTYPES = ("Q4_K", "Q6_K", "Q8_0", "Q5_0", "Q4_0")  # positions are the C code's qtype codes
INT8_QTYPES = ("Q4_K", "Q6_K")  # the types with a kernel for int8 activations (activations="int8")
ACTIVATIONS = ("fp32", "int8")
ISAS = ("scalar", "avx2", "avx512", "amx")  # and its isa codes
_SIZES = {q: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]] for q in QTYPES}  # weights, bytes per block


@functools.cache
def _lib() -> CDLL:
    lib = shared_library("ggml")
    lib.ssd_ggml_linear.argtypes = [c_int, c_int, c_void_p, c_int64, c_int64, c_void_p, c_int64, c_void_p,
                                    c_void_p, c_int]
    lib.ssd_ggml_amx_min_rows.argtypes = [c_int]
    lib.ssd_ggml_dequantize.argtypes = [c_int, c_int, c_void_p, c_int64, c_int, c_void_p, c_int64, c_int64, c_void_p,
                                        c_int]
    lib.ssd_ggml_pack.argtypes = [c_int, c_void_p, c_int64, c_int64, c_void_p, c_int]
    lib.ssd_ggml_linear_q8.argtypes = lib.ssd_ggml_linear.argtypes
    lib.ssd_ggml_linear_q8il.argtypes = lib.ssd_ggml_linear.argtypes
    lib.ssd_ggml_pack_il.argtypes = lib.ssd_ggml_pack.argtypes
    lib.ssd_ggml_il_row_bytes.argtypes = [c_int, c_int64]
    lib.ssd_ggml_il_row_bytes.restype = c_int64
    return lib


@functools.cache
def is_available() -> bool:
    """Whether the kernels compile and load here (the reason is logged when not)."""
    return loads(_lib, "GGUF quantized kernels")


@functools.cache
def best_isa() -> str:
    """The instruction set used by default on this CPU."""
    return ISAS[_lib().ssd_ggml_best_isa()]


def amx_min_rows(qtype: str) -> int:
    """The fewest activation rows of ``qtype`` that the amx instruction set computes on the tile unit."""
    return _lib().ssd_ggml_amx_min_rows(QTYPES.index(qtype))


@functools.cache
def group_rows(interleaved: bool = False) -> int:
    """Rows of a group in the packed layout (``pack``; ``interleaved``: its interleaved form)."""
    return _lib().ssd_ggml_il_group_rows() if interleaved else _lib().ssd_ggml_group_rows()


def _isa(isa: str | None) -> str:
    isa = isa or envs.isa(ISAS) or best_isa()
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; choose from {ISAS}")
    return isa


def interleaves(qtype: str, activations: str, isa: str | None = None) -> bool:
    """Whether a ``qtype`` weight with these activations runs from the interleaved layout here
    (``pack(interleaved=True)``: Q4_K and Q6_K with int8 activations, on AVX-512 VNNI, unless
    ``SSDECODE_INTERLEAVED=0``)."""
    return (activations == "int8" and qtype in QTYPES and _isa(isa) in ("avx512", "amx") and envs.interleaved()
            and bool(_lib().ssd_ggml_il_usable(QTYPES.index(qtype))))


def _check(qtype: str, blocks: torch.Tensor, n: int, k: int, isa: str | None, packed: bool = False,
           interleaved: bool = False) -> str:
    """Raise ValueError unless ``blocks`` holds an [n, k] weight of ``qtype`` (``packed``: as
    ``pack`` makes it, ``interleaved`` or not); the isa to use."""
    if qtype not in _SIZES:
        raise ValueError(f"no kernel for GGML type {qtype!r}; there are {QTYPES}")
    block, block_bytes = _SIZES[qtype]
    if k % block and not interleaved:  # the interleaved kernel pads a row's last super-block
        raise ValueError(f"{qtype} rows hold multiples of {block} weights, not {k}")
    rows = -(-n // group_rows(interleaved)) * group_rows(interleaved) if packed else n
    width = (_lib().ssd_ggml_il_row_bytes(QTYPES.index(qtype), k) if interleaved and packed
             else -(-k // block) * block_bytes)
    shape = (rows, width)
    if blocks.dtype != torch.uint8 or blocks.shape != shape or not blocks.is_contiguous() or not blocks.is_cpu:
        what = "packed blocks (ggml.pack)" if packed else "blocks"
        raise ValueError(f"{qtype} [{n}, {k}] weight: want contiguous CPU uint8 {what} of shape {shape}, "
                         f"got {blocks.dtype} {tuple(blocks.shape)} on {blocks.device}")
    return _isa(isa)


def _no_isa(isa: str) -> RuntimeError:
    return RuntimeError(f"this CPU cannot run the {isa} kernels (best: {best_isa()})")


def pack(blocks: torch.Tensor, qtype: str, n: int, k: int, *, threads: int | None = None,
         interleaved: bool = False) -> torch.Tensor:
    """The [n, k] weight stored as ``blocks`` (GGUF row order) in the layout ``quantized_linear``
    reads: the same bytes in another order, rows padded with zeros to whole groups (a new tensor).
    ``interleaved`` (where ``interleaves``): 16 rows per group, four bytes of each in turn, the
    scales unpacked to bytes (ggml_q8il.h)."""
    _check(qtype, blocks, n, k, None, interleaved=interleaved)
    if interleaved and not interleaves(qtype, "int8"):
        raise ValueError(f"no interleaved kernel for {qtype} on this CPU (best: {best_isa()})")
    rows = -(-n // group_rows(interleaved)) * group_rows(interleaved)
    width = _lib().ssd_ggml_il_row_bytes(QTYPES.index(qtype), k) if interleaved else blocks.shape[1]
    out = torch.empty(rows, width, dtype=torch.uint8)
    fn = _lib().ssd_ggml_pack_il if interleaved else _lib().ssd_ggml_pack
    fn(QTYPES.index(qtype), blocks.data_ptr(), n, k, out.data_ptr(), threads or torch.get_num_threads())
    return out


def quantized_linear(x: torch.Tensor, packed: torch.Tensor, qtype: str, n: int, k: int,
                     bias: torch.Tensor | None = None, *, threads: int | None = None,
                     isa: str | None = None, activations: str = "fp32", interleaved: bool = False) -> torch.Tensor:
    """``x[..., k] @ W^T + bias`` -> ``[..., n]`` fp32, W given as GGML blocks that ``pack`` made
    (``interleaved`` or not).

    ``activations="int8"`` (``INT8_QTYPES`` only): each row of x rounded to int8 per 256 values
    (scale max|x| / 127), as llama.cpp computes, in the products of decode and verification
    shapes; a prompt's prefill (blockwise GEMM, or the tile unit) stays fp32, except from the
    interleaved layout, whose kernel takes every row count.

    ``threads`` defaults to ``torch.get_num_threads()``. The GIL is released during the product."""
    isa = _check(qtype, packed, n, k, isa, packed=True, interleaved=interleaved)
    if activations not in ACTIVATIONS or (activations == "int8" and qtype not in INT8_QTYPES):
        raise ValueError(f"activations {activations!r}: choose fp32, or int8 for {', '.join(INT8_QTYPES)}")
    if interleaved and activations != "int8":
        raise ValueError("the interleaved layout has a kernel for int8 activations only")
    if isa == "amx" and blockwise.tokens(x) < amx_min_rows(qtype):
        # the tile unit for prefill only (tokens per sequence, not rows in all): decode and
        # verification stay on one kernel whatever the batch, so a sequence's rounds compute the
        # same bits alone or batched
        isa = "avx512"
    if x.dtype != torch.float32 or x.shape[-1] != k or not x.is_cpu:
        raise ValueError(f"want fp32 CPU activations [..., {k}], got {x.dtype} {tuple(x.shape)} on {x.device}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()
                             or not bias.is_cpu):
        raise ValueError(f"want a contiguous fp32 CPU bias [{n}], got {bias.dtype} {tuple(bias.shape)}")
    if not interleaved and isa in ("avx2", "avx512") and blockwise.applies(x):
        def dequantize(r0: int, count: int, out: torch.Tensor) -> None:
            if _lib().ssd_ggml_dequantize(ISAS.index(isa), QTYPES.index(qtype), packed.data_ptr(), k, 1, None, r0,
                                          count, out.data_ptr(), threads or torch.get_num_threads()):
                raise _no_isa(isa)
        return blockwise.linear(x, n, k, dequantize, bias, group_rows())
    rows = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, k).contiguous()
    y = torch.empty(rows.shape[0], n)
    product = (_lib().ssd_ggml_linear_q8il if interleaved else
               _lib().ssd_ggml_linear_q8 if activations == "int8" and isa != "amx" else _lib().ssd_ggml_linear)
    rc = product(ISAS.index(isa), QTYPES.index(qtype), rows.data_ptr(), rows.shape[0], k, packed.data_ptr(), n,
                 None if bias is None else bias.data_ptr(), y.data_ptr(), threads or torch.get_num_threads())
    if rc == -2:
        raise MemoryError("no memory for a copy of the activations")
    if rc:
        raise _no_isa(isa)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)


def decode_part(packed: torch.Tensor, qtype: str, n: int, k: int, bias: torch.Tensor | None,
                activations: str = "fp32", interleaved: bool = False):
    """The product ``quantized_linear`` computes for decode and verification rows, as a
    ``layers.Part`` for the fused layers: the same kernel and instruction set (avx512 where the
    CPU has amx: the tile unit is for prefill; here for 16 tokens too, which ``quantized_linear``
    would put on the tile unit)."""
    isa = _check(qtype, packed, n, k, None, packed=True, interleaved=interleaved)
    isa = "avx512" if isa == "amx" else isa
    q8 = activations == "int8"
    fn = (_lib().ssd_ggml_linear_q8il if interleaved else
          _lib().ssd_ggml_linear_q8 if q8 else _lib().ssd_ggml_linear)
    return Part(GGML_Q8 if q8 else GGML, ISAS.index(isa), QTYPES.index(qtype), n, k, k, packed.data_ptr(), None,
                None if bias is None else bias.data_ptr(), cast(fn, c_void_p).value)


def dequantize_rows(blocks: torch.Tensor, qtype: str, rows, k: int, *, threads: int | None = None,
                    isa: str | None = None) -> torch.Tensor:
    """Rows ``rows`` (ids, e.g. tokens) of the [n, k] weight in ``blocks`` as fp32 ``[len(rows), k]``,
    bit-identical to those rows of ``gguf.quants.dequantize``: a quantized embedding lookup."""
    ids = torch.as_tensor(rows, dtype=torch.int64).reshape(-1).contiguous()
    n = blocks.shape[0] if blocks.dim() == 2 else -1
    isa = _check(qtype, blocks, n, k, isa)
    if ids.numel() and not 0 <= int(ids.min()) <= int(ids.max()) < n:
        raise ValueError(f"row ids must lie in [0, {n})")
    out = torch.empty(ids.numel(), k)
    if _lib().ssd_ggml_dequantize(ISAS.index(isa), QTYPES.index(qtype), blocks.data_ptr(), k, 0, ids.data_ptr(), 0,
                                  ids.numel(), out.data_ptr(), threads or torch.get_num_threads()):
        raise _no_isa(isa)
    return out
