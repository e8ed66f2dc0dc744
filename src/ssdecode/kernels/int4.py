"""Products of 4-bit block-quantized weights with activations quantized to int8 per row, on CPU:
the ``int4`` weight format, for draft models (int4_cpu.c says why a draft may and how it runs).
``quantize_weight`` makes the weight from a float one, ``int4_linear`` multiplies by it.

The kernel uses the widest instruction set the CPU has (AMX-INT8 for 32 rows and more, with
AVX-512 VNNI for fewer; AVX-512 VNNI; AVX2; scalar);
``SSDECODE_ISA`` (envs.isa) or ``isa=`` forces one, for tests.
"""
from __future__ import annotations

import functools
from ctypes import CDLL, c_int, c_int64, c_void_p, cast
from typing import NamedTuple

import torch

from ssdecode import envs
from ssdecode.kernels import blockwise
from ssdecode.kernels.build import loads, shared_library
from ssdecode.kernels.fused_layers import INT4, Part

ISAS = ("scalar", "avx2", "vnni", "amx")  # positions are the C code's isa codes
BLOCK, GROUP = 32, 128  # weights per scale; weights per 64 bytes (k is padded to a multiple)
_CHUNK = 1 << 22  # weight elements quantized at a time


class Int4Weight(NamedTuple):
    """``nibbles`` uint8 ``[n, kp / 2]`` and ``scales`` fp32 ``[n, kp / 32]`` for an ``[n, k]`` weight,
    k padded to ``kp`` (a multiple of 128) with zeros."""
    nibbles: torch.Tensor
    scales: torch.Tensor
    k: int


@functools.cache
def _lib() -> CDLL:
    lib = shared_library("int4")
    lib.ssd_i4_linear.argtypes = [c_int, c_void_p, c_int64, c_int64, c_int64, c_void_p, c_void_p, c_int64,
                                  c_void_p, c_void_p, c_int]
    lib.ssd_i4_dequantize.argtypes = [c_void_p, c_void_p, c_int64, c_int64, c_int64, c_int64, c_void_p, c_int]
    return lib


@functools.cache
def is_available() -> bool:
    """Whether the kernel compiles and loads here (the reason is logged when not)."""
    return loads(_lib, "int4 kernel")


@functools.cache
def best_isa() -> str:
    return ISAS[_lib().ssd_i4_best_isa()]


def quantize_weight(weight: torch.Tensor) -> Int4Weight:
    """GGML's Q4_0 rule per block of 32: d = (the signed value of largest magnitude) / -8,
    q = clamp(round(w / d) + 8, 0, 15), so w ~ d * (q - 8)."""
    n, k = weight.shape
    if k % BLOCK:
        raise ValueError(f"int4 weights need rows of a multiple of {BLOCK} weights, not {k}")
    kp = -(-k // GROUP) * GROUP
    nibbles = torch.empty(n, kp // 2, dtype=torch.uint8)
    scales = torch.empty(n, kp // BLOCK)
    step = max(1, _CHUNK // kp)
    for i in range(0, n, step):
        w = torch.zeros(min(step, n - i), kp)
        w[:, :k] = weight[i:i + step].float()
        blocks = w.view(w.shape[0], -1, BLOCK)
        extreme = blocks.gather(2, blocks.abs().argmax(2, keepdim=True))
        d = extreme / -8
        q = (blocks / torch.where(d == 0, 1, d)).round_().add_(8).clamp_(0, 15).to(torch.uint8)
        halves = q.view(w.shape[0], kp // GROUP, 2, GROUP // 2)  # byte j: weight j low, 64 + j high
        nibbles[i:i + step] = (halves[:, :, 0] | halves[:, :, 1] << 4).view(w.shape[0], -1)
        scales[i:i + step] = d.squeeze(2)
    return Int4Weight(nibbles, scales, k)


def dequantize(weight: Int4Weight) -> torch.Tensor:
    """The ``[n, k]`` fp32 weight that ``weight`` stands for (tests)."""
    n = weight.nibbles.shape[0]
    b = weight.nibbles.view(n, -1, 1, GROUP // 2)
    q = torch.cat([b & 15, b >> 4], dim=2).view(n, -1, BLOCK).float() - 8
    return (q * weight.scales[:, :, None]).view(n, -1)[:, :weight.k]


def _isa(isa: str | None) -> str:
    """``isa``, else ``SSDECODE_ISA``, else the widest this CPU runs; ValueError if unknown."""
    isa = isa or envs.isa(ISAS) or best_isa()
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; choose from {ISAS}")
    return isa


def int4_linear(x: torch.Tensor, weight: Int4Weight, bias: torch.Tensor | None = None, *,
                threads: int | None = None, isa: str | None = None) -> torch.Tensor:
    """``x[..., k] @ dequantize(weight)^T + bias`` -> ``[..., n]`` fp32, with x rounded to int8 per
    row (scale max|x| / 127); a prompt's prefill without the tile unit goes block by block through
    oneDNN's fp32 GEMM instead (``blockwise.py``), x as it is. The GIL is released during the product."""
    n, k, kp = weight.nibbles.shape[0], weight.k, weight.nibbles.shape[1] * 2
    if x.dtype != torch.float32 or x.shape[-1] != k or not x.is_cpu:
        raise ValueError(f"want fp32 CPU activations [..., {k}], got {x.dtype} {tuple(x.shape)} on {x.device}")
    isa = _isa(isa)
    threads = threads or torch.get_num_threads()
    if isa in ("avx2", "vnni") and blockwise.applies(x):
        def dequantize(r0: int, count: int, out: torch.Tensor) -> None:
            _lib().ssd_i4_dequantize(weight.nibbles.data_ptr(), weight.scales.data_ptr(), k, kp, r0, count,
                                     out.data_ptr(), threads)
        return blockwise.linear(x, n, k, dequantize, bias)
    rows = x.reshape(-1, k).contiguous()
    y = torch.empty(rows.shape[0], n)
    rc = _lib().ssd_i4_linear(ISAS.index(isa), rows.data_ptr(), rows.shape[0], k, kp, weight.nibbles.data_ptr(),
                              weight.scales.data_ptr(), n, None if bias is None else bias.data_ptr(), y.data_ptr(),
                              threads)
    if rc == -2:
        raise MemoryError("no memory for the quantized activations")
    if rc:
        raise RuntimeError(f"this CPU cannot run the {isa} int4 kernel (best: {best_isa()})")
    return y.reshape(*x.shape[:-1], n)


def decode_part(weight: Int4Weight, bias: torch.Tensor | None):
    """The product ``int4_linear`` computes for decode and verification rows, as a ``layers.Part``
    for the fused layers."""
    return Part(INT4, ISAS.index(_isa(None)), 0, weight.nibbles.shape[0], weight.k, weight.nibbles.shape[1] * 2,
                weight.nibbles.data_ptr(), weight.scales.data_ptr(), None if bias is None else bias.data_ptr(),
                cast(_lib().ssd_i4_linear, c_void_p).value)
