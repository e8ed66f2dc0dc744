"""Autoregressive decoding: one target forward per token. The baseline every speedup is over."""
from __future__ import annotations

import time

from ssdecode.decoding.base import StepOutput, Strategy
from ssdecode.decoding.sample_steps import autoregress
from ssdecode.decoding.sequence import Sequence
from ssdecode.models.base import CausalLM
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors


class ARStrategy(Strategy):
    name = "ar"

    def __init__(self, target: CausalLM, backend: str | None = None):
        self.target, self.backend = target, backend
        self.runner = None

    def setup(self, num_slots: int, max_len: int, trunner: ModelRunner | None = None) -> None:
        """``trunner``: a target runner to share (see SDStrategy.setup), else a new one."""
        self.runner = trunner or ModelRunner(self.target, num_slots, max_len, self.backend)
        self.runner.capture(num_slots, [1], last_only=True)  # decode steps (CUDA graphs)

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        return prefill_target(self.runner, seqs)

    def step(self, seqs: list[Sequence]) -> StepOutput:
        return ar_step(self.runner, seqs)


def ar_step(target: ModelRunner, seqs: list[Sequence]) -> StepOutput:
    """One target forward of each sequence's last token; samples the next."""
    t0 = time.perf_counter()
    out = autoregress(target, [s.slot for s in seqs], [[s.last_token] for s in seqs],
                      1, SamplingTensors.from_params([s.params for s in seqs], target.device),
                      [s.generator for s in seqs], keep_probs=False)
    tokens = [[t] for t in out.tokens[:, 0].tolist()]
    target.check()
    return StepOutput(tokens=tokens, time_verify=time.perf_counter() - t0)


def prefill_target(target: ModelRunner, seqs: list[Sequence]) -> list[int]:
    """Run the prompts through the target and sample each sequence's first token."""
    for s in seqs:
        target.cache.reset(s.slot)
    out = autoregress(target, [s.slot for s in seqs], [s.prompt_ids for s in seqs], 1,
                      SamplingTensors.from_params([s.params for s in seqs], target.device),
                      [s.generator for s in seqs], keep_probs=False)
    first = out.tokens[:, 0].tolist()
    target.check()
    return first
