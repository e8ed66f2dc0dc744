"""GGUF file -> Hugging Face folder (config, tokenizer, fp32 ``model.safetensors``).

Why convert instead of running GGUF directly: the native runtime and the Transformers fallback both
read an HF folder, so one conversion gives every GGUF the same loading path as a local folder or a
hub id. The result is cached under a content fingerprint and published with an atomic rename, so a
killed conversion never leaves a half folder and the second load of a GGUF costs seconds. The
marker records the source GGUF and a manifest of the folder's files (``manifest.py``), so a folder
damaged later can be noticed and converted again.

Weights are dequantized with the ``gguf`` package and streamed into the safetensors file chunk by
chunk (the header is computable from tensor shapes alone), so peak memory stays near one chunk
rather than the whole fp32 model.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import gguf
import numpy as np
from gguf.quants import dequantize
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoTokenizer, GenerationConfig
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

from ssdecode import envs
from ssdecode.models import manifest
from ssdecode.models.errors import ModelLoadError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MARKER = "ssdecode-gguf.json"  # written last inside the folder: proves a complete conversion
WEIGHTS = "model.safetensors"
SUPPORTED_ARCHS = ("llama", "mistral", "qwen2", "qwen3")
_PERMUTED_ARCHS = ("llama", "mistral")  # llama.cpp's converter permutes q/k rows only for these
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_norm": "post_attention_layernorm",
}
_BLOCK_RE = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")
_ROPE_FREQS = "rope_freqs.weight"  # Llama-3 rope scaling, folded back into the config instead
_CHUNK_ELEMS = 1 << 24  # dequantize ~64 MiB of fp32 at a time
_SAMPLE = 1 << 20


def fingerprint(path: str | os.PathLike) -> str:
    """16 hex chars identifying a file's content: size plus 17 evenly spaced 1 MiB samples.

    Cheap (reads ~17 MiB whatever the size) yet content-based, so a copied or moved GGUF still
    hits the cache and a re-downloaded different file of the same name does not.
    """
    path = Path(path)
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for i in range(17):
            f.seek(max(0, size - _SAMPLE) * i // 16)
            digest.update(f.read(_SAMPLE))
    return digest.hexdigest()[:16]


def read_marker(folder: Path) -> dict | None:
    """The marker of a finished conversion in ``folder``: format, fingerprint, source and (since
    ssdecode kept them) ``files``, the manifest; None when ``folder`` is not one."""
    try:
        marker = json.loads((Path(folder) / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) and marker.get("format") == FORMAT_VERSION else None


def is_converted(out_dir: Path, fp: str | None = None) -> bool:
    """True when ``out_dir`` holds a finished conversion (of the file with fingerprint ``fp``)."""
    marker = read_marker(out_dir)
    return marker is not None and fp in (None, marker.get("fingerprint"))


def add_manifest(folder: Path) -> bool:
    """Record the manifest of a conversion made before ssdecode kept one (hashing it once);
    False when it has one. The marker is replaced atomically, so readers never see half of it."""
    marker = read_marker(folder)
    if marker is None or "files" in marker:
        return False
    logger.warning("%s predates recorded checksums; recording them (once)", folder)
    marker["files"] = manifest.record(folder, MARKER)
    tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-marker")
    try:
        tmp.write_text(json.dumps(marker, indent=1))
        os.replace(tmp, folder / MARKER)
    except OSError as e:  # a read-only cache still loads, just unchecked
        logger.warning("could not record the checksums of %s: %s", folder, e)
        tmp.unlink(missing_ok=True)
        return False
    return True


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 progress: bool = True) -> Path:
    """Convert ``gguf_path`` into an HF folder and return it; a finished conversion is reused.

    ``out_dir`` defaults to ``<cache>/converted/<fingerprint>``. An existing ``out_dir`` that is not
    an ssdecode conversion is never overwritten.
    """
    path = Path(gguf_path).expanduser().resolve()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file {path} does not exist")
    fp = fingerprint(path)
    out = Path(out_dir).expanduser() if out_dir else _cached(fp) or envs.cache_dir() / "converted" / fp
    if is_converted(out, fp):
        logger.info("using cached conversion %s of %s", out, path)
        return out
    if out.exists() and not (out / MARKER).exists():
        raise ModelLoadError(f"{out} exists and is not an ssdecode conversion; refusing to overwrite")
    reader = _open_reader(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(out.parent, f".{out.name}.tmp-*")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-{os.getpid()}-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the published folder should read like any other
    try:
        logger.info("converting %s -> %s", path, out)
        config = _write_config_and_tokenizer(path, reader, tmp)
        sha = _write_weights(path, reader, config, tmp / WEIGHTS, progress)
        marker = {"format": FORMAT_VERSION, "fingerprint": fp, "source": str(path),
                  "files": manifest.record(tmp, MARKER, {WEIGHTS: sha})}
        (tmp / MARKER).write_text(json.dumps(marker, indent=1))
        _publish(tmp, out, fp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _cached(fp: str) -> Path | None:
    """Any finished conversion of this content in the cache, also under another name (the demo's)."""
    return next((folder for folder in cached_conversions() if is_converted(folder, fp)), None)


def cached_conversions() -> list[Path]:
    """Every finished conversion in the cache (not the temp folders of running ones)."""
    return [m.parent for m in sorted((envs.cache_dir() / "converted").glob(f"*/{MARKER}"))
            if not m.parent.name.startswith(".") and is_converted(m.parent)]


def _open_reader(path: Path):
    try:
        reader = gguf.GGUFReader(path)
        arch = reader.fields["general.architecture"].contents()
    except Exception as e:  # the reader fails with ValueError/KeyError/IndexError on bad files
        raise ModelLoadError(f"{path} is not a readable GGUF file (corrupt or truncated?): {e}") from e
    size = path.stat().st_size
    for t in reader.tensors:
        if t.data_offset + t.n_bytes > size:
            raise ModelLoadError(f"{path} is truncated: tensor {t.name} ends past the end of file")
    if arch not in SUPPORTED_ARCHS:
        raise ModelLoadError(
            f"{path}: GGUF architecture {arch!r} cannot be converted (supported: {SUPPORTED_ARCHS})"
        )
    return reader


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _write_config_and_tokenizer(path: Path, reader, out: Path):
    """config.json, generation_config.json and tokenizer files; returns the HF config."""

    arch = _field(reader, "general.architecture")
    config = AutoConfig.from_pretrained(str(path.parent), gguf_file=path.name)
    names = {t.name for t in reader.tensors}
    # Transformers' GGUF mapping misses these; our weights and the runtime depend on them.
    config.tie_word_embeddings = "output.weight" not in names
    config.rms_norm_eps = float(f"{config.rms_norm_eps:.6g}")  # GGUF keeps f32: 1e-6 -> 9.99e-07
    head_dim = _field(reader, f"{arch}.attention.key_length")
    if head_dim:
        config.head_dim = int(head_dim)
    if _ROPE_FREQS in names:
        tensor = next(t for t in reader.tensors if t.name == _ROPE_FREQS)
        config.rope_parameters = _llama3_rope(np.asarray(tensor.data, np.float32), config)
    config.architectures = [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config.model_type]]
    config.save_pretrained(out)
    GenerationConfig.from_model_config(config).save_pretrained(out)
    if _field(reader, "tokenizer.ggml.model") is None:
        logger.warning("%s has no tokenizer metadata; the converted folder has no tokenizer", path)
        return config
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    template = _field(reader, "tokenizer.chat_template")
    if template and not tokenizer.chat_template:
        tokenizer.chat_template = template
    tokenizer.save_pretrained(out)
    return config


