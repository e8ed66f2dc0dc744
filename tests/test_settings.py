"""Settings are validated once, in config/settings.py, and become a strategy in one place,
decoding/build.py: every mode (auto included) through ``build_strategy``."""
from __future__ import annotations

import dataclasses

import pytest

from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.settings import AUTO_K_MAX, DEFAULT_K, DecodingSettings, EngineSettings
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.auto import AutoStrategy
from ssdecode.decoding.autoregressive import ARStrategy
from ssdecode.decoding.build import NO_DRAFT, Models, build_strategy
from ssdecode.decoding.speculative import SDStrategy
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.params import InvalidParams
from tiny import tiny_model

VOCAB = 24


@pytest.mark.parametrize("bad", [dict(mode="fast"), dict(k=0), dict(k=True), dict(k=2.5),
                                 dict(min_confidence=1.5), dict(min_confidence=0.0),
                                 dict(acceptance_prior=1.0), dict(ssd={"fanout": "3,2"}), dict(ssd={"backup": "x"}),
                                 dict(ssd={"transport": "pigeon"}), dict(ssd={"draft_dtype": "float16"})])
def test_bad_decoding_settings_are_refused_with_one_exception_type(bad):
    with pytest.raises(InvalidParams):
        DecodingSettings.build(**bad)
    with pytest.raises(InvalidParams, match="backend"):
        DecodingSettings(backend="graphs")


@pytest.mark.parametrize("bad", [dict(weights="int3"), dict(draft_weights="fp4"), dict(max_num_seqs=0),
                                 dict(max_num_seqs=True), dict(max_model_len=1)])
def test_bad_engine_settings_are_refused_before_any_load(bad):
    with pytest.raises(InvalidParams):
        EngineSettings(**bad)


def test_settings_are_frozen_and_k_is_one_number():
    s = DecodingSettings.build("ssd", k=3, ssd={"fanout": "uniform:2", "transport": "process"})
    assert s.ssd.k == 3 and s.k_max == 3 and s.deploy.transport == "process"
    assert DecodingSettings("sd").speculation_k == DEFAULT_K and DecodingSettings("auto").k_max == AUTO_K_MAX
    assert DecodingSettings("ssd", ssd=SSDConfig(k=7)).ssd.k == DEFAULT_K  # the settings' K wins
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.k = 4
    assert DecodingSettings.build(cuda_graphs=False).backend == "eager"


def test_the_draft_loaded_follows_the_mode():
    assert EngineSettings.build(mode="ar").draft_source is None
    assert EngineSettings.build(mode="sd").draft_source == "demo-draft"
    assert EngineSettings.build(mode="auto").draft_source == "demo-draft"  # the demo target's own draft
    assert EngineSettings.build(target="some/other", mode="auto").draft_source is None  # its tokenizer may differ
    assert EngineSettings.build(target="t.gguf", draft="d.gguf", mode="ar").draft_source == "d.gguf"


@pytest.fixture(scope="module")
def pair():
    return tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)


def test_build_strategy_makes_every_mode(pair):
    target, draft = pair
    models = Models(target, draft, draft_source="some-draft", draft_weights="int4")
    kinds = {mode: build_strategy(DecodingSettings.build(mode, k=3, ssd={"transport": "thread"}), models)
             for mode in ("ar", "sd", "ssd", "auto")}
    assert isinstance(kinds["ar"][0], ARStrategy) and kinds["ar"][1] == ""
    assert isinstance(kinds["sd"][0], SDStrategy) and kinds["sd"][0].k == 3
    ssd = kinds["ssd"][0]
    assert isinstance(ssd, SSDStrategy) and ssd.config.k == 3
    # a worker process loads the draft as this process did
    assert ssd.deploy == DraftDeployment(transport="thread", draft_weights="int4", draft_dtype="float32")
    auto, why = kinds["auto"]
    assert isinstance(auto, (AutoStrategy, SSDStrategy)) and "calibration" in why
    for strategy, _ in kinds.values():
        strategy.close()


def test_build_strategy_without_a_draft(pair):
    target, _ = pair
    with pytest.raises(InvalidParams, match="needs a draft model"):
        build_strategy(DecodingSettings("sd"), Models(target))
    strategy, why = build_strategy(DecodingSettings("auto"), Models(target))
    assert isinstance(strategy, ARStrategy) and why == NO_DRAFT


def test_the_backend_reaches_the_strategy(pair):
    strategy, _ = build_strategy(DecodingSettings.build("sd", cuda_graphs=False), Models(*pair))
    assert strategy.backend == "eager" and build_strategy(DecodingSettings(), Models(pair[0]))[0].backend is None
