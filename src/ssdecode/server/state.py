"""What the engine thread publishes for the event loop (/health and /metrics read it)."""
from __future__ import annotations

from dataclasses import dataclass, field

from ssdecode.engine.metrics import RequestMetrics


@dataclass(frozen=True)
class EngineState:
    """What the engine thread publishes after each iteration (read by /health and /metrics)."""

    running: int = 0
    waiting: int = 0  # in the core's waiting queue
    free_slots: int = 0
    totals: RequestMetrics = field(default_factory=RequestMetrics)  # the core's run metrics (copy)
    failed: bool = False
    degraded: str | None = None  # why the strategy runs without its draft worker (SSD fallback)
    worker_failures: int = 0  # SSD draft worker failures so far
    worker_restarts: int = 0  # SSD draft workers brought up again after a failure
