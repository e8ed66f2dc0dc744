"""The draft worker's per-sequence state: committed history, the speculation in flight and its
speculation cache (this round's branches only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdecode.decoding.ssd.tree import Branches
from ssdecode.params import SamplingParams
from ssdecode.sampling import SamplingTensors



@dataclass
class Spec:
    """A speculation s_1..s_n as sent to the target."""

    tokens: list[int]
    probs: torch.Tensor | None  # [n, V] q_i the tokens were sampled from (sampling rows), else None
    point_mass: bool  # not drawn from kept q's (greedy row or fast backup)
    fanout: list[int]  # F_0..F_K it was reweighted for; its fork uses the same widths
    source: str  # "hit" | "neural" | "fast"


@dataclass
class SeqState:
    seq_id: int
    slot: int
    params: SamplingParams
    st: SamplingTensors  # one row
    generator: torch.Generator | None  # draft randomness; None for greedy rows
    history: list[int]  # committed tokens: prompt + output
    spec: Spec | None = None
    branches: Branches | None = None  # the speculation cache of ``spec``, once prepared

    @property
    def prefix_len(self) -> int:
        """P: the draft cache holds every committed token but the last."""
        return len(self.history) - 1

    @property
    def samples(self) -> bool:
        return self.generator is not None
