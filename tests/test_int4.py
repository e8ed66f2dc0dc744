"""The int4 draft kernel (kernels/int4.py, int4_cpu.c): its weights are GGML's Q4_0 values, its
products are the integer dot products of those weights with x rounded to int8 per row, on every
instruction set this CPU has, for any row count and a k that needs padding."""
from __future__ import annotations

import json

import gguf
import numpy as np
import pytest
import torch

from ssdecode.kernels import blockwise, int4

pytestmark = pytest.mark.skipif(not int4.is_available(), reason="the int4 kernel does not build here")
ISAS = int4.ISAS[:int4.ISAS.index(int4.best_isa()) + 1] if int4.is_available() else ()


def test_weights_are_q4_0_values():
    """Against gguf's own Q4_0 quantizer, which stores each scale as fp16 (ours stay fp32)."""
    torch.manual_seed(0)
    w = torch.randn(64, 96)
    w[3, :32] = 0  # an all-zero block
    ours = int4.dequantize(int4.quantize_weight(w))
    ref = torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_0),
                                                  gguf.GGMLQuantizationType.Q4_0))
    assert ours.shape == w.shape and torch.all(ours[3, :32] == 0)
    step = w.view(64, -1, 32).abs().amax(2, keepdim=True) / 8  # a block's quantization step
    assert ((ours - ref).view(64, -1, 32).abs() <= 2 ** -8 * step).all()  # up to 8 times an fp16 rounding


def _reference(x: torch.Tensor, w: int4.Int4Weight, bias: torch.Tensor | None) -> torch.Tensor:
    """In float64: x rounded to int8 per row (scale max|x| / 127), times the dequantized weight."""
    scale = x.abs().amax(-1, keepdim=True).double() / 127
    xq = torch.round(x.double() / torch.where(scale == 0, 1, scale))
    y = (xq @ int4.dequantize(w).double().T) * scale
    return y if bias is None else y + bias.double()


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n, k", [(37, 96), (16, 128), (5, 416)])
def test_product_is_the_integer_dot_product(isa, n, k):
    torch.manual_seed(n)
    w = int4.quantize_weight(torch.randn(n, k))
    bias = torch.randn(n)
    for m in (1, 2, 3, 4, 5, 9, 16, 37, 50):
        x = torch.randn(m, k) * 3
        x[0, :7] = 0
        want = _reference(x, w, bias if m % 2 else None)
        got = int4.int4_linear(x, w, bias if m % 2 else None, isa=isa, threads=2)
        assert got.shape == (m, n) and got.dtype == torch.float32
        assert (got.double() - want).abs().max() <= 1e-6 * want.abs().max()
    zero = int4.int4_linear(torch.zeros(2, 1, k), w, bias, isa=isa)
    assert zero.shape == (2, 1, n) and torch.equal(zero, bias.expand(2, 1, n))


def test_environment_forces_an_instruction_set(monkeypatch):
    """SSDECODE_ISA, which the GGUF kernels read too: their avx512 is this kernel's vnni."""
    w = int4.quantize_weight(torch.randn(40, 256))
    x = torch.randn(3, 256)
    for value, isa in [("scalar", "scalar"), ("avx512", "vnni"), ("vnni", "vnni")]:
        if isa in ISAS:
            monkeypatch.setenv("SSDECODE_ISA", value)
            assert torch.equal(int4.int4_linear(x, w), int4.int4_linear(x, w, isa=isa))
    monkeypatch.setenv("SSDECODE_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown instruction set"):
        int4.int4_linear(x, w)


@pytest.mark.parametrize("isa", [i for i in ("avx2", "vnni") if i in ISAS])
def test_a_prompt_goes_through_the_gemm_with_activations_as_they_are(isa):
    """From blockwise.MIN_ROWS tokens of one sequence on (without the tile unit): x times the
    dequantized weight in fp32, x not rounded (fp32 summation order only)."""
    torch.manual_seed(2)
    n, k, t = 37, 416, blockwise.MIN_ROWS
    w, bias = int4.quantize_weight(torch.randn(n, k)), torch.randn(n)
    x = torch.randn(1, t, k) * 3
    want = x[0].double() @ int4.dequantize(w).double().T + bias.double()
    got = int4.int4_linear(x, w, bias, isa=isa, threads=2)
    assert got.shape == (1, t, n) and (got[0].double() - want).abs().max() <= 1e-5 * want.abs().max()
    assert (int4.int4_linear(x[:, :t - 1], w, bias, isa=isa)[0].double() - want[:t - 1]).abs().max() > 1e-4


def test_a_row_does_not_depend_on_its_batch():
    """Each output is summed alone, whatever rows or threads come with it (a draft's rounds alone
    and batched propose the same)."""
    torch.manual_seed(1)
    w, x = int4.quantize_weight(torch.randn(300, 256)), torch.randn(7, 256)
    alone = torch.cat([int4.int4_linear(x[i:i + 1], w, threads=1) for i in range(7)])
    assert torch.equal(int4.int4_linear(x, w, threads=2), alone)


def test_bad_input_is_refused():
    w = int4.quantize_weight(torch.randn(8, 64))
    with pytest.raises(ValueError, match="multiple of 32"):
        int4.quantize_weight(torch.randn(8, 40))
    with pytest.raises(ValueError, match="activations"):
        int4.int4_linear(torch.randn(2, 32), w)
    with pytest.raises(ValueError, match="activations"):
        int4.int4_linear(torch.randn(2, 64, dtype=torch.float64), w)
    with pytest.raises(ValueError, match="instruction set"):
        int4.int4_linear(torch.randn(2, 64), w, isa="neon")
    assert np.isfinite(int4.int4_linear(torch.randn(2, 64), w).numpy()).all()


def test_draft_kernel_benchmark_reports_every_format(monkeypatch, capsys):
    from tools import draft_kernels

    monkeypatch.setattr(draft_kernels, "SHAPES", [(64, 128)])
    monkeypatch.setattr(draft_kernels, "last_level_cache", lambda: 1 << 16)
    assert draft_kernels.main(["--threads", "1", "--rows", "1,3", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert [r["m"] for r in out["results"]] == [1, 3]
    assert all(set(r["ms"]) == {"int4", "int8", "q5_0", "packed"} for r in out["results"])
