"""Q4_K blocks (GGML's 4-bit K-quant layout) made from a float weight: the ``q4k`` weight format,
for DRAFT models, run from the interleaved layout by the int8-activation kernel (ggml_q8il.c).

A draft may be any model: speculative decoding stays exact because the verifier uses the q the
draft sampled from. So a draft is re-quantized here to the format that the fastest kernel reads:
4.5 bits a weight (the ``int4`` format's fp32 scale per 32 makes 5), one output row per lane and
four weights per vpdpbusd (``ggml.interleaves``: AVX-512 VNNI).

The rule is the plain one of a K-quant: per sub-block of 32 the range [min(w, 0), max(w)] in 15
steps, the steps and the mins rounded to 6 bits of the super-block's largest (d, dmin in fp16),
then q = round((w + min) / step) in 0..15. Rows of k weights not a multiple of 256 are padded with
zeros to whole super-blocks, as the kernel pads the activations.
"""
from __future__ import annotations

import torch

SUPER, SUB = 256, 32
BYTES = 144  # d, dmin (fp16), 12 bytes of 6-bit scales and mins, 128 of nibbles
_CHUNK = 1 << 22  # weight elements quantized at a time


def quantize(weight: torch.Tensor) -> torch.Tensor:
    """uint8 ``[n, ceil(k / 256) * 144]``: the Q4_K blocks of the ``[n, k]`` weight, each row in
    GGUF order (``gguf.quants.dequantize`` reads them back)."""
    n, k = weight.shape
    kp = -(-k // SUPER) * SUPER
    out = torch.empty(n, kp // SUPER * BYTES, dtype=torch.uint8)
    step = max(1, _CHUNK // kp)
    for i in range(0, n, step):
        w = torch.zeros(min(step, n - i), kp)
        w[:, :k] = weight[i:i + step].float()
        out[i:i + step] = _blocks(w.view(w.shape[0], kp // SUPER, SUPER // SUB, SUB)).view(w.shape[0], -1)
    return out


def _blocks(w: torch.Tensor) -> torch.Tensor:
    """[rows, super-blocks, 8, 32] fp32 -> [rows, super-blocks, 144] uint8."""
    low = w.amin(-1).clamp(max=0)
    step, mins = (w.amax(-1) - low) / 15, -low
    d, dmin = (step.amax(-1) / 63).half(), (mins.amax(-1) / 63).half()
    sc = _levels(step, d.float()[..., None], 63)
    mn = _levels(mins, dmin.float()[..., None], 63)
    scale, offset = d.float()[..., None] * sc, dmin.float()[..., None] * mn
    q = _levels(w + offset[..., None], scale[..., None], 15).to(torch.uint8)
    sc, mn = sc.to(torch.uint8), mn.to(torch.uint8)
    packed = torch.cat([sc[..., :4] | (sc[..., 4:] >> 4) << 6, mn[..., :4] | (mn[..., 4:] >> 4) << 6,
                        (sc[..., 4:] & 15) | (mn[..., 4:] & 15) << 4], dim=-1)
    pairs = q.view(*q.shape[:2], 4, 2, SUB)  # sub-blocks 2c (low nibbles) and 2c + 1 (high)
    nibbles = (pairs[:, :, :, 0] | pairs[:, :, :, 1] << 4).flatten(2)
    return torch.cat([d[..., None].view(torch.uint8), dmin[..., None].view(torch.uint8), packed, nibbles], dim=-1)


def _levels(value: torch.Tensor, unit: torch.Tensor, top: int) -> torch.Tensor:
    """round(value / unit) in [0, top] as float; 0 where unit is 0."""
    return torch.where(unit > 0, value / torch.where(unit > 0, unit, 1), 0).round_().clamp_(0, top)
