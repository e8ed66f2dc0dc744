"""Matrix products on GGML-quantized weights as stored in a GGUF file, on CPU (issue 11).

``quantized_linear(x, blocks, "Q4_K", n, k)`` is ``F.linear(x, W)`` for the ``[n, k]`` weight W
that ``gguf.quants.dequantize`` makes of ``blocks`` (the tensor's bytes in GGUF row order, uint8
``[n, k / block_size * block_bytes]``), up to fp32 summation order: the C kernel (ggml_cpu.c)
dequantizes each block on the fly to the same fp32 values and accumulates in fp32; activations
stay fp32. So a model run this way is the stored model, like the dequantized one.

The kernel uses the widest instruction set the CPU has; ``SSDECODE_KERNEL_ISA`` (scalar, avx2 or
avx512) or ``isa=`` forces one, for tests and for AVX2 numbers on an AVX-512 machine.
"""
from __future__ import annotations

import functools
import logging
import os
from ctypes import CDLL, c_int, c_int64, c_void_p

import gguf
import torch

from ssdecode.kernels.build import shared_library

log = logging.getLogger(__name__)

QTYPES = ("Q4_K", "Q6_K", "Q8_0")  # positions are the C code's qtype codes
ISAS = ("scalar", "avx2", "avx512")  # and its isa codes
_SIZES = {q: gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[q]] for q in QTYPES}  # weights, bytes per block


@functools.cache
def _lib() -> CDLL:
    lib = shared_library("ggml_cpu.c")
    lib.ssd_ggml_linear.argtypes = [c_int, c_int, c_void_p, c_int64, c_int64, c_void_p, c_int64, c_void_p,
                                    c_void_p, c_int]
    return lib


@functools.cache
def is_available() -> bool:
    """Whether the kernels compile and load here (the reason is logged when not)."""
    try:
        _lib()
    except (OSError, RuntimeError) as e:
        log.warning("GGUF quantized kernels unavailable: %s", e)
        return False
    return True


def best_isa() -> str:
    """The instruction set used by default on this CPU."""
    return ISAS[_lib().ssd_ggml_best_isa()]


def quantized_linear(x: torch.Tensor, blocks: torch.Tensor, qtype: str, n: int, k: int,
                     bias: torch.Tensor | None = None, *, threads: int | None = None,
                     isa: str | None = None) -> torch.Tensor:
    """``x[..., k] @ W^T + bias`` -> ``[..., n]`` fp32, W given as stored GGML blocks.

    ``threads`` defaults to ``torch.get_num_threads()``. The GIL is released during the product."""
    if qtype not in _SIZES:
        raise ValueError(f"no kernel for GGML type {qtype!r}; there are {QTYPES}")
    block, block_bytes = _SIZES[qtype]
    if k % block:
        raise ValueError(f"{qtype} rows hold multiples of {block} weights, not {k}")
    shape = (n, k // block * block_bytes)
    if blocks.dtype != torch.uint8 or blocks.shape != shape or not blocks.is_contiguous() or not blocks.is_cpu:
        raise ValueError(f"{qtype} [{n}, {k}] weight: want contiguous CPU uint8 blocks of shape {shape}, "
                         f"got {blocks.dtype} {tuple(blocks.shape)} on {blocks.device}")
    if x.dtype != torch.float32 or x.shape[-1] != k or not x.is_cpu:
        raise ValueError(f"want fp32 CPU activations [..., {k}], got {x.dtype} {tuple(x.shape)} on {x.device}")
    if bias is not None and (bias.dtype != torch.float32 or bias.shape != (n,) or not bias.is_contiguous()
                             or not bias.is_cpu):
        raise ValueError(f"want a contiguous fp32 CPU bias [{n}], got {bias.dtype} {tuple(bias.shape)}")
    isa = isa or os.environ.get("SSDECODE_KERNEL_ISA") or best_isa()
    if isa not in ISAS:
        raise ValueError(f"unknown instruction set {isa!r}; choose from {ISAS}")
    rows = x if x.dim() == 2 and x.is_contiguous() else x.reshape(-1, k).contiguous()
    y = torch.empty(rows.shape[0], n)
    rc = _lib().ssd_ggml_linear(ISAS.index(isa), QTYPES.index(qtype), rows.data_ptr(), rows.shape[0], k,
                                blocks.data_ptr(), n, None if bias is None else bias.data_ptr(), y.data_ptr(),
                                threads or torch.get_num_threads())
    if rc == -2:
        raise MemoryError("no memory for a copy of the activations")
    if rc:
        raise RuntimeError(f"this CPU cannot run the {isa} kernels (best: {best_isa()})")
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], n)
