"""Model specs -> HF folders -> models and tokenizers.

Why one resolver: a spec may be a demo alias, a local HF folder, a ``.gguf`` file or a hub id, and
every later stage (native runtime, Transformers fallback, tokenizer) should only ever see a local
HF folder. ``load_model`` then picks the native Llama-family runtime when ``ModelConfig.from_hf``
accepts the config, and the Transformers fallback (correct, slower) for anything else.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch

from ssdecode.models.base import CausalLM
from ssdecode.models.config import ModelConfig, UnsupportedArchitecture
from ssdecode.models.demo import DEMO_MODELS, ensure_demo_model
from ssdecode.models.errors import ModelLoadError
from ssdecode.models.gguf_convert import convert_gguf
from ssdecode.models.linear import resolve_format

__all__ = ["ModelLoadError", "resolve_model", "load_model", "load_tokenizer"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name": one slash, no leading . / ~
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}


def resolve_model(spec: str | os.PathLike, progress: bool = True) -> Path:
    """A local HF folder for ``spec``, pulling or converting (and caching) as needed.

    ``spec``: ``demo-target`` / ``demo-draft``, a local HF folder, a ``.gguf`` file, or a hub id
    ``org/name``. Raises ``ModelLoadError`` saying what was tried.
    """
    text = str(spec)
    if text in DEMO_MODELS:
        return ensure_demo_model(DEMO_MODELS[text], progress)
    path = Path(text).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is not a Hugging Face model folder (no config.json); "
                                 "for a GGUF pass the .gguf file itself")
        return path
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelLoadError(f"{path} is neither a model folder nor a .gguf file")
        return convert_gguf(path, progress=progress)
    if _HUB_ID.fullmatch(text) and not text.lower().endswith(".gguf"):
        return _from_hub(text)
    raise ModelLoadError(f"model path {text} does not exist")


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES))
    except (HfHubHTTPError, LocalEntryNotFoundError, ValueError) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ModelLoadError(
            f"could not get {repo_id!r} from the Hugging Face hub (offline, or no such model?): "
            f"{reason}. For a local model pass its path (an HF folder or a .gguf file)."
        ) from e


def _dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def load_model(spec: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | str | None = None, weights: str = "auto") -> CausalLM:
    """Resolve ``spec`` and load it: native ``LlamaModel`` if supported, else ``HFCausalLM``.

    ``dtype`` defaults to fp32 on CPU and bf16 on CUDA. ``weights``: the native runtime's matmul
    weight format (``models/linear.py``: auto, dense, packed, int8).
    """
    from transformers import AutoConfig

    folder = resolve_model(spec)
    device = torch.device(device)
    dtype = _dtype(dtype, device)
    fmt = resolve_format(weights, device, dtype)
    try:
        ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
    except UnsupportedArchitecture as e:
        if weights not in ("auto", "dense"):
            raise ModelLoadError(f"weight format {weights!r} needs the native runtime, and {folder} is "
                                 f"not a supported architecture ({e})") from e
        logger.warning("%s: %s; using the Transformers fallback (correct but slower)", folder, e)
        from ssdecode.models.hf_fallback import HFCausalLM

        return HFCausalLM(str(folder), device, dtype)
    from ssdecode.models.llama import LlamaModel

    return LlamaModel.from_folder(folder, device, dtype, fmt)


def load_tokenizer(spec_or_dir: str | os.PathLike):
    """The Transformers tokenizer (with chat template, when the model has one) of ``spec_or_dir``."""
    from transformers import AutoTokenizer

    folder = resolve_model(spec_or_dir)
    try:
        return AutoTokenizer.from_pretrained(folder)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{folder} has no usable tokenizer: {e}") from e
