"""Every environment variable ssdecode reads, in one place.

Read at call time (not import time) so tests and long-lived processes see the current value.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """Root for downloaded wheels, assembled GGUFs and converted models (``SSDECODE_CACHE``)."""
    return Path(os.environ.get("SSDECODE_CACHE") or "~/.cache/ssdecode").expanduser()


def fused_layers() -> bool:
    """Whether CPU decode and verification run a model's layers in one native call
    (kernels/layers.py); ``SSDECODE_FUSED_LAYERS=0`` keeps PyTorch's op-by-op path (comparisons)."""
    return os.environ.get("SSDECODE_FUSED_LAYERS", "1") != "0"


def interleaved() -> bool:
    """Whether gguf-a8's Q4_K and Q6_K weights are packed interleaved where the CPU runs that kernel
    (kernels/ggml_q8il.h); ``SSDECODE_INTERLEAVED=0`` keeps the plain layout (comparisons)."""
    return os.environ.get("SSDECODE_INTERLEAVED", "1") != "0"
