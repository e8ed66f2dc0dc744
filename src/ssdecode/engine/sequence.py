"""A request in flight: prompt, sampling parameters, its random generator, output so far, metrics."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ssdecode.engine.metrics import RequestMetrics
from ssdecode.params import SamplingParams


@dataclass
class Sequence:
    seq_id: int
    slot: int  # cache slot in the target (and draft) KV caches
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None  # None for greedy rows (ssdecode.sampling.make_generator)
    output_ids: list[int] = field(default_factory=list)
    stop_text: str | None = None  # output text cut before the stop string that ended it
    finished: bool = False
    finish_reason: str | None = None  # "stop" (EOS or stop string) | "length"
    metrics: RequestMetrics = field(default_factory=RequestMetrics)

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def last_token(self) -> int:
        return self.output_ids[-1] if self.output_ids else self.prompt_ids[-1]

