"""Helpers for the SSD tests: a greedy AR reference loop and an engine run over tiny models."""
from __future__ import annotations

import torch

from ssdecode.config.settings import DecodingSettings
from ssdecode.decoding.build import Models, build_strategy
from ssdecode.engine.core import EngineCore
from ssdecode.models.base import CausalLM
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner
from tiny import tiny_model as _tiny_model
from tiny import tiny_tokenizer

CONTEXT = 1024  # roomy: full fan-out trees need K * (K+1) * V scratch rows past the tokens


def tiny_model(seed: int, vocab: int = 24, **kwargs):
    """tests/tiny.py's random model with a context long enough for full fan-out trees."""
    return _tiny_model(seed, vocab=vocab, context=CONTEXT, **kwargs)


def ssd_strategy(target, draft, k: int, options: dict | None = None):
    """The SSD strategy ``build_strategy`` makes for K and CLI-style SSD ``options``."""
    return build_strategy(DecodingSettings.build("ssd", k=k, ssd=options), Models(target, draft))[0]


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """Forward the whole sequence, take the argmax, append; n times (no cache reuse at all)."""
    seq = list(prompt)
    for _ in range(n):
        runner = ModelRunner(model, 1, len(seq) + 1)
        ids = torch.tensor([seq])
        logits = runner.forward(ids, torch.arange(len(seq))[None], [0], last_only=True)
        seq.append(int(logits[0, -1].argmax()))
    return seq[len(prompt):]


def run(strategy, prompts: list[list[int]], params: list[SamplingParams] | SamplingParams,
        vocab: int = 24, context: int = CONTEXT) -> list[list[int]]:
    """Generate with an engine core sized for this batch (no EOS); each row's output ids."""
    if isinstance(params, SamplingParams):
        params = [params] * len(prompts)
    limit = context - strategy.cache_tokens_needed()
    need = min(limit, max(len(p) + sp.max_tokens for p, sp in zip(prompts, params)))
    core = EngineCore(strategy, tiny_tokenizer(vocab), set(), context, vocab, len(prompts), need)
    rids = [core.add_request(p, sp) for p, sp in zip(prompts, params)]
    done = {}
    while core.has_unfinished():
        done.update((o.request_id, o.request.output_ids) for o in core.step() if o.finished)
    return [done[r] for r in rids]


def prompts_for(batch: int, seed: int = 0, vocab: int = 24) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist()
            for _ in range(batch)]


__all__ = ["greedy_reference", "run", "prompts_for", "tiny_model", "SlowModel"]


class SlowModel(CausalLM):
    """A CausalLM test double: ``model`` whose every forward also sleeps ``delay`` seconds (the
    sleep releases the GIL like a device kernel does, so overlap shows in wall time)."""

    def __init__(self, model, delay: float):
        self.model, self.delay = model, delay
        self.vocab_size, self.max_context = model.vocab_size, model.max_context
        self.device, self.dtype, self.supports_tree_mask = model.device, model.dtype, model.supports_tree_mask

    def new_cache(self, *args, **kwargs):
        return self.model.new_cache(*args, **kwargs)

    def forward(self, *args, **kwargs):
        import time

        time.sleep(self.delay)
        return self.model.forward(*args, **kwargs)