def _llama3_rope(freqs: np.ndarray, config) -> dict:
    """Recover HF ``llama3`` rope parameters from llama.cpp's precomputed ``rope_freqs`` factors.

    llama.cpp stores per-frequency divisors instead of the four scaling numbers; the factor is
    their maximum, and we check the whole vector against Llama 3.x's low=1, high=4, original=8192.
    """
    params = dict(config.rope_parameters or {})
    theta = float(params.get("rope_theta", 10000.0))
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    factor, low, high, original = float(freqs.max()), 1.0, 4.0, 8192
    inv_freq = theta ** -(np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    smooth = np.clip((original * inv_freq / (2 * np.pi) - low) / (high - low), 0.0, 1.0)
    expected = 1.0 / ((1.0 - smooth) / factor + smooth)
    if freqs.shape != expected.shape or not np.allclose(freqs, expected, rtol=1e-4):
        raise ModelLoadError("rope_freqs in the GGUF do not match Llama-3 rope scaling; unsupported")
    params.update(rope_type="llama3", factor=factor, low_freq_factor=low, high_freq_factor=high,
                  original_max_position_embeddings=original)
    return params


def _hf_name(name: str) -> str | None:
    if name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[name]
    m = _BLOCK_RE.fullmatch(name)
    if m and m.group(2) in _BLOCK_NAMES:
        return f"model.layers.{m.group(1)}.{_BLOCK_NAMES[m.group(2)]}.{m.group(3)}"
    return None


def hf_tensors(path: Path, reader, num_heads: int, num_kv_heads: int):
    """(tensor, HF name, shape, heads to un-permute or None) for every weight of a GGUF, in file
    order: what the conversion writes and what the as-stored loader (gguf_weights.py) reads."""
    arch = _field(reader, "general.architecture")
    heads = {"attn_q": num_heads, "attn_k": num_kv_heads}
    for t in reader.tensors:
        if t.name == _ROPE_FREQS:
            continue
        name = _hf_name(t.name)
        if name is None:
            raise ModelLoadError(f"{path}: tensor {t.name} has no Hugging Face name for {arch}")
        m = _BLOCK_RE.fullmatch(t.name)
        permute = heads.get(m.group(2)) if m and arch in _PERMUTED_ARCHS else None
        yield t, name, tuple(int(d) for d in reversed(t.shape.tolist())), permute  # GGUF: fastest dim first


def _write_weights(path: Path, reader, config, file: Path, progress: bool) -> str:
    """Stream every tensor, dequantized to fp32 under its HF name, into one safetensors file;
    return the file's sha256 (hashed as written, so the manifest costs no second read)."""

    plan, header, offset = [], {"__metadata__": {"format": "pt"}}, 0
    for t, name, shape, permute in hf_tensors(path, reader, config.num_attention_heads, config.num_key_value_heads):
        shape = list(shape)
        nbytes = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": shape, "data_offsets": [offset, offset + nbytes]}
        plan.append((t, shape, permute))
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # safetensors pads the header to 8-byte alignment
    head = len(blob).to_bytes(8, "little") + blob
    digest = hashlib.sha256(head)
    with open(file, "wb") as f:
        f.write(head)
        for t, shape, permute in tqdm(plan, desc=f"converting {path.name}", unit="tensor",
                                      disable=not progress):
            for chunk in _fp32_chunks(t, shape, permute):
                data = np.ascontiguousarray(chunk, dtype="<f4").data
                f.write(data)
                digest.update(data)
        if f.tell() != len(head) + offset:
            raise ModelLoadError(f"{path}: wrote {f.tell()} bytes, header says {len(head) + offset}")
    return digest.hexdigest()


def _fp32_chunks(t, shape: list[int], permute_heads: int | None) -> Iterator[np.ndarray]:
    """Dequantize ``t`` in row chunks (row-major order), or whole when its rows must be unpermuted."""

    if permute_heads:
        yield _unpermute(dequantize(t.data, t.tensor_type).reshape(shape), permute_heads)
        return
    rows = t.data.reshape(-1, t.data.shape[-1]) if t.data.ndim > 1 else t.data[None]
    step = max(1, _CHUNK_ELEMS // max(1, shape[-1]))
    for start in range(0, rows.shape[0], step):
        yield dequantize(rows[start:start + step], t.tensor_type)


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Invert llama.cpp's q/k permute (rotary halves interleaved back to HF's split-half layout)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _publish(tmp: Path, out: Path, fp: str) -> None:
    """Atomically move the finished ``tmp`` to ``out``, replacing an older ssdecode conversion."""
    if is_converted(out, fp):  # a concurrent conversion of the same file finished first
        return
    discard(out)
    try:
        os.rename(tmp, out)
    except OSError:
        if not is_converted(out, fp):  # lost a race only if the winner produced the same thing
            raise


def discard(out: Path) -> None:
    """Remove the folder ``out`` if it exists: renamed away first, so no reader sees it half deleted."""
    if out.exists():
        old = out.with_name(f".{out.name}.tmp-{os.getpid()}-old")
        os.rename(out, old)
        shutil.rmtree(old, ignore_errors=True)


def sweep_stale(directory: Path, pattern: str) -> None:
    """Remove the ``pattern`` entries of ``directory`` named ``...tmp-<pid>[-...]`` whose process
    is dead: what killed conversions and downloads left behind. A live process keeps its own."""
    for tmp in directory.glob(pattern):
        try:
            pid = int(tmp.name.split(".tmp-")[1].split("-")[0])
            os.kill(pid, 0)
        except (ValueError, ProcessLookupError):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process
