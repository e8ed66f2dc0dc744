"""The AMX-BF16 path of the GGUF kernels (isa "amx", ggml_amx.c): fp32 activations split exactly
into three bf16 parts, integer weights exact in bf16, block scales applied in fp32 afterwards. So
it must agree with the AVX-512 kernel and with a float64 product on the dequantized weights up to
fp32 summation order, and a product that involves no summation at all must be bit-exact.
Skipped where the CPU or the kernel cannot use AMX."""
import gguf
import numpy as np
import pytest
import torch
from tools.gguf_blocks import random_blocks

from ssdecode.kernels import ggml

REL_BOUND = 2e-6  # max |y - float64 reference| / max |reference|; observed: below 6e-7


@pytest.fixture(scope="module", autouse=True)
def _amx():
    if not ggml.is_available():
        pytest.skip("the kernels do not build here (no C compiler?)")
    if ggml.best_isa() != "amx":
        pytest.skip(f"no usable AMX-BF16 here (best instruction set: {ggml.best_isa()})")


def reference(x: torch.Tensor, raw: np.ndarray, qtype: str) -> torch.Tensor:
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    return x.double() @ torch.from_numpy(np.ascontiguousarray(w)).double().T


# n = 37: a partial group of 16 output rows; k = 352: a partial slice of 11 blocks (odd).
@pytest.mark.parametrize("qtype,k", [("Q4_K", 512), ("Q6_K", 512), ("Q8_0", 352), ("Q5_0", 352), ("Q4_0", 352)])
@pytest.mark.parametrize("m", [16, 17, 40, 150])
def test_matches_float64_and_avx512(qtype, k, m):
    n = 37
    m = max(m, ggml.amx_min_rows(qtype))
    raw = random_blocks(qtype, n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(n) if m == 17 else None
    ref = reference(x, raw, qtype) + (0 if bias is None else bias.double())
    scale = ref.abs().max().item()
    amx = ggml.quantized_linear(x, ggml.pack(torch.from_numpy(raw), qtype, n, k), qtype, n, k, bias, isa="amx")
    avx = ggml.quantized_linear(x, ggml.pack(torch.from_numpy(raw), qtype, n, k), qtype, n, k, bias, isa="avx512")
    assert (amx.double() - ref).abs().max().item() <= REL_BOUND * scale
    assert (amx - avx).abs().max().item() <= 2 * REL_BOUND * scale


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_below_the_threshold_it_is_the_avx512_kernel(qtype):
    n, k = 40, 512
    blocks = ggml.pack(torch.from_numpy(random_blocks(qtype, n, k)), qtype, n, k)
    lo = ggml.amx_min_rows(qtype)
    for m in (1, 2, 5, 9, lo - 1):
        x = torch.randn(m, k)
        assert torch.equal(ggml.quantized_linear(x, blocks, qtype, n, k, isa="amx"),
                           ggml.quantized_linear(x, blocks, qtype, n, k, isa="avx512"))
    x = torch.randn(lo, k)
    assert not torch.equal(ggml.quantized_linear(x, blocks, qtype, n, k, isa="amx"),
                           ggml.quantized_linear(x, blocks, qtype, n, k, isa="avx512"))  # the tile unit's order


@pytest.mark.parametrize("qtype", ggml.QTYPES)
def test_threads_and_batch_do_not_change_bits(qtype):
    """Each output is one thread's sum in a fixed order, and a token's column of a tile does not
    depend on the other tokens: any thread count, and any row count from the threshold on."""
    n, k = 300, 768
    blocks = ggml.pack(torch.from_numpy(random_blocks(qtype, n, k)), qtype, n, k)
    x = torch.randn(70, k, generator=torch.Generator().manual_seed(1))
    y = ggml.quantized_linear(x, blocks, qtype, n, k, isa="amx", threads=2)
    assert torch.equal(y, ggml.quantized_linear(x, blocks, qtype, n, k, isa="amx", threads=1))
    lo = ggml.amx_min_rows(qtype)
    assert torch.equal(ggml.quantized_linear(x[3:3 + lo], blocks, qtype, n, k, isa="amx"), y[3:3 + lo])


def exact_values(count: int, seed: int) -> torch.Tensor:
    """fp32 values with random full 24-bit significands, signs and exponents in [-100, 100]."""
    g = torch.Generator().manual_seed(seed)
    mant = 1 + torch.randint(0, 1 << 23, (count,), generator=g).double() / (1 << 23)
    sign = torch.randint(0, 2, (count,), generator=g) * 2 - 1
    return (sign * mant * torch.pow(2.0, torch.randint(-100, 101, (count,), generator=g).double())).float()


@pytest.mark.parametrize("d", [1.0, 3.0, -0.375])
def test_activations_are_split_exactly(d):
    """A Q8_0 weight with one integer weight q per row (row r reads x[:, r]) and scale d. With q a
    power of two the parts' products and their sums are exact, so y[:, r] must be
    fp32(x[:, r] * q * d) bit for bit, as the AVX-512 kernel gives (with other q the three parts'
    products are summed in fp32, a rounding of their own),
    for activations of every magnitude and all 24 significand bits (the tile unit drops bf16
    subnormals: the split is exact for |x| >= 2^-103, hence exponents from -100)."""
    n = k = 64
    q = torch.tensor([1, -1, 2, 64, -128, 4, -32, 8] * 8, dtype=torch.int8)
    blocks = np.zeros((n, k // 32, 34), np.uint8)
    blocks[:, :, :2] = np.frombuffer(np.float16(d).tobytes(), np.uint8)
    for r in range(n):
        blocks[r, r // 32, 2 + r % 32] = np.uint8(q[r].item() & 0xff)
    blocks = ggml.pack(torch.from_numpy(blocks.reshape(n, -1)), "Q8_0", n, k)
    x = exact_values(40 * k, seed=int(d * 8) + 9).reshape(40, k)
    y = ggml.quantized_linear(x, blocks, "Q8_0", n, k, isa="amx")
    want = (x.double() * q.double() * d).float()  # one rounding: q * d is exact in fp32
    assert torch.equal(y, want)
    assert torch.equal(y, ggml.quantized_linear(x, blocks, "Q8_0", n, k, isa="avx512"))


def test_a_batch_of_decode_rows_stays_on_one_kernel():
    """[B, T, k] takes the tile unit by T (a prompt), not by B x T: 32 sequences decoding one
    token, or verifying 5, compute each row's bits as it would alone; a 20-token prompt is tiled."""
    n, k = 40, 512
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", n, k)), "Q4_K", n, k)
    for t in (1, 5):
        x = torch.randn(32, t, k)
        batched = ggml.quantized_linear(x, blocks, "Q4_K", n, k, isa="amx")
        alone = torch.cat([ggml.quantized_linear(x[b:b + 1], blocks, "Q4_K", n, k, isa="amx") for b in range(32)])
        assert torch.equal(batched, alone)
    prompt = torch.randn(1, 20, k)
    assert torch.equal(ggml.quantized_linear(prompt, blocks, "Q4_K", n, k, isa="amx")[0],
                       ggml.quantized_linear(prompt[0], blocks, "Q4_K", n, k, isa="amx"))
