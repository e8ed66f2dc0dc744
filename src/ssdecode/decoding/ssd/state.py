"""The draft worker's per-sequence state: committed history, the speculation in flight and its
speculation cache (this round's branches only)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ssdecode.decoding.ssd.tree import Branches
from ssdecode.params import SamplingParams
from ssdecode.sampling import SamplingTensors
from ssdecode.transport.messages import Speculation


@dataclass
class SeqState:
    seq_id: int
    slot: int
    params: SamplingParams
    st: SamplingTensors  # one row
    generator: torch.Generator | None  # draft randomness; None for greedy rows
    history: list[int]  # committed tokens: prompt + output
    speculation: Speculation | None = None  # the one in flight
    branches: Branches | None = None  # the speculation cache of ``speculation``, once prepared

    @property
    def prefix_len(self) -> int:
        """P: the draft cache holds every committed token but the last."""
        return len(self.history) - 1

    @property
    def samples(self) -> bool:
        return self.generator is not None
