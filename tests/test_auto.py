"""``--mode auto`` (issue 12): calibration and its cache, the ranking, the per-round K policy, and
exactness when the mode switches mid-request (greedy = AR; sampled: chi-square, with a planted
switching bug that the case must catch)."""
from __future__ import annotations

import itertools
import json

import pytest

from exactness import chi_square_check, exact_target_distribution
from server_support import save_tiny_pair
from ssdecode.cli import main
from ssdecode.config.settings import ACCEPTANCE_PRIOR
from ssdecode.decoding import auto as adaptive
from ssdecode.decoding.auto import AutoStrategy, KPolicy
from ssdecode.decoding.base import StepOutput
from ssdecode.engine.llm import LLM
from ssdecode.params import InvalidParams, SamplingParams
from ssdecode.plan import calibrate
from ssdecode.plan.calibrate import Calibration, load_or_calibrate
from ssdecode.plan.planner import rank
from tiny import tiny_model, tiny_tokenizer

VOCAB, PROMPT = 12, [3, 7, 1]


def fake_calibration(draft_ms: float, contention: float = 1.5) -> Calibration:
    """A 100 ms target whose verification costs 10 ms more per token, and a draft of ``draft_ms``."""
    return Calibration("k", {n: 0.1 + 0.01 * (n - 1) for n in range(1, 10)},
                       {w: draft_ms / 1e3 * (1 + 0.1 * w) for w in (1, 4, 8, 16)}, contention)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path / "cache"))


class Forced(KPolicy):
    """K from a fixed cycle, whatever was measured: switches between AR and SD of several K."""

    def __init__(self, schedule):
        super().__init__(fake_calibration(10), max(schedule))
        self.cycle = itertools.cycle(schedule)

    def choose(self, slots, context=None):
        return next(self.cycle)


def auto_llm(target, draft, policy, n: int, max_len: int) -> LLM:
    llm = LLM.from_models(tiny_tokenizer(VOCAB), target, draft, mode="ar", max_num_seqs=n, max_model_len=max_len)
    llm.strategy.close()
    llm.core.close()
    llm.strategy = AutoStrategy(target, draft, policy, why="forced")
    from ssdecode.engine.core import EngineCore

    llm.core = EngineCore(llm.strategy, llm.tokenizer, llm._eos_ids(), target.max_context, target.vocab_size,
                          n, max_len)
    return llm


def test_ranking_follows_the_costs():
    fast, slow = rank(fake_calibration(5), 0.84), rank(fake_calibration(100), 0.84)
    assert fast[0].mode == "sd" and fast[0].k >= 2
    assert slow[0].mode == "ar"
    high = rank(fake_calibration(5), 0.99)
    assert high[0].k > fast[0].k  # more acceptance, longer drafts
    free = rank(fake_calibration(5, contention=1.0), 0.99)  # draft on its own device: SSD wins
    assert free[0].mode == "ssd"


def test_policy_learns_acceptance_and_probes_from_ar():
    policy = KPolicy(fake_calibration(20), 8)
    start = policy.choose([0])
    for _ in range(30):  # every draft token rejected
        policy.record([0], StepOutput(tokens=[[1]], proposed=[start], accepted=[0]), start, 0.2)
    assert policy.acceptance(0) < 0.3 and policy.choose([0]) == 0
    picks = [policy.choose([0]) for _ in range(adaptive.PROBE_EVERY)]
    assert sum(p > 0 for p in picks) == 1  # AR, with a drafting round now and then
    policy.forget([0])
    assert policy.acceptance(0) == ACCEPTANCE_PRIOR


def test_calibration_is_cached_and_remeasured_when_unreadable(monkeypatch, caplog):
    target, draft = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    first = load_or_calibrate(target, draft)
    assert set(first.target_s) == set(range(1, calibrate.AUTO_K_MAX + 2)) and first.contention >= 1.0
    path = calibrate._path(first.key)
    assert json.loads(path.read_text())["measured_at"] == first.measured_at
    with monkeypatch.context() as m:
        m.setattr(calibrate, "calibrate", lambda *a, **k: pytest.fail("measured again"))
        assert load_or_calibrate(target, draft).target_s == first.target_s
    path.write_text("{not json")
    assert load_or_calibrate(target, draft).key == first.key and "unreadable" in caplog.text


def test_a_disturbed_calibration_is_measured_again_and_never_cached(monkeypatch, caplog):
    """Measured while other work stalled the cores: a 1-token target forward slower than a
    5-token one (as a loaded machine gave: 1.82 s against 1.19 s)."""
    target, draft = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    good = fake_calibration(30)
    bad = fake_calibration(30)
    bad.target_s = {n: 1.82 - 0.1 * n for n in range(1, 10)}  # each step less than 20% faster
    assert calibrate.implausible(good) is None and "target forward of 5" in calibrate.implausible(bad)
    made = iter([bad, good])
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: next(made))
    monkeypatch.setattr(calibrate, "profile_key", lambda *a: "k")
    assert load_or_calibrate(target, draft) is good and "measuring again" in caplog.text
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: bad)
    assert load_or_calibrate(target, draft, fresh=True) is bad and "not cached" in caplog.text
    assert calibrate.cached(target, draft).target_s == good.target_s  # the cache kept the good one
    calibrate._path("k").write_text(json.dumps(bad.to_json()))  # a disturbed cache file: measured again
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: good)
    assert load_or_calibrate(target, draft) is good and "cached calibration of k looks disturbed" in caplog.text


