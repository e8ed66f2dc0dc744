"""CPU decode and verification run a model's layers in one native call (kernels/fused_layers.py)
where every product has a native kernel (gguf, gguf-a8, int4). It must compute what PyTorch's
op-by-op path computes (norms, RoPE with Qwen3's q/k norms, qkv bias, split q/k/v products, the KV
cache writes, attention, SiLU, residuals) up to fp32 rounding, and compute each token alone: a
sequence's rows are the same bits whatever else is in the call (other sequences in any slots, at
other lengths, under a tree mask)."""
from __future__ import annotations

import gguf
import pytest
import torch

from ssdecode.kernels import fused_layers, ggml
from ssdecode.models.loader import load_model
from ssdecode.runtime.runner import ModelRunner
from test_gguf_weights import SIZES, demo_like
from test_loaders import tiny_model, write_gguf

Q = gguf.GGMLQuantizationType
pytestmark = pytest.mark.skipif(not (ggml.is_available() and fused_layers.is_available()),
                                reason="the native kernels do not build here")


def split(name: str):
    """q/k/v of three types with kernels (three parts), the rest as the demo target."""
    return {"q_proj": Q.Q4_K, "k_proj": Q.Q8_0, "v_proj": Q.Q6_K}.get(name.split(".")[-2]) or demo_like(name)


def model_of(case: str, weights: str, tmp_path):
    arch, quant = {"qwen2": ("qwen2", demo_like), "llama-split": ("llama", split),
                   "qwen3": ("qwen3", demo_like)}[case]
    heads = 8 if arch == "qwen3" else 4  # qwen3's head_dim 32: 8 heads make o_proj's rows K-quant wide
    hf = tiny_model(arch, arch == "qwen2", **SIZES, num_attention_heads=heads)
    if weights in ("int4", "q4k"):
        hf.save_pretrained(tmp_path / "hf")
        return load_model(tmp_path / "hf", weights=weights)
    return load_model(write_gguf(hf, tmp_path / "m.gguf", quant), weights=weights)


def run(model, fused: bool, monkeypatch):
    """Logits of a 40-token prefill, six decode steps, then a four-token verification of the last
    four (rolled back), and the cache's K and V of the decoded rows."""
    monkeypatch.setenv("SSDECODE_FUSED_LAYERS", "1" if fused else "0")
    model.__dict__.pop("_fused", None)
    assert (model.fused_plan() is not None) == fused
    g = torch.Generator().manual_seed(3)
    runner = ModelRunner(model, 1, 64)
    runner.forward(torch.randint(0, 90, (1, 40), generator=g), torch.arange(40)[None], [0])
    toks = torch.randint(0, 90, (1, 6), generator=g)
    steps = torch.cat([runner.forward(toks[:, i:i + 1], torch.tensor([[40 + i]]), [0]) for i in range(6)], 1)
    kv = torch.stack([torch.stack([k[0, 40:46], v[0, 40:46]]) for k, v in zip(runner.cache.k, runner.cache.v)])
    runner.cache.truncate(0, 42)
    rows = runner.forward(toks[:, 2:], torch.arange(42, 46)[None], [0])
    return steps, rows, kv


@pytest.mark.parametrize("case,weights", [("qwen2", "gguf"), ("qwen2", "gguf-a8"), ("llama-split", "gguf"),
                                          ("qwen3", "gguf-a8"), ("qwen2", "int4"),
                                          pytest.param("qwen2", "q4k", marks=pytest.mark.skipif(
                                              not (ggml.is_available() and ggml.interleaves("Q4_K", "int8")),
                                              reason="no VNNI"))])
def test_fused_layers_compute_the_op_by_op_model(case, weights, tmp_path, monkeypatch):
    model = model_of(case, weights, tmp_path)
    fused, torch_path = run(model, True, monkeypatch), run(model, False, monkeypatch)
    for a, b in zip(fused, torch_path):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()
    steps, rows, _ = fused
    assert torch.equal(steps[:, 2:], rows)  # a verification row is its decode step, bit for bit


def test_packed_weights_keep_the_op_by_op_path(tmp_path):
    tiny_model("qwen2", **SIZES).save_pretrained(tmp_path / "hf")
    assert load_model(tmp_path / "hf", weights="packed").fused_plan() is None


@pytest.mark.parametrize("tree", [False, True])
def test_each_sequence_is_computed_alone(tree, tmp_path):
    """Three sequences at lengths 30, 37 and 33 in slots 2, 0, 3 (not consecutive), three tokens
    each (the middle one's last a padding token), optionally under a tree mask: each row's logits
    and cache rows are those of the sequence run alone in slot 0."""
    model = model_of("qwen2", "gguf-a8", tmp_path)
    g = torch.Generator().manual_seed(4)
    lengths, slots, t = [30, 37, 33], [2, 0, 3], 3
    prompts = [torch.randint(0, 90, (1, n), generator=g) for n in lengths]
    toks = torch.randint(0, 90, (3, t), generator=g)
    span = max(lengths) + t
    mask = torch.zeros(3, t, span, dtype=torch.bool)
    for r, n in enumerate(lengths):
        mask[r, :, :n] = True  # the prefix; token 0 and its sibling 1 see themselves, 2 is 0's child
        mask[r, 0, n] = mask[r, 1, n + 1] = True
        mask[r, 2, [n, n + 2]] = True
    batch = ModelRunner(model, 4, 64)
    for p, s in zip(prompts, slots):
        batch.forward(p, torch.arange(p.shape[1])[None], [s])
    positions = torch.tensor(lengths)[:, None] + torch.arange(t)
    out = batch.forward(toks, positions, slots, num_new=[3, 2, 3], attn_mask=mask if tree else None)
    for r, (p, s, n) in enumerate(zip(prompts, slots, lengths)):
        alone = ModelRunner(model, 1, 64)
        alone.forward(p, torch.arange(n)[None], [0])
        one = alone.forward(toks[r:r + 1], positions[r:r + 1], [0],
                            attn_mask=mask[r:r + 1, :, :n + t] if tree else None)
        real = 2 if r == 1 else 3
        assert torch.equal(out[r, :real], one[0, :real]), r
        for k_b, k_a in zip(batch.cache.k, alone.cache.k):
            assert torch.equal(k_b[s, :n + real], k_a[0, :n + real])


def test_positions_and_slots_out_of_range_are_refused(tmp_path):
    """The native call indexes memory with them: refused before it runs, as PyTorch's path would
    (its RoPE table lookup raises IndexError too)."""
    model = model_of("qwen2", "gguf", tmp_path)
    runner = ModelRunner(model, 2, 64)
    with pytest.raises(IndexError, match="positions"):
        runner.forward(torch.tensor([[5]]), torch.tensor([[model.cos.shape[0]]]), [0])
    with pytest.raises(IndexError, match="slots"):
        runner.forward(torch.tensor([[5]]), torch.tensor([[0]]), [-1])
    assert runner.forward(torch.tensor([[5]]), torch.tensor([[0]]), [1]).isfinite().all()
