"""Timings for the GPU probe: device-synchronized wall clocks and the model forwards it times."""
from __future__ import annotations

import gc
import statistics
import time

import torch

from ssdecode.runtime.runner import ModelRunner


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def time_forward(model, n_new: int, context: int, reps: int, graphs: bool = True) -> float:
    """Median seconds of one target forward of ``n_new`` tokens after ``context`` cached ones
    (n_new = 1: a decode step; K + 1: a verification), through a model runner: static shapes
    (CUDA graphs on CUDA) or, ``graphs=False``, eager addressing."""
    dev = str(model.device)
    runner = ModelRunner(model, 1, context + n_new, "static" if graphs else "eager")
    ids = torch.randint(0, model.vocab_size, (1, context + n_new), device=model.device)
    pos = torch.arange(context + n_new, device=model.device)[None]
    runner.forward(ids[:, :context], pos[:, :context], [0], last_only=True)
    times = []
    for _ in range(reps + 2):  # the first two: capture and warm-up
        runner.cache.truncate(0, context)
        sync(dev)
        t0 = time.perf_counter()
        runner.forward(ids[:, context:], pos[:, context:], [0])
        sync(dev)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[2:])


def timed(device: str, fn):
    sync(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    return out, time.perf_counter() - t0
