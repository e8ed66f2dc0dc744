"""The q4k draft weight format (kernels/q4k.py): Q4_K blocks made from a float weight, which gguf's
own dequantizer (independent of our code) must read back as a close 4-bit grid of the weight, run
by the interleaved int8-activation kernel, whose products must match a reference built from that
dequantization and the int8 rounding of the activations."""
import gguf
import pytest
import torch
import torch.nn.functional as F

from ssdecode.kernels import ggml, q4k
from ssdecode.models import linear
from ssdecode.models.linear import Q4KLinear, resolve_format
from test_ggml_int8 import rounded

RUNS = ggml.is_available() and ggml.interleaves("Q4_K", "int8")
needs_kernel = pytest.mark.skipif(not RUNS, reason="no interleaved Q4_K kernel here (AVX-512 VNNI)")


def read_back(blocks: torch.Tensor, n: int) -> torch.Tensor:
    return torch.from_numpy(gguf.quants.dequantize(blocks.numpy(), gguf.GGMLQuantizationType.Q4_K)).reshape(n, -1)


@pytest.mark.parametrize("k", [256, 896])
def test_blocks_are_a_close_4_bit_grid_of_the_weight(k):
    g = torch.Generator().manual_seed(0)
    w = torch.randn(33, k, generator=g) * 0.02
    w[3] = 0  # an all-zero row: d = dmin = 0
    w[5, :40] += 0.5  # an outlier sub-block
    w[7] = w[7].abs()  # no negative weights: min 0
    deq = read_back(q4k.quantize(w), 33)
    assert deq.shape == (33, -(-k // 256) * 256) and not deq[:, k:].any()  # the padding reads as zeros
    assert not deq[3].any()
    err = deq[:, :k] - w
    assert err.pow(2).mean().sqrt() <= 0.08 * w.pow(2).mean().sqrt()  # 16 levels per 32: about 0.05
    for s in range(k // 32):  # each weight within a step (and the 6-bit scale's rounding) of its value
        sub = w[:, 32 * s:32 * s + 32]
        step = (sub.amax(1) - sub.amin(1).clamp(max=0)) / 15
        assert (err[:, 32 * s:32 * s + 32].abs() <= 1.6 * step[:, None] + 1e-6).all(), s


@needs_kernel
@pytest.mark.parametrize("k", [512, 896])
def test_product_is_the_rounded_reference(k):
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(40, k, generator=g) * 0.05, torch.randn(40, generator=g)
    lin = Q4KLinear(w, b)
    deq = read_back(q4k.quantize(w), 40)[:, :k]
    for m in (1, 5, 70):
        x = torch.randn(m, k, generator=g)
        want = rounded(F.pad(x, (0, -k % 256)))[:, :k] @ deq.double().T + b.double()
        y = lin(x)
        assert (y - want).abs().max() <= 1e-5 * want.abs().max(), m
        assert torch.equal(y[-1], lin(x[-1:])[0])  # a row alone: the same bits


def test_refused_where_the_kernel_does_not_run(monkeypatch):
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.bfloat16)):
        with pytest.raises(ValueError, match="'q4k' needs"):
            resolve_format("q4k", torch.device(device), dtype)
    monkeypatch.setattr(linear.ggml, "interleaves", lambda *a, **k: False)
    with pytest.raises(ValueError, match="AVX-512 VNNI"):
        resolve_format("q4k", torch.device("cpu"), torch.float32)