def test_greedy_auto_equals_ar_across_switches():
    target, draft = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    params = [SamplingParams(max_tokens=24, ignore_eos=True)] * 3
    prompts = [PROMPT, [5, 2], [9, 9, 4, 1]]
    ar = LLM.from_models(tiny_tokenizer(VOCAB), target, mode="ar", max_num_seqs=3).generate(prompts, params)
    llm = auto_llm(target, draft, Forced([0, 3, 1, 0, 0, 5, 2]), 3, 40)
    got = llm.generate(prompts, params)
    assert [c.token_ids for c in got] == [c.token_ids for c in ar]
    assert set(llm.strategy.stats()["rounds_by_k"]) == {0, 1, 2, 3, 5}


def auto_samples(target, draft, n_tokens: int, n: int = 4000) -> list[tuple]:
    llm = auto_llm(target, draft, Forced([0, 2, 0, 1, 3]), n, len(PROMPT) + n_tokens)
    rows = [SamplingParams(temperature=1.0, max_tokens=n_tokens, ignore_eos=True, seed=1000 + i) for i in range(n)]
    return [tuple(c.token_ids) for c in llm.generate([PROMPT] * n, rows)]


def test_sampling_stays_exact_when_auto_switches_modes():
    target, draft = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    exact = exact_target_distribution(target, SamplingParams(temperature=1.0), PROMPT, 3)
    chi_square_check(auto_samples(target, draft, 3), exact)


def test_a_switch_that_feeds_the_wrong_token_fails_the_suite(monkeypatch):
    """Planted: an AR round feeds the token before the last one (a cache mix-up a mode switch
    could make). The same case must catch it."""
    target, draft = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    real = adaptive.ar_step

    def stale(runner, seqs):
        kept = [s.output_ids.pop() for s in seqs]
        try:
            return real(runner, seqs)
        finally:
            for s, t in zip(seqs, kept):
                s.output_ids.append(t)

    monkeypatch.setattr(adaptive, "ar_step", stale)
    exact = exact_target_distribution(target, SamplingParams(temperature=1.0), PROMPT, 3)
    with pytest.raises(AssertionError, match="do not follow"):
        chi_square_check(auto_samples(target, draft, 3), exact)


def test_cli_defaults_to_auto_and_says_what_it_picked(tmp_path, capsys):
    target, draft = save_tiny_pair(tmp_path)
    assert main(["generate", "w1 w2", "--target", str(target), "--draft", str(draft), "--raw",
                 "--max-tokens", "6", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "mode auto: " in err and "calibration" in err
    assert json.loads(out)["stats"]["mode"].startswith("auto: ")
    assert main(["plan", "--profile", "machine", "--target", str(target), "--draft", str(draft), "--a", "0.9",
                 "--draft-weights", "auto,int4"]) == 0  # the first pair is cached, the int4 one is measured
    out = capsys.readouterr().out
    assert "auto picks" in out and "contention" in out and "packed/int4" in out
    assert len(json.loads(out.splitlines()[-1])["calibrations"]) == 2


def test_auto_weighs_a_requantized_draft_once(tmp_path, monkeypatch):
    """The draft's own weights against its re-quantized form (q4k where AVX-512 VNNI runs it, else
    int4): both pairs calibrated the first time, then only the cached calibrations decide (nothing
    measured again)."""
    from ssdecode.models.loader import load_model
    from ssdecode.plan.pick import pick_draft

    target_dir, draft_dir = save_tiny_pair(tmp_path)
    target, draft = load_model(target_dir), load_model(draft_dir)
    model, fmt = pick_draft(target, draft, str(draft_dir), progress=False)
    assert fmt in ("auto", "q4k", "int4") and model.weight_format == ("packed" if fmt == "auto" else fmt)
    monkeypatch.setattr(calibrate, "calibrate", lambda *a, **k: pytest.fail("measured again"))
    assert pick_draft(target, draft, str(draft_dir), progress=False)[1] == fmt


def test_the_acceptance_prior_reaches_the_pick_and_the_policy(capsys):
    """``acceptance_prior`` (``--acceptance-prior``): what auto's first pick assumes (its reason
    says so) and where each sequence's acceptance estimate starts; out of (0, 1) it is refused
    before anything runs."""
    pair = tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB)
    llm = LLM.from_models(tiny_tokenizer(VOCAB), *pair, mode="auto", ssd={"transport": "thread"},
                          acceptance_prior=0.97)
    try:
        assert "at acceptance 0.97" in llm.choice
        if isinstance(llm.strategy, AutoStrategy):  # auto may also pick SSD with a fixed K
            assert llm.strategy.policy.acceptance(0) == 0.97
    finally:
        llm.close()
    for bad in (0.0, 1.0, 1.5):
        with pytest.raises(InvalidParams, match="acceptance prior"):
            LLM.from_models(tiny_tokenizer(VOCAB), *pair, mode="auto", acceptance_prior=bad)
    with pytest.raises(SystemExit):  # argparse: not a number
        main(["generate", "x", "--acceptance-prior", "high"])
    assert main(["generate", "x", "--acceptance-prior", "1.2", "--target", "/nonexistent"]) == 2
    assert "acceptance prior must be in (0, 1), got 1.2" in capsys.readouterr().err  # before the load


def test_the_mode_label_says_what_auto_picked():
    """What the server's usage reports as ``mode`` (server/responses.usage passes it through)."""
    llm = LLM.from_models(tiny_tokenizer(VOCAB), tiny_model(0, vocab=VOCAB), tiny_model(1, vocab=VOCAB),
                          mode="auto", ssd={"transport": "thread"})
    try:
        assert llm.mode_label == f"auto: {llm.choice}" and "calibration" in llm.choice
        assert len(llm.generate([PROMPT], SamplingParams(max_tokens=6, ignore_eos=True))[0].token_ids) == 6
    finally:
        llm.close()
