"""The gguf weight format: a GGUF's quantized tensors run as stored (issue 11) compute the same
model as its fp32 conversion: logits within 1e-4 of the largest (summation order only), greedy SD
equals AR, mixed-type q/k/v run unfused and types without a kernel are dequantized at load.

Hidden size 256: K-quant rows hold whole 256-weight super-blocks."""
from __future__ import annotations

import logging
import pickle
import shutil

import gguf
import pytest
import torch

from ssdecode.engine.llm import LLM
from ssdecode.kernels import ggml
from ssdecode.models.linear import QuantizedLinear, SplitLinear
from ssdecode.models.loader import ModelLoadError, load_model, load_tokenizer, resolve_model
from ssdecode.params import SamplingParams
from test_loaders import tiny_model, write_gguf

Q = gguf.GGMLQuantizationType
SIZES = dict(hidden_size=256, intermediate_size=512)
pytestmark = pytest.mark.skipif(not ggml.is_available(), reason="the GGUF kernels do not build here")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))


def demo_like(name: str):
    """Q4_K_M-like: Q8_0 q/k/v, Q6_K down and embedding (tied head), Q4_K the rest."""
    if name.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight")):
        return Q.Q8_0
    return Q.Q6_K if "down_proj" in name or "embed" in name else Q.Q4_K


def mixed(name: str):
    """q/k/v of three types (one without a kernel: Q5_1), gate/up apart."""
    return {"q_proj": Q.Q4_K, "k_proj": Q.Q8_0, "v_proj": Q.Q5_1, "gate_proj": Q.Q6_K}.get(
        name.split(".")[-2], Q.Q4_K)


def both(path):
    return load_model(path, weights="gguf"), load_model(path, weights="dense")


def logits(model) -> list[torch.Tensor]:
    """A 7-token prefill, then one decode step."""
    cache = model.new_cache(1, 16)
    return [model.forward(torch.tensor([[5, 17, 42, 3, 77, 9, 60]]), torch.arange(7)[None], cache, [0]),
            model.forward(torch.tensor([[11]]), torch.tensor([[7]]), cache, [0])]


def assert_same_logits(stored, dense):
    for a, b in zip(logits(stored), logits(dense)):
        assert (a - b).abs().max() <= 1e-4 * b.abs().max()


@pytest.mark.parametrize("arch,tied", [("qwen2", True), ("llama", False)])
def test_as_stored_equals_converted(arch, tied, tmp_path):
    stored, dense = both(write_gguf(tiny_model(arch, tied, **SIZES), tmp_path / "m.gguf", demo_like))
    layer = stored.layers[0]
    assert isinstance(layer.qkv, QuantizedLinear) and layer.qkv.qtype == "Q8_0"
    assert (layer.gate_up.qtype, layer.down.qtype, stored.lm_head.qtype) == ("Q4_K", "Q6_K", "Q6_K" if tied else "Q4_K")
    assert_same_logits(stored, dense)
    assert_same_logits(pickle.loads(pickle.dumps(stored)), dense)  # the SSD transport pickles models


def test_mixed_types_run_unfused(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="ssdecode.models.gguf_weights"):
        stored, dense = both(write_gguf(tiny_model("llama", **SIZES), tmp_path / "m.gguf", mixed))
    assert caplog.text.count("no kernel for GGUF type Q5_1") == 1
    qkv, gate_up = stored.layers[1].qkv, stored.layers[1].gate_up
    assert isinstance(qkv, SplitLinear) and isinstance(gate_up, SplitLinear)
    assert [type(p).__name__ for p in qkv.parts][:2] == ["QuantizedLinear"] * 2
    assert not isinstance(qkv.parts[2], QuantizedLinear)  # Q5_1: dequantized at load
    assert_same_logits(stored, dense)


def test_greedy_sd_with_a_gguf_target_equals_ar(tmp_path):
    path = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like)
    target, draft = load_model(path, weights="gguf"), load_model(path, weights="dense")
    params = SamplingParams(max_tokens=16, ignore_eos=True)
    prompts = [[5, 17, 42], [3, 77, 9, 60, 1]]
    runs = {mode: LLM.from_models(load_tokenizer(path), target, draft, mode=mode, k=3).generate(prompts, params)
            for mode in ("ar", "sd")}
    assert [c.token_ids for c in runs["sd"]] == [c.token_ids for c in runs["ar"]]


def test_the_gguf_given_is_read(tmp_path):
    """A copy of a GGUF hits the cached conversion of the original, which records the original:
    the weights still come from the copy. A folder whose recorded GGUF is gone says so."""
    first = write_gguf(tiny_model("qwen2", True, **SIZES), tmp_path / "m.gguf", demo_like)
    folder = resolve_model(first)
    copy = shutil.copy(first, tmp_path / "copy.gguf")
    first.unlink()
    assert isinstance(load_model(copy, weights="gguf").lm_head, QuantizedLinear)
    with pytest.raises(ModelLoadError, match="gone or changed"):
        load_model(folder, weights="gguf")
