"""Measure this machine for a target/draft pair: the forward latencies the planner predicts from.

A ``Calibration`` holds the target's forward time by query length (1 for AR, K+1 for a K-token
verification), the draft's by width (1 for drafting, wider for SSD's tree steps) and how much
slower the target runs while the draft computes beside it (on a CPU both share the cores and the
memory bandwidth; on one GPU they share HBM; on two devices nothing). Forwards are timed after
CONTEXT cached tokens, and a few again after LONG_CONTEXT: a forward's time grows linearly with
the keys it attends over, so ``target``/``draft`` take a context and move along that line. It is cached per machine,
models, weight formats and thread count under ``<cache>/profiles`` with its date, so ``--mode
auto`` measures once; ``ssdecode plan --calibrate`` measures again.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ssdecode import envs
from ssdecode.config.settings import AUTO_K_MAX
from ssdecode.models.base import CausalLM
from ssdecode.runtime.runner import ModelRunner

log = logging.getLogger(__name__)

CONTEXT = 128  # cached tokens before each timed forward: a short prompt plus some output
LONG_CONTEXT = 384  # ... and again after this many, for the context term (its prefill costs seconds)
LONG_WIDTHS = (1, 9)  # target widths timed at LONG_CONTEXT (the slope is linear in width); the draft: 1 row
DRAFT_WIDTHS = (1, 4, 8, 16)  # drafting, and SSD tree steps by fan-out budget
ATTEMPTS = 3  # calibrations tried before a disturbed one is used uncached
SLACK = 0.8  # a wider forward may be this much faster than a narrower one (timer noise), no more
VERSION = 2  # 2: the LONG_CONTEXT tables


@dataclass
class Calibration:
    key: str  # what was measured: machine, models, formats, threads (see ``profile_key``)
    target_s: dict[int, float]  # query tokens -> seconds of one target forward
    draft_s: dict[int, float]  # query rows of one token -> seconds of one draft forward
    contention: float  # target forward time while the draft runs beside it / alone (>= 1)
    measured_at: str = ""
    info: dict = field(default_factory=dict)
    target_long_s: dict[int, float] = field(default_factory=dict)  # as target_s, after LONG_CONTEXT
    draft_long_s: dict[int, float] = field(default_factory=dict)  # as draft_s, after LONG_CONTEXT

    def target(self, tokens: int, context: float | None = None) -> float:
        """Seconds of a ``tokens``-token target forward (linear between measured widths) after
        ``context`` cached tokens (default CONTEXT, as measured)."""
        return _at_context(self.target_s, self.target_long_s, tokens, context)

    def draft(self, width: int, context: float | None = None) -> float:
        """Seconds of a draft forward of ``width`` rows, each after ``context`` cached tokens."""
        return _at_context(self.draft_s, self.draft_long_s, width, context)

    def to_json(self) -> dict:
        return {"version": VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict) -> "Calibration":
        if data.get("version") != VERSION:
            raise ValueError(f"calibration version {data.get('version')} is not {VERSION}")
        return cls(data["key"], {int(k): v for k, v in data["target_s"].items()},
                   {int(k): v for k, v in data["draft_s"].items()}, data["contention"],
                   data.get("measured_at", ""), data.get("info", {}),
                   {int(k): v for k, v in data["target_long_s"].items()},
                   {int(k): v for k, v in data["draft_long_s"].items()})


def _at_context(short: dict[int, float], long: dict[int, float], x: int, context: float | None) -> float:
    """Linear in context through the two measurements: the time at CONTEXT plus (context -
    CONTEXT) x the seconds per cached token, itself interpolated in width (proportional past the
    widest timed at LONG_CONTEXT: every query token attends over every key). The slope is kept
    >= 0: on a shared machine a noisy long measurement must not make context free or faster."""
    base = _interpolate(short, x)
    if context is None or not long:
        return base
    slopes = {w: max(0.0, t - _interpolate(short, w)) / (LONG_CONTEXT - CONTEXT) for w, t in long.items()}
    return base + (context - CONTEXT) * _interpolate(slopes, x)


def _interpolate(table: dict[int, float], x: int) -> float:
    xs = sorted(table)
    if x <= xs[0]:
        return table[xs[0]]
    for lo, hi in zip(xs, xs[1:]):
        if x <= hi:
            return table[lo] + (table[hi] - table[lo]) * (x - lo) / (hi - lo)
    return table[xs[-1]] * x / xs[-1]  # past the widest: proportional (compute-bound)


def profile_key(target: CausalLM, draft: CausalLM) -> str:
    """What a calibration depends on: CPU or GPU model, core count, threads, and each model's name,
    weight format, dtype and device (``draft`` may be a stand-in with just those attributes, to
    find a pair's calibration before loading it)."""
    parts = [platform.machine(), _processor(), str(os.cpu_count()), str(torch.get_num_threads())]
    for m in (target, draft):
        parts += [str(getattr(m, "name", type(m).__name__)), str(getattr(m, "weight_format", "")), str(m.dtype),
                  str(m.device)]
    if torch.cuda.is_available():
        parts.append(torch.cuda.get_device_name())
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]


