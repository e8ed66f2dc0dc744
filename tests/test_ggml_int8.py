"""The GGUF kernels with int8 activations (``activations="int8"``, the gguf-a8 weight format).

The reference is computed apart from the kernel, in float64: each row of x rounded to int8 per 256
values as llama.cpp's Q8_K does (scale max|x| / 127, the same float32 steps, ties to even), times
gguf's own dequantized weight. The kernel sums exact integer products, so it must match that up to
fp32 rounding (1e-5 of the largest output), and it must not match the fp32 product (the rounding
of the activations moves outputs by ~1e-3 of the largest): a kernel that forgot to round, or
applied a scale or an offset wrongly, fails one of the two. Thread count and batch size change
no bit (test_ggml_kernels.py, with the fp32 kernels).
"""
import gguf
import numpy as np
import pytest
import torch

from ssdecode.bench.kernels import random_blocks
from ssdecode.kernels import blockwise, ggml
from test_ggml_kernels import isas

pytestmark = pytest.mark.skipif(not ggml.is_available(), reason="the GGUF kernels do not build here")


def rounded(x: torch.Tensor) -> torch.Tensor:
    """x as the int8 activations stand for it: a * d per 256 values."""
    blocks = x.reshape(*x.shape[:-1], -1, 256)
    amax = blocks.abs().amax(-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(127.0) / amax, torch.zeros(()))
    a = torch.round(blocks * inv)
    return (a.double() * (amax / 127).double()).reshape(x.shape)


@pytest.mark.parametrize("qtype", ggml.INT8_QTYPES)
@pytest.mark.parametrize("m", [1, 3, 16, 17])
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
        y = ggml.quantized_linear(x, ggml.pack(torch.from_numpy(raw), qtype, n, k), qtype, n, k, bias, isa=isa,
                                  activations="int8")
        assert (y - want).abs().max().item() <= 1e-5 * scale, isa
        assert (y - fp32).abs().max().item() >= 1e-4 * scale, isa


def test_a_prompts_prefill_stays_fp32():
    n, k = 40, 512
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", n, k)), "Q4_K", n, k)
    prompt = torch.randn(1, blockwise.MIN_ROWS, k)
    assert torch.equal(ggml.quantized_linear(prompt, blocks, "Q4_K", n, k, activations="int8"),
                       ggml.quantized_linear(prompt, blocks, "Q4_K", n, k))


def test_rejects_other_types_and_modes():
    x = torch.randn(1, 256)
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
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", 8, 512)), "Q4_K", 8, 512)
    x = torch.randn(2, 512)
    x[1, 300] = bad
    for isa in isas():
        y = ggml.quantized_linear(x, blocks, "Q4_K", 8, 512, isa=isa, activations="int8")
        assert torch.isfinite(y[0]).all() and torch.isnan(y[1]).all(), isa
