"""The GGUF kernels with int8 activations (``activations="int8"``, the gguf-a8 weight format).

The reference is computed apart from the kernel, in float64: each row of x rounded to int8 per 256
values as llama.cpp's Q8_K does (scale max|x| / 127, the same float32 steps, ties to even), times
gguf's own dequantized weight. The kernel sums exact integer products, so it must match that up to
fp32 rounding (1e-5 of the largest output), and it must not match the fp32 product (the rounding
of the activations moves outputs by ~1e-3 of the largest): a kernel that forgot to round, or
applied a scale or an offset wrongly, fails one of the two. Thread count and batch size change
no bit (test_ggml_kernels.py, with the fp32 kernels; here for the interleaved layout, whose kernel
also takes a prompt's prefill).
"""
import gguf
import numpy as np
import pytest
import torch
from tools.gguf_blocks import random_blocks

from ssdecode.kernels import blockwise, ggml
from test_ggml_kernels import isas

pytestmark = pytest.mark.skipif(not ggml.is_available(), reason="the GGUF kernels do not build here")


def layouts(qtype: str) -> list[bool]:
    """The packed layouts (interleaved or not) that this CPU runs for qtype with int8 activations."""
    return [False] + ([True] if ggml.interleaves(qtype, "int8") else [])


def product(x, raw, qtype, n, k, bias=None, *, interleaved, **kw):
    packed = ggml.pack(torch.from_numpy(raw), qtype, n, k, interleaved=interleaved)
    return ggml.quantized_linear(x, packed, qtype, n, k, bias, activations="int8", interleaved=interleaved, **kw)


def rounded(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 activations stand for it: a * d per 256 values."""
    blocks = x.reshape(*x.shape[:-1], -1, 256)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    a = torch.round(blocks * inv)
    return (a.double() * (amax / 127).double()).reshape(x.shape)


@pytest.mark.parametrize("qtype", ggml.INT8_QTYPES)
@pytest.mark.parametrize("m", [1, 3, 5, 16, 17, blockwise.MIN_ROWS + 70])
def test_matches_the_rounded_reference(qtype, m):
    n, k = 37, 768
    raw = random_blocks(qtype, n, k, seed=m)
    w = torch.from_numpy(np.ascontiguousarray(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])))
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    x[0, 256:512] = 0  # an all-zero block: scale 0
    bias = torch.randn(n)
    want = rounded(x) @ w.double().T + bias.double()
    fp32 = x.double() @ w.double().T + bias.double()
    scale = want.abs().max().item()
    for isa in isas():
        if m < blockwise.MIN_ROWS:  # a prompt's prefill is fp32 but from the interleaved layout
            y = product(x, raw, qtype, n, k, bias, interleaved=False, isa=isa)
            assert (y - want).abs().max().item() <= 1e-5 * scale, isa
            assert (y - fp32).abs().max().item() >= 1e-4 * scale, isa
    if True in layouts(qtype):
        y = product(x, raw, qtype, n, k, bias, interleaved=True)
        assert (y - want).abs().max().item() <= 1e-5 * scale
        assert (y - fp32).abs().max().item() >= 1e-4 * scale


@pytest.mark.parametrize("qtype", ggml.INT8_QTYPES)
def test_interleaved_rows_do_not_change_with_threads_batch_or_prefill(qtype):
    """One row alone, in a verification batch of 5 (tiles of 3 and 2) and in a prompt of 150 rows
    (passes of 64) gives the same bits, on one thread or two: prefill computes what decode would."""
    if True not in layouts(qtype):
        pytest.skip("no interleaved kernel on this CPU (AVX-512 VNNI)")
    n, k = 45, 768
    raw = random_blocks(qtype, n, k, seed=3)
    x = torch.randn(150, k, generator=torch.Generator().manual_seed(3))
    bias = torch.randn(n)
    prompt = product(x, raw, qtype, n, k, bias, interleaved=True, threads=2)
    assert torch.equal(prompt, product(x, raw, qtype, n, k, bias, interleaved=True, threads=1))
    assert torch.equal(prompt[:5], product(x[:5], raw, qtype, n, k, bias, interleaved=True))
    for i in (0, 4, 63, 64, 149):
        assert torch.equal(prompt[i], product(x[i], raw, qtype, n, k, bias, interleaved=True)), i


def test_a_prompts_prefill_stays_fp32():
    n, k = 40, 512
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", n, k)), "Q4_K", n, k)
    prompt = torch.randn(1, blockwise.MIN_ROWS, k)
    assert torch.equal(ggml.quantized_linear(prompt, blocks, "Q4_K", n, k, activations="int8"),
                       ggml.quantized_linear(prompt, blocks, "Q4_K", n, k))


def test_rejects_other_types_and_modes():
    x = torch.randn(1, 256)
    q6 = ggml.pack(torch.from_numpy(random_blocks("Q6_K", 8, 256)), "Q6_K", 8, 256)
    with pytest.raises(ValueError, match="shape"):  # the plain layout read as the interleaved one
        ggml.quantized_linear(x, q6, "Q6_K", 8, 256, activations="int8", interleaved=True)
    if ggml.interleaves("Q6_K", "int8"):
        il = ggml.pack(torch.from_numpy(random_blocks("Q6_K", 8, 256)), "Q6_K", 8, 256, interleaved=True)
        with pytest.raises(ValueError, match="int8 activations only"):
            ggml.quantized_linear(x, il, "Q6_K", 8, 256, interleaved=True)
    else:
        with pytest.raises(ValueError, match="no interleaved kernel"):
            ggml.pack(torch.from_numpy(random_blocks("Q6_K", 8, 256)), "Q6_K", 8, 256, interleaved=True)
    q8 = ggml.pack(torch.from_numpy(random_blocks("Q8_0", 8, 256)), "Q8_0", 8, 256)
    with pytest.raises(ValueError, match="int8 for Q4_K"):
        ggml.quantized_linear(x, q8, "Q8_0", 8, 256, activations="int8")
    q4 = ggml.pack(torch.from_numpy(random_blocks("Q4_K", 8, 256)), "Q4_K", 8, 256)
    with pytest.raises(ValueError, match="activations 'bf16'"):
        ggml.quantized_linear(x, q4, "Q4_K", 8, 256, activations="bf16")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_a_non_finite_activation_is_not_rounded_away(bad):
    """Rounded to int8 a NaN would read as 0: its slice's scale is NaN instead, so the outputs of
    that row are NaN, as the fp32 products give (and the model's check of the logits sees it)."""
    raw = random_blocks("Q4_K", 8, 512)
    x = torch.randn(2, 512)
    x[1, 300] = bad
    ys = [product(x, raw, "Q4_K", 8, 512, interleaved=False, isa=isa) for isa in isas()]
    ys += [product(x, raw, "Q4_K", 8, 512, interleaved=True) for il in layouts("Q4_K") if il]
    for y in ys:
        assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all()
