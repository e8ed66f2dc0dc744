"""The plain-read safetensors loader (models/safetensors_io.py) against safetensors' own reader:
every dtype the checkpoints use, sharded folders, fused reads with conversion, and damaged files
failing with the file's name."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ssdecode.models.config import ModelConfig
from ssdecode.models.llama import LlamaModel
from ssdecode.models.weights_io import SafetensorsFolder, WeightLoader
from ssdecode.runtime.runner import ModelRunner
from tiny import tiny_hf_config


def tensors(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return {"a.weight": torch.randn(7, 5).to(dtype), "a.bias": torch.randn(7).to(dtype),
            "b.weight": torch.randn(3, 5).to(dtype), "scalar": torch.tensor(2.5).to(dtype),
            "empty": torch.zeros(0, 5, dtype=dtype), "ids": torch.arange(6, dtype=torch.int64)}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reads_what_safetensors_reads(tmp_path, dtype):
    save_file(tensors(dtype), tmp_path / "model.safetensors", metadata={"format": "pt"})
    ref = load_file(tmp_path / "model.safetensors")
    folder = SafetensorsFolder(tmp_path)
    assert sorted(folder) == sorted(ref) and len(folder) == len(ref)
    for name, t in ref.items():
        got = folder[name]
        assert got.dtype == t.dtype and torch.equal(got, t), name
    assert "a.weight" in folder and "missing" not in folder


@pytest.mark.parametrize("indexed", [True, False])
def test_sharded_folders(tmp_path, indexed):
    parts = tensors(torch.float32)
    shards = {"model-00001-of-00002.safetensors": ["a.weight", "a.bias", "scalar"],
              "model-00002-of-00002.safetensors": ["b.weight", "empty", "ids"]}
    for file, names in shards.items():
        save_file({n: parts[n] for n in names}, tmp_path / file)
    if indexed:
        weight_map = {n: file for file, names in shards.items() for n in names}
        (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    folder = SafetensorsFolder(tmp_path)
    assert sorted(folder) == sorted(parts)
    assert all(torch.equal(folder[n], t) for n, t in parts.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_loader_fuses_and_converts(tmp_path, dtype):
    parts = tensors(dtype)
    save_file(parts, tmp_path / "model.safetensors")
    want = torch.cat([parts["a.weight"], parts["b.weight"]]).float()
    for source in (SafetensorsFolder(tmp_path), parts):  # from disk and from memory alike
        load = WeightLoader(source, "cpu", torch.float32, "dense")
        assert torch.equal(load.tensor("a.weight", "b.weight"), want)
        assert torch.equal(load.tensor("a.bias"), parts["a.bias"].float())
        lin = load.linear(["a.weight", "b.weight"], ["a.bias", "a.bias"])
        assert torch.equal(lin.weight, want) and lin.bias.shape == (14,)


@pytest.mark.parametrize("fmt", ["dense", "packed", "int8", "int4"])
def test_model_from_bf16_sharded_folder_matches_state_dict(tmp_path, fmt):
    """Also: packed formats read weights they cannot map as is (bf16 here) through one reused
    scratch buffer, so a format that kept a view of it would see later layers' weights here."""
    from transformers import Qwen2ForCausalLM

    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(tiny_hf_config()).to(torch.bfloat16)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    state = {k: v.float() for k, v in hf.state_dict().items()}
    ref = LlamaModel.from_state_dict(ModelConfig.from_hf(hf.config), state, weights=fmt)
    got = LlamaModel.from_folder(tmp_path, weights=fmt)
    ids, pos = torch.tensor([[1, 5, 7]]), torch.arange(3)[None]
    assert torch.equal(ModelRunner(got, 1, 8).forward(ids, pos, [0]), ModelRunner(ref, 1, 8).forward(ids, pos, [0]))


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/self/maps")
def test_packed_model_keeps_no_map_of_its_files(tmp_path):
    """Weights are packed straight from maps of the file; each map must go with its weight, or
    its pages would stay resident next to the packed copy."""
    from transformers import Qwen2ForCausalLM

    Qwen2ForCausalLM(tiny_hf_config()).save_pretrained(tmp_path)
    folder = SafetensorsFolder(tmp_path)
    held = folder.mapped(["model.layers.0.mlp.gate_proj.weight", "model.layers.0.mlp.up_proj.weight"])
    assert held is not None and str(tmp_path) in Path("/proc/self/maps").read_text()
    del held
    model = LlamaModel.from_folder(tmp_path, weights="packed")
    assert model.weight_format == "packed" and str(tmp_path) not in Path("/proc/self/maps").read_text()


def test_damaged_files_name_the_file(tmp_path):
    save_file(tensors(torch.float32), tmp_path / "model.safetensors")
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[:-8])  # the last tensor's bytes cut short
    with pytest.raises(ValueError, match="model.safetensors: truncated"):
        SafetensorsFolder(tmp_path)
    path.write_bytes(data[:100])  # cut inside the header
    with pytest.raises(ValueError, match="model.safetensors"):
        SafetensorsFolder(tmp_path)
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="model.safetensors"):
        SafetensorsFolder(tmp_path)
    path.unlink()
    with pytest.raises(FileNotFoundError):
        SafetensorsFolder(tmp_path)
