"""What a draft worker process loads: a model source.

- a string: anything ``ssdecode.models.loader.load_model`` takes (demo name, HF folder, hub id,
  GGUF file), loaded by the worker on its own device;
- ``StateDictFile``: a file holding a ModelConfig and an HF-named state dict (tests, converted
  checkpoints) for the native ``LlamaModel``;
- a picklable zero-argument callable returning a CausalLM (``functools.partial`` of a module-level
  function);
- a CausalLM object (spawned workers only): its plain CPU tensors travel through shared memory;
  oneDNN-packed weights (``models/linear.py``) are copied and repacked by the worker.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ssdecode.models.base import CausalLM
from ssdecode.models.config import ModelConfig
from ssdecode.models.llama import LlamaModel
from ssdecode.models.loader import load_model


@dataclass(frozen=True)
class StateDictFile:
    path: str

    def load(self, device, dtype, weights: str = "auto") -> CausalLM:
        data = torch.load(self.path, map_location="cpu", weights_only=False)
        return LlamaModel.from_state_dict(ModelConfig(**data["config"]), data["state_dict"], device,
                                          dtype or torch.float32, weights)

    @classmethod
    def save(cls, path: str, config, state_dict: dict) -> "StateDictFile":
        torch.save({"config": dataclasses.asdict(config), "state_dict": state_dict}, path)
        return cls(str(path))


def load_draft(source, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None,
               weights: str = "auto") -> CausalLM:
    """The draft a worker serves; ``weights`` (the matmul weight format) applies to the specs it
    loads (strings, StateDictFile), not to built models and factories."""
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    if isinstance(source, CausalLM) or (hasattr(source, "forward") and hasattr(source, "new_cache")):
        return source
    if isinstance(source, StateDictFile):
        return source.load(device or "cpu", dtype, weights)
    if isinstance(source, str):
        return load_model(source, device=device or "cpu", dtype=dtype, weights=weights)
    if callable(source):
        return source()
    raise TypeError(f"not a model source: {type(source).__name__} (a loader string, StateDictFile, factory "
                    "or CausalLM)")