def _processor() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def forward_seconds(model: CausalLM, tokens: int, repeats: int, rows: int = 1) -> float:
    """Fastest seconds of a forward of ``rows`` rows x ``tokens`` tokens after CONTEXT cached
    tokens per row."""
    return widths_seconds(model, [tokens], repeats, rows)[tokens]


def widths_seconds(model: CausalLM, widths: list[int], repeats: int, rows: int = 1,
                   row_widths: bool = False, context: int = CONTEXT) -> dict[int, float]:
    """For each width: the fastest of ``repeats`` forwards (after a warm-up) of ``rows`` rows x
    width tokens, or (``row_widths``) of width rows x 1 token, after ``context`` cached tokens per
    row. One prefill serves every width (each forward is rolled back). The fastest, not the
    median: on a shared machine other processes only ever add time."""
    slots = list(range(max(widths) if row_widths else rows))
    runner = ModelRunner(model, len(slots), context + (1 if row_widths else max(widths)))
    gen = torch.Generator().manual_seed(0)
    span = min(1000, model.vocab_size)
    prompt = torch.randint(0, span, (len(slots), context), generator=gen)
    runner.forward(prompt.to(model.device), torch.arange(context).repeat(len(slots), 1).to(model.device),
                   slots, last_only=True)
    out = {}
    for w in widths:
        used, n = (slots[:w], 1) if row_widths else (slots, w)
        times = []
        for i in range(repeats + 1):
            ids = torch.randint(0, span, (len(used), n), generator=gen).to(model.device)
            _sync(model)
            t0 = time.perf_counter()
            runner.forward(ids, (context + torch.arange(n)).repeat(len(used), 1).to(model.device), used)
            _sync(model)
            if i:  # the first is a warm-up
                times.append(time.perf_counter() - t0)
            for s in used:
                runner.cache.truncate(s, context)
        out[w] = min(times)
    return out


def _sync(model: CausalLM) -> None:
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)


def calibrate(target: CausalLM, draft: CausalLM, repeats: int = 3, progress: bool = False) -> Calibration:
    """Measure the pair (a few seconds on the demo pair): target widths 1..AUTO_K_MAX+1, draft widths
    DRAFT_WIDTHS, the target's K=4 verification while the draft decodes beside it, then target
    widths LONG_WIDTHS and one draft row after LONG_CONTEXT."""

    bar = tqdm(total=5, desc="calibrating", unit="part", disable=not progress)
    target_s = widths_seconds(target, list(range(1, AUTO_K_MAX + 2)), repeats)
    bar.update()
    draft_s = widths_seconds(draft, list(DRAFT_WIDTHS), repeats, row_widths=True)
    bar.update()
    busy = _beside(draft, lambda: forward_seconds(target, 5, repeats))
    bar.update()
    fits = min(target.max_context, draft.max_context) > LONG_CONTEXT + max(LONG_WIDTHS)  # else: no context term
    target_long = widths_seconds(target, list(LONG_WIDTHS), repeats, context=LONG_CONTEXT) if fits else {}
    bar.update()
    draft_long = widths_seconds(draft, [1], repeats, row_widths=True, context=LONG_CONTEXT) if fits else {}
    bar.update()
    bar.close()
    contention = max(1.0, busy / target_s[5])
    info = {"threads": torch.get_num_threads(), "target": getattr(target, "name", ""),
            "target_weights": getattr(target, "weight_format", ""), "draft": getattr(draft, "name", ""),
            "draft_weights": getattr(draft, "weight_format", ""), "cpu": _processor()}
    cal = Calibration(profile_key(target, draft), target_s, draft_s, round(contention, 3),
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), info, target_long, draft_long)
    log.info("calibrated %s: target %s (%s after %d), draft %s (%s), contention %.2f", cal.key, target_s,
             target_long, LONG_CONTEXT, draft_s, draft_long, contention)
    return cal


