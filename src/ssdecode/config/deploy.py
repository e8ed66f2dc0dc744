"""Where and how the SSD draft worker runs: the deployment settings, kept apart from the
algorithm's (config/ssd.py). The same speculation settings can run with the worker in
a thread, in a spawned process, or on another device or host under torchrun."""
from __future__ import annotations

from dataclasses import dataclass, fields

from ssdecode.config.formats import FORMATS
from ssdecode.params import InvalidParams

TRANSPORTS = ("thread", "process")
LAUNCHES = ("auto", "spawn", "external")


@dataclass(frozen=True)
class DraftDeployment:
    transport: str = "thread"  # draft worker: 'thread' (in process) | 'process' (torch.distributed)
    # process transport: 'spawn' a local worker, 'external' = join a worker started under torchrun
    # (rank 1, ``python -m ssdecode.decoding.ssd.worker_main``), 'auto' = external under torchrun
    launch: str = "auto"
    draft_device: str | None = None  # process transport: device of the draft (default: target's)
    draft_threads: int | None = None  # process transport: torch CPU threads of the worker process
    draft_dtype: str | None = None  # process transport: dtype name for loading ("float32", ...)
    draft_weights: str = "auto"  # process transport: matmul weight format (models/linear.py)
    backend: str | None = None  # torch.distributed backend (default: nccl for cuda, else gloo)
    timeout_s: float = 600.0  # process transport: rendezvous / collective timeout
    # seconds the target waits for any reply after Setup before it drops the worker and goes on
    # without it (SD on an in-process draft, else AR); a dead worker is noticed at once. None:
    # automatic, a few seconds plus a multiple of the measured reply times (decoding/ssd/supervisor.py)
    round_timeout_s: float | None = None
    max_restarts: int = 5  # failed workers replaced in the background, in a row, before giving up

    def __post_init__(self):
        for name, value, allowed in (("transport", self.transport, TRANSPORTS), ("launch", self.launch, LAUNCHES),
                                     ("draft_weights", self.draft_weights, FORMATS)):
            if value not in allowed:
                raise InvalidParams(f"{name} must be one of {allowed}, got {value!r}")
        if self.draft_threads is not None and self.draft_threads < 1:
            raise InvalidParams(f"draft_threads must be >= 1, got {self.draft_threads}")
        if not self.timeout_s > 0:
            raise InvalidParams(f"timeout_s must be > 0, got {self.timeout_s}")
        if self.round_timeout_s is not None and not self.round_timeout_s > 0:
            raise InvalidParams(f"round_timeout_s must be > 0 (or None: automatic), got {self.round_timeout_s}")
        if not (isinstance(self.max_restarts, int) and self.max_restarts >= 0):
            raise InvalidParams(f"max_restarts must be an integer >= 0, got {self.max_restarts!r}")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}
