"""Attention of a few query tokens over the KV cache on CPU, each query row on its own over
exactly the keys it sees (attention_cpu.c says why: a verification row then has the bits of the
decode step at its position, which SDPA's span-blocked sums do not give)."""
from __future__ import annotations

import functools
import math
from ctypes import CDLL, c_float, c_int, c_int64, c_void_p

import torch

from ssdecode.kernels.build import loads, shared_library

MAX_TOKENS = 16  # query tokens per row up to which forwards attend here (decode and verification)


@functools.cache
def _lib() -> CDLL:
    lib = shared_library("attention")
    lib.ssd_attend.argtypes = [c_void_p, c_int64, c_int64, c_void_p, c_void_p, c_int64, c_int64, c_int64, c_void_p,
                               c_int, c_int, c_int, c_int, c_int, c_float, c_void_p, c_int]
    return lib


@functools.cache
def is_available() -> bool:
    """Whether the kernel compiles and loads here (the reason is logged when not)."""
    return loads(_lib, "attention kernel")


def applies(q: torch.Tensor, is_causal: bool) -> bool:
    """Whether ``attend`` serves this call: fp32 on CPU, at most MAX_TOKENS query tokens, not a
    prompt's causal prefill (which SDPA computes faster)."""
    return (q.is_cpu and q.dtype == torch.float32 and q.shape[1] <= MAX_TOKENS and not is_causal
            and q.shape[-1] % 8 == 0 and is_available())


def visible_bytes(mask: torch.Tensor | None, b: int, t: int, span: int) -> torch.Tensor | None:
    """Bool ``mask`` (broadcastable to ``[b, t, span]``) as the contiguous bytes the C kernels read."""
    return None if mask is None else mask.expand(b, t, span).contiguous().view(torch.uint8)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``q [B, T, H, D]``, ``k``/``v`` ``[B, Hkv, Lk, D]`` (views of the cache are fine), ``mask``
    bool ``[B, T, Lk]`` (None: every key) -> ``[B, T, H * D]``, softmax(q k^T / sqrt(D)) v."""
    b, t, h, d = q.shape
    hkv, span = k.shape[1], k.shape[2]
    if q.stride(3) != 1 or q.stride(2) != d:
        q = q.contiguous()
    kk, vv = k.transpose(1, 2), v.transpose(1, 2)  # [B, Lk, Hkv, D]: the cache's own layout
    if kk.stride() != vv.stride() or kk.stride(3) != 1 or kk.stride(2) != d:
        kk, vv = kk.contiguous(), vv.contiguous()
    visible = visible_bytes(mask, b, t, span)
    out = torch.empty(b, t, h * d)
    rc = _lib().ssd_attend(q.data_ptr(), q.stride(0), q.stride(1), kk.data_ptr(), vv.data_ptr(), kk.stride(0),
                           kk.stride(1), span, None if visible is None else visible.data_ptr(), b, t, h, hkv, d,
                           1 / math.sqrt(d), out.data_ptr(), torch.get_num_threads())
    if rc:
        raise MemoryError("no memory for the attention's scratch")
    return out
