"""What a decoding strategy sees of a request: its cache slot, token ids, sampling parameters
and random generator. Stop handling, text and metrics belong to the engine (engine/request.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssdecode.params import SamplingParams


@dataclass
class Sequence:
    seq_id: int  # globally unique (the engine's request id); the SSD worker keys its state by it
    slot: int  # cache slot in the target (and draft) KV caches
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None  # None for greedy rows (ssdecode.sampling.make_generator)
    output_ids: list[int] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]
