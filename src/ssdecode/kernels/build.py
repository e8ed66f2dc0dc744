"""Compile this package's C code into shared libraries at first use, cached by content.

At run time rather than at install because ssdecode installs as pure Python (no build step, no
wheel per platform) and the kernels need only a C compiler, which the CPU machines have. The
cache key covers the sources and headers, the flags and the compiler, so an edited kernel or a new
compiler gets a new library; each build is written aside and renamed into place, so concurrent
processes only ever load a complete file.

A library links several units (``LIBRARIES``): each .c file compiles on its own, and what units
share is in headers of static inline helpers and declarations.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ssdecode import envs

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
# gnu11, not c11: ISO modes turn off FMA contraction, which the kernels rely on.
FLAGS = ("-O3", "-std=gnu11", "-ffp-contract=fast", "-fPIC", "-shared", "-fopenmp")
# The units of each library (the .c files next to this module), by the name its loader asks for.
LIBRARIES = {
    "ggml": ("ggml_cpu.c", "ggml_scalar.c", "ggml_avx2.c", "ggml_avx512.c", "ggml_amx.c", "ggml_q8.c", "ggml_q8il.c",
             "ggml_q8il_pack.c", "amx.c"),
    "int4": ("int4_cpu.c", "int4_amx.c", "amx.c"),
    "attention": ("attention_cpu.c",),
    "layers": ("layer_cpu.c", "attention_cpu.c"),
}


def loads(lib, what: str) -> bool:
    """Whether ``lib()`` (a cached loader of a ``shared_library``) compiles and loads here; the
    reason is logged when not."""
    try:
        lib()
    except (OSError, RuntimeError) as e:
        log.warning("%s unavailable: %s", what, e)
        return False
    return True


def shared_library(name: str) -> ctypes.CDLL:
    """Load library ``name`` (of ``LIBRARIES``), compiling its units into one if needed."""
    units = LIBRARIES[name]
    cc = envs.cc()
    cc = shutil.which(cc) if cc else shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise RuntimeError("ssdecode's CPU kernels are compiled at first use and no C compiler was "
                           "found: install gcc (with OpenMP) or set CC")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True).stdout
    digest = hashlib.sha256("\0".join([cc, version, *FLAGS, *units]).encode())
    for path in sorted(HERE.glob("*.[ch]")):  # the units and the headers they include
        digest.update(path.read_bytes())
    out = envs.cache_dir() / "kernels" / f"{name}-{digest.hexdigest()[:16]}.so"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
        os.close(fd)
        log.info("compiling %s (%s) with %s into %s", name, ", ".join(units), cc, out)
        done = subprocess.run([cc, *FLAGS, "-o", tmp, *(str(HERE / unit) for unit in units)], capture_output=True,
                              text=True)
        if done.returncode:
            os.unlink(tmp)
            raise RuntimeError(f"compiling {name} failed:\n{done.stderr}")
        os.replace(tmp, out)
    return ctypes.CDLL(str(out))
