"""Every environment variable ssdecode reads, in one place.

Read at call time (not import time) so tests and long-lived processes see the current value.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path


def cache_dir() -> Path:
    """Root for downloaded wheels, assembled GGUFs and converted models (``SSDECODE_CACHE``)."""
    return Path(os.environ.get("SSDECODE_CACHE") or "~/.cache/ssdecode").expanduser()


def cc() -> str | None:
    """The C compiler that builds the CPU kernels at first use (``CC``; unset: gcc, else cc)."""
    return os.environ.get("CC") or None


_AVX512 = ("avx512", "vnni")  # one level, as the GGUF kernels and the int4 kernel name it


def isa(names: Sequence[str]) -> str | None:
    """The instruction set ``SSDECODE_ISA`` forces on the CPU kernels, in a kernel's own ``names``; None
    when unset (each kernel then runs the widest its CPU has). For tests and comparisons: AVX2
    numbers on an AVX-512 machine, AVX-512 without the AMX tile unit.

    Values: ``scalar``, ``avx2``, ``avx512``, ``amx``, and ``vnni``, which is ``avx512``'s level: the
    GGUF kernels (kernels/ggml.py) call that level avx512 (with VNNI where the CPU has it), the
    int4 kernel (kernels/int4.py) vnni (it needs VNNI), and each reads the other's name as its own.
    A kernel raises ValueError for any other value, and its products raise RuntimeError where the
    CPU lacks the instruction set."""
    value = os.environ.get("SSDECODE_ISA") or None
    if value in _AVX512:
        return next((n for n in names if n in _AVX512), value)
    return value


def fused_layers() -> bool:
    """Whether CPU decode and verification run a model's layers in one native call
    (kernels/fused_layers.py). A debugging and comparison switch: ``SSDECODE_FUSED_LAYERS=0`` keeps
    PyTorch's op-by-op path, which computes the same up to fp32 rounding."""
    return os.environ.get("SSDECODE_FUSED_LAYERS", "1") != "0"


def interleaved() -> bool:
    """Whether gguf-a8's Q4_K and Q6_K weights are packed interleaved where the CPU runs that kernel
    (kernels/ggml_q8il.h). A debugging and comparison switch: ``SSDECODE_INTERLEAVED=0`` keeps the
    plain layout and its kernels."""
    return os.environ.get("SSDECODE_INTERLEAVED", "1") != "0"


def torchrun_rank() -> int | None:
    """This process's rank when torchrun started it in a world of two (``RANK``, ``WORLD_SIZE``):
    0 the target, 1 the SSD draft worker (transport/dist.py, decoding/ssd/worker_main.py); else None."""
    if os.environ.get("WORLD_SIZE") != "2" or "RANK" not in os.environ:
        return None
    return int(os.environ["RANK"])


def local_rank() -> int:
    """The GPU index torchrun gave this process on its host (``LOCAL_RANK``; 0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", 0))


def omp_wait_policy() -> str | None:
    """OpenMP's idle-thread policy (``OMP_WAIT_POLICY``; the CLI sets ACTIVE for generate and
    bench unless the user chose): the benchmark gives llama.cpp the same."""
    return os.environ.get("OMP_WAIT_POLICY") or None


def api_key() -> str | None:
    """The key the serving benchmark sends to a server started with ``--api-key``
    (``SSDECODE_API_KEY``)."""
    return os.environ.get("SSDECODE_API_KEY") or None
