"""Model specs -> HF folders -> models and tokenizers.

Why one resolver: a spec may be a demo alias, a local HF folder, a ``.gguf`` file or a hub id, and
every later stage (native runtime, Transformers fallback, tokenizer) should only ever see a local
HF folder. ``load_model`` then picks the native Llama-family runtime when ``ModelConfig.from_hf``
accepts the config, and the Transformers fallback (correct, slower) for anything else.

Converted folders are cache entries that check themselves (``manifest.py``): file sizes on every
resolve, the full checksum after any load failure (a probe forward at load counts: NaN/inf logits
are a failure) and on ``ssdecode models verify``. A damaged one is converted again from its GGUF
with a warning, or fails with a ModelLoadError naming the folder when the GGUF is gone.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Callable, TypeVar

import torch
from huggingface_hub import snapshot_download
from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
from safetensors import SafetensorError
from transformers import AutoConfig, AutoTokenizer

from ssdecode.models import manifest
from ssdecode.models.base import CausalLM
from ssdecode.models.config import ModelConfig, UnsupportedArchitecture
from ssdecode.models.demo import DEMO_MODELS, ensure_demo_model
from ssdecode.models.errors import ModelLoadError, NonFiniteLogits
from ssdecode.models.gguf_convert import add_manifest, convert_gguf, discard, fingerprint, read_marker
from ssdecode.models.gguf_weights import gguf_source
from ssdecode.models.hf_fallback import HFCausalLM
from ssdecode.models.linear import GGUF_FORMATS, resolve_format, runs_gguf
from ssdecode.models.llama import LlamaModel

__all__ = ["ModelLoadError", "resolve_model", "load_model", "load_tokenizer", "verify_model"]

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "org/name": one slash, no leading . / ~
_HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "*.tiktoken"]
_DTYPES = {"fp32": torch.float32, "float32": torch.float32, "bf16": torch.bfloat16,
           "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16}
# What damaged files make loading raise; anything else (out of memory, bad options) is not theirs.
_LOAD_ERRORS = (OSError, ValueError, KeyError, SafetensorError, NonFiniteLogits)
T = TypeVar("T")


def resolve_model(spec: str | os.PathLike, progress: bool = True) -> Path:
    """A local HF folder for ``spec``, pulling or converting (and caching) as needed.

    ``spec``: ``demo-target`` / ``demo-draft``, a local HF folder, a ``.gguf`` file, or a hub id
    ``org/name``. A converted folder whose file sizes are wrong is converted again. Raises
    ``ModelLoadError`` saying what was tried.
    """
    folder = _locate(spec, progress)
    found = check_folder(folder)
    return repair(folder, found, progress) if found else folder


def check_folder(folder: Path, checksum: bool = False, progress: bool = False) -> list[str]:
    """What is wrong with a converted folder, by its manifest: file sizes (a stat each), and
    sha256 too when ``checksum`` (reads everything). Empty when intact or nothing was recorded
    (not an ssdecode conversion, or one older than manifests).

    Sizes catch truncated and missing files; a changed byte is found only by the checksum, or
    by the load-time probe when it makes NaN/inf logits. A changed byte in fp32 weights mostly
    gives finite, slightly wrong weights: only ``ssdecode models verify`` notices those.
    """
    files = (read_marker(folder) or {}).get("files")
    return manifest.problems(folder, files, checksum, progress) if files else []


def repair(folder: Path, found: list[str], progress: bool = True) -> Path:
    """Make the damaged conversion ``folder`` again (``found``: what is wrong), from its GGUF; a
    demo model is pulled again when its GGUF is gone. Raises ModelLoadError naming the folder
    when the GGUF it was converted from is gone or changed."""
    what = "; ".join(found)
    demo = next((m for m in DEMO_MODELS.values() if m.converted_dir.resolve() == folder.resolve()), None)
    if demo is not None:
        logger.warning("%s is damaged (%s); making %s again", folder, what, demo.alias)
        discard(folder)
        return ensure_demo_model(demo, progress)
    marker = read_marker(folder) or {}
    source = marker.get("source")
    if not (source and Path(source).is_file() and fingerprint(source) == marker.get("fingerprint")):
        raise ModelLoadError(f"{folder} is damaged ({what}) and the GGUF it was converted from "
                             f"({source}) is gone or changed: delete the folder, then load the model "
                             "from its GGUF again")
    logger.warning("%s is damaged (%s); converting it again from %s", folder, what, source)
    discard(folder)
    return convert_gguf(source, folder, progress)


def verify_model(spec: str | os.PathLike, progress: bool = True) -> tuple[Path, bool, str]:
    """Checksum the converted folder of ``spec`` and repair it if damaged: (folder, intact, what
    was found and done). Raises ModelLoadError when it cannot be found or repaired."""
    folder = _locate(spec, progress)
    if read_marker(folder) is None:
        return folder, True, "not an ssdecode conversion: nothing recorded to check"
    if add_manifest(folder):
        return folder, True, "converted before checksums were kept: recorded them now"
    found = check_folder(folder, checksum=True, progress=progress)
    if not found:
        return folder, True, ""
    repair(folder, found, progress)
    return folder, False, f"{'; '.join(found)}; made it again"


def _locate(spec: str | os.PathLike, progress: bool) -> Path:
    text = str(spec)
    if text in DEMO_MODELS:
        return ensure_demo_model(DEMO_MODELS[text], progress)
    path = Path(text).expanduser()
    if path.is_dir():
        if not ((path / "config.json").is_file() or read_marker(path)):  # a damaged conversion is checked
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
    weight format (``models/linear.py``). ``auto`` runs a model that came from a GGUF (a .gguf
    spec, or a demo model) as stored where it can (``gguf``: config and tokenizer from its
    conversion, tensors from the GGUF), else its fp32 conversion (``dequant``).
    """

    device = torch.device(device)
    dtype = _dtype(dtype, device)
    resolve_format(weights, device, dtype)  # refuse impossible options before any download

    def build(folder: Path) -> CausalLM:
        try:
            ModelConfig.from_hf(AutoConfig.from_pretrained(folder))
        except UnsupportedArchitecture as e:
            if weights not in ("auto", "dequant", "dense"):
                raise ModelLoadError(f"weight format {weights!r} needs the native runtime, and {folder} "
                                     f"is not a supported architecture ({e})") from e
            logger.warning("%s: %s; using the Transformers fallback (correct but slower)", folder, e)

            model = HFCausalLM(str(folder), device, dtype)
        else:
            gguf = _stored_gguf(spec, folder, weights, device, dtype)
            if gguf:  # auto: the GGUF's model as llama.cpp computes it
                fmt = weights if weights in GGUF_FORMATS else "gguf-a8"
            else:
                fmt = resolve_format(weights, device, dtype)
            model = LlamaModel.from_folder(folder, device, dtype, fmt, gguf)
        model.probe()
        add_manifest(folder)  # an old conversion that loads and computes gets its manifest now
        return model

    return _load_checked(resolve_model(spec), build, "model")


