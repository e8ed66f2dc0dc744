"""SSDConfig: the algorithm's settings of speculative speculative decoding (K, fan-out, Saguaro C,
backup), validated once at the edge. Where the draft worker runs (thread, process, device,
threads, timeouts) is a separate deployment config, ``config.deploy.DraftDeployment``.

The config travels to the draft worker (a thread, a spawned process, or a torchrun rank on another
host) inside the ``Setup`` message as plain data (``to_dict`` / ``from_dict``).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ssdecode.params import InvalidParams

FANOUT_MODES = ("uniform", "list", "geometric")
BACKUPS = ("neural", "fast", "adaptive")


@dataclass(frozen=True)
class SSDConfig:
    k: int = 5  # K: draft tokens per speculation (and per tree branch)
    # Fan-out: 'geometric', 'uniform:F' (or an int F), or an explicit list F_0..F_K
    # (a comma string "3,2,2,1" or a sequence). Normalized by __post_init__ into fanout_mode +
    # fanout_uniform / fanout_list.
    fanout: Any = "geometric"
    budget: int | None = None  # geometric: total fan-out B = sum_j F_j (default 3 * (K + 1))
    acceptance: float = 0.7  # geometric: prior per-token acceptance a (refined online)
    power: float = 1.0  # geometric: prior power-law exponent r of P(miss | F) = F^-r (refined online)
    adapt: bool = True  # geometric: re-estimate a and r between rounds
    fanout_cap: int | None = None  # optional cap on any single F_j (forks are also capped at V-1)
    saguaro_c: float = 1.0  # Saguaro sampling constant C in (0, 1]; 1 = plain draft sampling
    backup: str = "neural"  # speculation on a cache miss: 'neural' | 'fast' | 'adaptive'
    fast_ngram: int = 3  # fast backup: longest n-gram matched in the sequence's own history
    # normalized fan-out (filled by __post_init__; do not pass)
    fanout_mode: str = ""
    fanout_uniform: int = 0
    fanout_list: tuple[int, ...] = ()

    def __post_init__(self):
        if not isinstance(self.k, int) or self.k < 1:
            raise InvalidParams(f"K (draft tokens per round) must be an integer >= 1, got {self.k!r}")
        mode, uniform, lst = _parse_fanout(self.fanout, self.k) if not self.fanout_mode else (
            self.fanout_mode, self.fanout_uniform, tuple(self.fanout_list))
        object.__setattr__(self, "fanout_mode", mode)
        object.__setattr__(self, "fanout_uniform", uniform)
        object.__setattr__(self, "fanout_list", lst)
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 0):
            raise InvalidParams(f"fan-out budget must be an integer >= 0, got {self.budget!r}")
        if not 0.0 < self.acceptance < 1.0:
            raise InvalidParams(f"acceptance prior must be in (0, 1), got {self.acceptance}")
        if not self.power > 0.0:
            raise InvalidParams(f"power-law exponent r must be > 0, got {self.power}")
        if self.fanout_cap is not None and self.fanout_cap < 0:
            raise InvalidParams(f"fanout_cap must be >= 0, got {self.fanout_cap}")
        if not 0.0 < self.saguaro_c <= 1.0:
            raise InvalidParams(f"Saguaro constant C must be in (0, 1], got {self.saguaro_c}")
        if self.backup not in BACKUPS:
            raise InvalidParams(f"backup must be one of {BACKUPS}, got {self.backup!r}")
        if self.fast_ngram < 1:
            raise InvalidParams(f"fast_ngram must be >= 1, got {self.fast_ngram}")

    @property
    def total_budget(self) -> int:
        """The most forks one sequence can have per round (sizes the draft cache's tree scratch)."""
        if self.fanout_mode == "uniform":
            return self.fanout_uniform * (self.k + 1)
        if self.fanout_mode == "list":
            return sum(self.fanout_list)
        return self.budget if self.budget is not None else 3 * (self.k + 1)

    def to_dict(self) -> dict:
        """Plain JSON data (tuples as lists), as the transport carries it."""
        return {key: list(v) if isinstance(v, tuple) else v for key, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict) -> "SSDConfig":
        data = dict(data)
        data["fanout_list"] = tuple(data.get("fanout_list", ()))
        if isinstance(data.get("fanout"), list):
            data["fanout"] = tuple(data["fanout"])
        return cls(**data)

    def with_k(self, k: int) -> "SSDConfig":
        """The same settings for K draft tokens (the fan-out is normalized again for that K)."""
        return replace(self, k=k, fanout_mode="")

    @classmethod
    def option_names(cls) -> set[str]:
        """The fields a user sets (the normalized fan-out fields are derived)."""
        return {f.name for f in fields(cls)} - {"k", "fanout_mode", "fanout_uniform", "fanout_list"}


def _parse_fanout(spec: Any, k: int) -> tuple[str, int, tuple[int, ...]]:
    """'geometric' | 'uniform:F' | int F | 'F_0,...,F_K' | sequence -> (mode, F, list)."""
    if isinstance(spec, bool):
        raise InvalidParams(f"fan-out must be 'geometric', 'uniform:F' or a list, got {spec!r}")
    if isinstance(spec, int):
        spec = f"uniform:{spec}"
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "geometric":
            return "geometric", 0, ()
        if text.startswith("uniform"):
            _, _, value = text.partition(":")
            try:
                f = int(value) if value else 3
            except ValueError:
                raise InvalidParams(f"uniform fan-out must be 'uniform:F', got {spec!r}") from None
            if f < 0:
                raise InvalidParams(f"uniform fan-out must be >= 0, got {f}")
            return "uniform", f, ()
        try:
            spec = [int(x) for x in text.split(",")]
        except ValueError:
            raise InvalidParams(f"fan-out must be 'geometric', 'uniform:F' or 'F_0,...,F_K', got {spec!r}") from None
    values = tuple(int(x) for x in spec)
    if len(values) != k + 1 or any(v < 0 for v in values):
        raise InvalidParams(f"a fan-out list needs K+1 = {k + 1} integers >= 0 (F_0..F_K), got {values}")
    return "list", 0, values
