"""What a converted folder should contain: the size and sha256 of each of its files.

Why: a converted folder is a cache entry nobody looks inside, so damage to it (a truncated copy, a
flipped byte) must be found by ssdecode, not by a user puzzling over '!!!!!!!!'. The manifest is
recorded at conversion; sizes cost one ``stat`` per file, cheap enough for every load, while the
checksum reads every byte (about a second per GB), so it runs only when asked or after a failure.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from tqdm.auto import tqdm

BLOCK = 8 << 20  # bytes hashed per read


def sha256_file(path: Path, bar=None) -> str:
    """Hex sha256 of ``path``, streamed; ``bar``: a tqdm bar to advance by the bytes read."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(BLOCK):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    return digest.hexdigest()


def record(folder: Path, skip: str, known: dict[str, str] | None = None) -> dict[str, dict]:
    """``{name: {"size", "sha256"}}`` of each file in ``folder`` but ``skip``; ``known`` gives
    checksums already computed (the weights, hashed while they were written)."""
    known = known or {}
    return {f.name: {"size": f.stat().st_size, "sha256": known.get(f.name) or sha256_file(f)}
            for f in sorted(folder.iterdir()) if f.is_file() and f.name != skip}


def problems(folder: Path, files: dict[str, dict], checksum: bool = False,
             progress: bool = False) -> list[str]:
    """What is wrong with ``folder`` against its manifest ``files`` (empty: nothing found).

    Sizes always, checksums only when ``checksum``. Sizes catch truncation and missing files but
    not a changed byte: in fp32 weights that mostly gives finite, slightly wrong numbers that no
    load or forward notices, which only the checksum finds.
    """
    found = []
    with _bar(folder, files, checksum and progress) as bar:
        for name, want in files.items():
            path = folder / name
            if not path.is_file():
                found.append(f"{name} is missing")
            elif path.stat().st_size != want["size"]:
                found.append(f"{name} has {path.stat().st_size} bytes, not {want['size']} (truncated?)")
            elif checksum and sha256_file(path, bar) != want["sha256"]:
                found.append(f"{name} does not match its sha256 (corrupt)")
    return found


def _bar(folder: Path, files: dict[str, dict], show: bool):
    """A checksum progress bar, or a no-op. No tqdm object at all unless shown: tqdm's first bar
    creates a multiprocessing lock, and a draft worker process that is later SIGKILLed leaks it
    (the resource tracker then warns at exit)."""
    if not show:
        return contextlib.nullcontext()

    return tqdm(total=sum(w["size"] for w in files.values()), unit="B", unit_scale=True,
                desc=f"checking {folder.name}")