def _stored_gguf(spec, folder: Path, weights: str, device: torch.device, dtype: torch.dtype) -> Path | None:
    """The GGUF whose tensors the model runs as stored, or None to load the conversion's fp32.

    For ``gguf`` and ``gguf-a8``: the .gguf given (not the one a cached, maybe shared, conversion
    recorded), else the recorded one, which must be unchanged. For ``auto`` (run as ``gguf-a8``,
    llama.cpp's arithmetic): the same when the kernels run here and that GGUF is still there; a
    model without one quietly loads its conversion.
    """
    if weights not in ("auto", *GGUF_FORMATS) or (weights == "auto" and not runs_gguf(device, dtype)):
        return None
    if str(spec).lower().endswith(".gguf"):
        return Path(spec).expanduser()
    try:
        return gguf_source(folder)
    except ModelLoadError as e:
        if weights in GGUF_FORMATS:
            raise
        logger.info("%s runs its fp32 conversion: %s", folder, e)
        return None


def load_tokenizer(spec_or_dir: str | os.PathLike):
    """The Transformers tokenizer (with chat template, when the model has one) of ``spec_or_dir``."""

    return _load_checked(resolve_model(spec_or_dir), AutoTokenizer.from_pretrained, "tokenizer")


def _load_checked(folder: Path, load: Callable[[Path], T], what: str) -> T:
    """``load(folder)``. When that fails and ``folder`` is a conversion, checksum it; a damaged one
    is made again and loaded once more. Failures end as a ModelLoadError naming the folder."""
    try:
        try:
            return load(folder)
        except _LOAD_ERRORS as e:
            found = _damage(folder, e)
            if not found:
                raise
        return load(repair(folder, found))
    except _LOAD_ERRORS as e:
        if isinstance(e, ModelLoadError):
            raise
        raise ModelLoadError(f"could not load the {what} in {folder}: {e}") from e


def _damage(folder: Path, error: Exception) -> list[str]:
    """What is wrong with the conversion ``folder`` now that loading it failed with ``error``."""
    marker = read_marker(folder)
    if marker is None:
        return []
    logger.warning("loading %s failed (%s); checking its files", folder, error)
    if "files" not in marker:  # nothing recorded to compare; a conversion that fails is damaged
        return [f"it failed to load: {error}"]
    return check_folder(folder, checksum=True)
