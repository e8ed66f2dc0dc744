"""Matmul weight formats (models/linear.py): each computes x W^T + b, pickles, and refuses
devices and dtypes it cannot run on; a whole model gives the same logits in dense and packed.
(The gguf format's whole-model checks are in test_gguf_weights.py.)"""
from __future__ import annotations

import os
import pickle

import gguf
import pytest
import torch
from tools.gguf_blocks import random_blocks

from ssdecode.kernels import ggml
from ssdecode.models.linear import QuantizedLinear, SplitLinear, make_linear, resolve_format
from ssdecode.runtime.runner import ModelRunner
from tiny import tiny_model

CPU = torch.device("cpu")


Q4K = ggml.is_available() and ggml.interleaves("Q4_K", "int8")


@pytest.mark.parametrize("fmt, rel_tol", [("dense", 1e-6), ("packed", 1e-5), ("int8", 3e-2), ("int4", 0.2),
                                          pytest.param("q4k", 0.2,
                                                       marks=pytest.mark.skipif(not Q4K, reason="no VNNI"))])
@pytest.mark.parametrize("bias", [False, True])
def test_formats_compute_the_product(fmt, rel_tol, bias):
    torch.manual_seed(0)
    w, b = torch.randn(48, 32), torch.randn(48) if bias else None
    lin = make_linear(w, b, fmt)
    for shape in [(1, 32), (3, 5, 32)]:
        x = torch.randn(*shape)
        want = torch.nn.functional.linear(x, w, b)
        got = lin(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max() <= rel_tol * want.abs().max()
    again = pickle.loads(pickle.dumps(lin))
    x = torch.randn(2, 32)
    assert torch.equal(again(x), lin(x))


def test_auto_resolves_per_device_and_dtype():
    assert resolve_format("auto", CPU, torch.float32) == "packed"
    assert resolve_format("auto", CPU, torch.bfloat16) == "dense"
    assert resolve_format("auto", torch.device("cuda"), torch.bfloat16) == "dense"


@pytest.mark.parametrize("fmt, device, dtype", [("packed", "cpu", torch.bfloat16), ("packed", "cuda", torch.float32),
                                                ("int8", "cuda", torch.float32), ("int8", "cpu", torch.float16),
                                                ("int4", "cuda", torch.float32), ("int4", "cpu", torch.bfloat16),
                                                ("q4k", "cuda", torch.float32),
                                                ("gguf", "cpu", torch.bfloat16), ("gguf", "cuda", torch.float32),
                                                ("fp4", "cpu", torch.float32)])
def test_impossible_formats_are_refused(fmt, device, dtype):
    with pytest.raises(ValueError, match="weight format"):
        resolve_format(fmt, torch.device(device), dtype)


@pytest.mark.skipif(not ggml.is_available(), reason="the GGUF kernels do not build here")
def test_quantized_and_split_linears():
    torch.manual_seed(0)
    raw = random_blocks("Q4_K", 48, 256)
    w = torch.from_numpy(gguf.quants.dequantize(raw, gguf.GGMLQuantizationType.Q4_K))
    b, other = torch.randn(48), torch.randn(16, 256)
    lin = QuantizedLinear(torch.from_numpy(raw), "Q4_K", 48, 256, b)
    split = SplitLinear([lin, make_linear(other, None, "dense")])
    x = torch.randn(3, 5, 256)
    want = torch.nn.functional.linear(x, torch.cat([w, other]), torch.cat([b, torch.zeros(16)]))
    assert (split(x) - want).abs().max() <= 1e-5 * want.abs().max()
    assert torch.equal(pickle.loads(pickle.dumps(split))(x), split(x))
    with pytest.raises(ValueError, match="CPU only"):
        QuantizedLinear(torch.from_numpy(raw).to("meta"), "Q4_K", 48, 256)


def test_packed_model_matches_dense_model():
    dense, packed = tiny_model(0, weights="dense"), tiny_model(0, weights="packed")
    ids = torch.tensor([[1, 5, 2, 9, 3]])
    pos = torch.arange(5)[None]
    a = ModelRunner(dense, 1, 16).forward(ids, pos, [0])
    b = ModelRunner(packed, 1, 16).forward(ids, pos, [0])
    assert (a - b).abs().max() < 1e-5


def test_step_benchmark_reports_every_format(tmp_path, capsys):
    import json

    from tools import steps
    from transformers import Qwen2ForCausalLM

    from tiny import tiny_hf_config

    Qwen2ForCausalLM(tiny_hf_config(vocab=1024, context=512)).save_pretrained(tmp_path / "m")
    steps.main(["--model", str(tmp_path / "m"), "--weights", "dense,packed,int8", "--tokens", "1,4",
                "--repeats", "1"])
    out = json.loads(capsys.readouterr().out)
    assert set(out["seconds"]) == {"dense", "packed", "int8"}
    assert all(s > 0 for row in out["seconds"].values() for s in row.values())


def test_step_benchmark_alternates_formats_with_load_time_settings(tmp_path, capsys, monkeypatch):
    import json

    from tools import steps
    from transformers import Qwen2ForCausalLM

    from tiny import tiny_hf_config

    seen = []
    real = steps.load_model
    monkeypatch.setattr(steps, "load_model",
                        lambda *a, **k: seen.append(os.environ.get("SSDECODE_PROBE")) or real(*a, **k))
    monkeypatch.delenv("SSDECODE_PROBE", raising=False)
    Qwen2ForCausalLM(tiny_hf_config(vocab=1024, context=512)).save_pretrained(tmp_path / "m")
    steps.main(["--model", str(tmp_path / "m"), "--weights", "packed,packed@SSDECODE_PROBE=0", "--tokens", "1,4",
                "--repeats", "1", "--rounds", "2"])
    out = json.loads(capsys.readouterr().out)
    assert set(out["seconds"]) == {"packed", "packed@SSDECODE_PROBE=0"} and seen == [None, "0"]
    assert "SSDECODE_PROBE" not in os.environ  # set only while that model loaded
