"""The GGUF quantized-weight kernels (ssdecode.kernels.ggml) against gguf's own dequantizer.

The kernel dequantizes to the same fp32 weights and sums in fp32, so it must match
``F.linear(x, dequantize(blocks))`` up to summation order: the bound checked is
max |y - reference| <= 1e-5 * max |reference| (observed: about 1e-6). Each output is summed by one
thread in a fixed order, so thread count and batch size do not change a single bit.
"""
import logging

import gguf
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from tools.gguf_blocks import random_blocks

from ssdecode.kernels import blockwise, build, ggml

REL_BOUND = 1e-5


@pytest.fixture(scope="module", autouse=True)
def _kernels():
    if not ggml.is_available():
        pytest.skip("the kernels do not build here (no C compiler?)")


def isas() -> tuple[str, ...]:
    """Every instruction set this CPU runs, down to the portable scalar build; amx (AVX-512 below
    its row threshold, which the batch test here crosses) has tests/test_ggml_amx.py."""
    return tuple(i for i in ggml.ISAS[:ggml.ISAS.index(ggml.best_isa()) + 1] if i != "amx")


def reference(x: torch.Tensor, raw: np.ndarray, qtype: str, bias=None) -> torch.Tensor:
    w = gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
    return F.linear(x, torch.from_numpy(np.ascontiguousarray(w)), bias)


# k: two super-blocks; 352 = 11 blocks of 32, so a partial last slice. n = 37: a partial row group.
@pytest.mark.parametrize("qtype,k", [("Q4_K", 512), ("Q6_K", 512), ("Q8_0", 352), ("Q5_0", 352), ("Q4_0", 352)])
@pytest.mark.parametrize("m", [1, 3, 8, 16, 17, blockwise.MIN_ROWS + 6])
def test_matches_gguf_dequantize(qtype, k, m):
    n = 37
    raw = random_blocks(qtype, n, k, seed=m)
    x = torch.randn(m, k, generator=torch.Generator().manual_seed(m))
    bias = torch.randn(n) if m == 3 else None
    ref = reference(x, raw, qtype, bias)
    for isa in isas():
        y = ggml.quantized_linear(x, ggml.pack(torch.from_numpy(raw), qtype, n, k), qtype, n, k, bias, isa=isa)
        err = (y - ref).abs().max().item() / ref.abs().max().item()
        assert err <= REL_BOUND, (isa, err)


@pytest.mark.parametrize("qtype,activations", [(q, "fp32") for q in ggml.QTYPES] +
                         [(q, "int8") for q in ggml.INT8_QTYPES])
def test_threads_and_batch_do_not_change_bits(qtype, activations):
    n, k = 300, 768
    blocks = ggml.pack(torch.from_numpy(random_blocks(qtype, n, k)), qtype, n, k)
    x = torch.randn(2, 8, k, generator=torch.Generator().manual_seed(1))
    for isa in isas():
        y = ggml.quantized_linear(x, blocks, qtype, n, k, isa=isa, threads=2, activations=activations)
        assert y.shape == (2, 8, n)
        assert torch.equal(y, ggml.quantized_linear(x, blocks, qtype, n, k, isa=isa, threads=1,
                                                    activations=activations))
        one_row = ggml.quantized_linear(x[1, 5], blocks, qtype, n, k, isa=isa, activations=activations)
        assert torch.equal(one_row, y[1, 5])


def test_prefill_takes_sgemm_and_decode_batches_do_not():
    """From blockwise.MIN_ROWS tokens of one sequence on (a prompt), blocks of the weight go through
    oneDNN's GEMM: the same numbers up to summation order, not the same bits. A batch of many
    sequences decoding one token each stays on the kernel: each row's bits as alone."""
    n, k, t = 40, 512, blockwise.MIN_ROWS
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", n, k)), "Q4_K", n, k)
    x = torch.randn(t + 3, 1, k)
    batched = ggml.quantized_linear(x, blocks, "Q4_K", n, k)
    assert torch.equal(batched, torch.cat([ggml.quantized_linear(x[b:b + 1], blocks, "Q4_K", n, k)
                                           for b in range(t + 3)]))
    prompt = x.view(1, t + 3, k)
    if ggml.best_isa() in ("avx2", "avx512"):
        assert not torch.equal(ggml.quantized_linear(prompt, blocks, "Q4_K", n, k)[0], batched[:, 0])


