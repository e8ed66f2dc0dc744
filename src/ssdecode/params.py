"""Request-level sampling parameters, validated once at the edge (API, CLI, server)."""
from __future__ import annotations

from dataclasses import dataclass, field


class InvalidParams(ValueError):
    """A sampling or engine parameter is out of range; the message names it."""


@dataclass(frozen=True)
class SamplingParams:
    """How one request samples. temperature 0 means greedy (argmax).

    top_k 0 disables top-k; top_p 1.0 disables nucleus filtering. AR, SD and SSD apply exactly
    these transforms (ssdecode.sampling) to the target, so all three sample one distribution.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None
    stop: tuple[str, ...] = field(default_factory=tuple)
    ignore_eos: bool = False

    def __post_init__(self):
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        if not (self.temperature >= 0.0) or self.temperature != self.temperature:
            raise InvalidParams(f"temperature must be >= 0, got {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InvalidParams(f"top_k must be an integer >= 0 (0 = off), got {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise InvalidParams(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise InvalidParams(f"max_tokens must be an integer >= 1, got {self.max_tokens}")
        if self.seed is not None and (not isinstance(self.seed, int) or self.seed < 0):
            raise InvalidParams(f"seed must be a non-negative integer, got {self.seed}")
        if any(not isinstance(s, str) or s == "" for s in self.stop):
            raise InvalidParams(f"stop strings must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0