def _beside(draft: CausalLM, measure) -> float:
    """``measure()`` while the draft decodes one token after another in a second thread, as SSD's
    worker would (its own cores on a CPU: one torch thread)."""
    stop = threading.Event()

    def loop() -> None:
        runner = ModelRunner(draft, 1, 2)
        ids = torch.zeros((1, 1), dtype=torch.long, device=draft.device)
        while not stop.is_set():
            runner.forward(ids, ids, [0])
            runner.cache.truncate(0, 0)

    worker = threading.Thread(target=loop, daemon=True)
    worker.start()
    try:
        return measure()
    finally:
        stop.set()
        worker.join()


def _path(key: str) -> Path:
    return envs.cache_dir() / "profiles" / f"{key}.json"


def cached(target: CausalLM, draft) -> Calibration | None:
    """The cached calibration of the pair, None when there is none (or it does not parse)."""
    path = _path(profile_key(target, draft))
    if path.is_file():
        try:
            return Calibration.from_json(json.loads(path.read_text()))
        except (ValueError, KeyError, TypeError) as e:
            log.warning("calibration %s is unreadable (%s); measuring again", path, e)
    return None


def implausible(cal: Calibration) -> str | None:
    """Why ``cal`` cannot describe this machine at rest, or None. A forward takes no less time for
    more tokens or rows (beyond SLACK and a millisecond of timer noise): a table that breaks this
    was measured while other work held the cores (stalls of up to seconds), and ``--mode auto``
    would choose from noise."""
    for name, table in (("target", cal.target_s), ("draft", cal.draft_s)):
        widths = sorted(table)
        for i, hi in enumerate(widths):
            lo = max(widths[:i], key=table.get, default=hi)  # the slowest narrower forward
            if table[hi] < SLACK * table[lo] - 1e-3:
                return f"a {name} forward of {hi} took {table[hi]:.3f} s, of {lo} {table[lo]:.3f} s"
    return None


def load_or_calibrate(target: CausalLM, draft: CausalLM, fresh: bool = False, progress: bool = False) -> Calibration:
    """The cached calibration of this pair on this machine, measuring it when missing (or
    ``fresh``). A cache file that does not parse, or that is ``implausible``, is measured again;
    a measurement that is implausible ATTEMPTS times is used for this run but not cached."""
    found = None if fresh else cached(target, draft)
    why = found and implausible(found)
    if found is not None and not why:
        return found
    if why:
        log.warning("the cached calibration of %s looks disturbed (%s): measuring again", found.key, why)
    for attempt in range(ATTEMPTS):
        cal = calibrate(target, draft, progress=progress)
        why = implausible(cal)
        if not why:
            break
        log.warning("calibration %d of %d looks disturbed by other work on this machine (%s)%s", attempt + 1,
                    ATTEMPTS, why, "" if attempt + 1 == ATTEMPTS else ": measuring again")
    else:
        log.warning("using the last calibration for this run only (not cached): choices may be poor")
        return cal
    path = _path(cal.key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(cal.to_json(), indent=1))
    os.replace(tmp, path)
    return cal