@pytest.mark.parametrize("qtype", ggml.QTYPES)
def test_dequantize_rows_is_gguf_dequantize(qtype):
    n, k = 50, 768 if qtype in ("Q4_K", "Q6_K") else 352
    raw = random_blocks(qtype, n, k, seed=3)
    want = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]))
    ids = [7, 0, 49, 7, 13]
    for isa in isas():
        got = ggml.dequantize_rows(torch.from_numpy(raw), qtype, ids, k, isa=isa, threads=2)
        assert torch.equal(got, want[ids]), isa
    assert ggml.dequantize_rows(torch.from_numpy(raw), qtype, [], k).shape == (0, k)
    with pytest.raises(ValueError, match="row ids"):
        ggml.dequantize_rows(torch.from_numpy(raw), qtype, [n], k)


@pytest.mark.parametrize("qtype,k", [("Q4_K", 768), ("Q5_0", 352)])
def test_pack_reorders_the_bytes_and_pads_whole_groups(qtype, k):
    """The packed weight holds the file's bytes (each row's slices, whole blocks, in another order)
    and zero rows up to a whole group; unpacked blocks are refused where the shapes tell."""
    n, g = 37, ggml.group_rows()
    raw = torch.from_numpy(random_blocks(qtype, n, k, seed=5))
    packed = ggml.pack(raw, qtype, n, k)
    assert packed.shape == (-(-n // g) * g, raw.shape[1])
    assert torch.equal(packed.view(-1).sort().values, torch.cat([raw.view(-1), torch.zeros(
        (packed.shape[0] - n) * raw.shape[1], dtype=torch.uint8)]).sort().values)
    assert not torch.equal(packed[:n], raw)
    with pytest.raises(ValueError, match="packed"):
        ggml.quantized_linear(torch.randn(1, k), raw, qtype, n, k)


def test_environment_forces_an_instruction_set(monkeypatch):
    """SSDECODE_ISA, which the int4 kernel reads too: its vnni is these kernels' avx512."""
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q4_K", 16, 256)), "Q4_K", 16, 256)
    x = torch.randn(4, 256)
    for value, isa in [("scalar", "scalar"), ("vnni", "avx512")]:
        if isa in isas():
            monkeypatch.setenv("SSDECODE_ISA", value)
            assert torch.equal(ggml.quantized_linear(x, blocks, "Q4_K", 16, 256),
                               ggml.quantized_linear(x, blocks, "Q4_K", 16, 256, isa=isa))
    monkeypatch.setenv("SSDECODE_ISA", "sse9")
    with pytest.raises(ValueError, match="unknown instruction set"):
        ggml.quantized_linear(x, blocks, "Q4_K", 16, 256)


def test_rejects_what_it_cannot_compute():
    blocks = ggml.pack(torch.from_numpy(random_blocks("Q6_K", 8, 256)), "Q6_K", 8, 256)
    x = torch.randn(2, 256)
    bad = [
        dict(x=x.double()), dict(x=torch.randn(2, 512)), dict(qtype="Q5_K"), dict(k=250),
        dict(packed=blocks[:, :100]), dict(packed=blocks.view(torch.int8)), dict(bias=torch.randn(9)),
        dict(packed=torch.cat([blocks, blocks], 1)[:, ::2]),
    ]
    for change in bad:
        args = dict(x=x, packed=blocks, qtype="Q6_K", n=8, k=256) | change
        with pytest.raises(ValueError):
            ggml.quantized_linear(**args)


def test_builds_once_into_the_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path))
    with caplog.at_level(logging.INFO, logger="ssdecode.kernels.build"):
        build.shared_library("ggml")
        assert "compiling ggml (ggml_cpu.c, " in caplog.text
        caplog.clear()
        build.shared_library("ggml")
        assert not caplog.text
    assert [p.suffix for p in (tmp_path / "kernels").iterdir()] == [".so"]  # nothing half-written left
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(RuntimeError, match="no C compiler"):
        build.shared_library("ggml")
