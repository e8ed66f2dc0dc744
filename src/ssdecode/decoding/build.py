"""``build_strategy(settings, models)``: the one place a mode becomes a strategy.

The CLI, the server's command, the Python API and the benchmarks all come here with validated
``DecodingSettings`` (config/settings.py) and the loaded models. ``auto`` is built here too: it
asks the planner (plan/pick.py) for the mode and K predicted fastest on this machine, then starts
SSD with that K, or SD whose K adapts per round (``AutoStrategy``, AR rounds included).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ssdecode.config.settings import DecodingSettings
from ssdecode.decoding.auto import AutoStrategy, KPolicy
from ssdecode.decoding.autoregressive import ARStrategy
from ssdecode.decoding.base import Strategy
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.decoding.vocab import align_draft
from ssdecode.models.base import CausalLM
from ssdecode.params import InvalidParams
from ssdecode.plan.pick import choose

NO_DRAFT = "ar: no draft model (pass one with --draft to speculate)"


@dataclass(frozen=True)
class Models:
    """The loaded models a strategy runs on."""

    target: CausalLM
    draft: CausalLM | None = None
    # what an SSD draft worker process loads (transport/model_source.py); None: the draft itself,
    # shared with a spawned worker
    draft_source: Any = None
    draft_weights: str = "auto"  # the format the draft was loaded with (for draft_source)


def build_strategy(settings: DecodingSettings, models: Models, progress: bool = True) -> tuple[Strategy, str]:
    """The strategy for ``settings`` over ``models``, and for auto what it picked and why ("" for
    a fixed mode). ``progress``: show auto's calibration progress (the first time per machine)."""
    mode = settings.mode
    if mode in ("sd", "ssd") and models.draft is None:
        raise InvalidParams(f"mode {mode!r} needs a draft model; this LLM was loaded without one")
    if mode == "ar" or models.draft is None:
        return ARStrategy(models.target, backend=settings.backend), "" if mode == "ar" else NO_DRAFT
    draft = align_draft(models.draft, models.target)
    if mode == "sd":
        return SDStrategy(models.target, draft, settings.speculation_k, settings.min_confidence,
                          backend=settings.backend), ""
    if mode == "ssd":
        return _ssd(settings, models, draft, settings.speculation_k), ""
    cal, best, why = choose(models.target, draft, settings.k_max, settings.acceptance_prior, progress)
    if best.mode == "ssd":
        return _ssd(settings, models, draft, best.k), why
    policy = KPolicy(cal, settings.k_max, settings.acceptance_prior)
    return AutoStrategy(models.target, draft, policy, settings.min_confidence, why, backend=settings.backend), why


def _ssd(settings: DecodingSettings, models: Models, draft: CausalLM, k: int) -> SSDStrategy:
    # a worker process loads the draft as this process did: same weight format and dtype
    deploy = replace(settings.deploy, draft_weights=models.draft_weights,
                     draft_dtype=str(models.draft.dtype).removeprefix("torch."))
    return SSDStrategy(models.target, settings.ssd.with_k(k), draft=draft, draft_source=models.draft_source,
                       deploy=deploy, backend=settings.backend)
