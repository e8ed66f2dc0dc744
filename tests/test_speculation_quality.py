"""Speculation quality: what the exactness tests cannot see.

The verifier makes any speculation exact, so a draft side that speculates from the wrong state
(a cache lookup that ignores the bonus token, a backup that drafts on stale KV rows) passes every
exactness test and only lowers acceptance, or raises the hit rate falsely. Two references pin
quality down on the tiny models. Greedy drafting is deterministic, so a cache hit must propose
exactly what drafting from the true state proposes: SD, SSD with every outcome cached and SSD with
none (neural backup) verify the same rounds with the same outcomes. And a draft identical to the
target has every drafted token accepted, in SD and in SSD, on hits and on backups. Planted
versions of both bugs must fail these checks.

The draft must be batch-invariant for the first reference: an int8 draft is not (fbgemm quantizes
activations per call), so its greedy choices at near-ties depend on which rows share a forward.
"""
from __future__ import annotations

import pytest

from ssd_support import prompts_for
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams
from tiny import tiny_tokenizer

VOCAB, K, TOKENS = 24, 3, 24  # conftest's tiny pair
PROMPTS = prompts_for(6)
ALL_CACHED, NONE_CACHED = {"fanout": f"uniform:{VOCAB}"}, {"fanout": 0, "backup": "neural"}


def generate(target, draft, params: list[SamplingParams], mode: str, **settings):
    """(outputs, engine metrics, strategy stats) of PROMPTS in one batch."""
    llm = LLM.from_models(tiny_tokenizer(VOCAB), target, draft, mode=mode, k=K, max_num_seqs=len(PROMPTS),
                          max_model_len=max(map(len, PROMPTS)) + TOKENS, **settings)
    try:
        out = [c.token_ids for c in llm.generate(PROMPTS, params)]
        return out, llm.core.run_metrics.summary(), llm.strategy.stats()
    finally:
        llm.close()


def greedy() -> list[SamplingParams]:
    return [SamplingParams(max_tokens=TOKENS, ignore_eos=True)] * len(PROMPTS)


def sampled() -> list[SamplingParams]:
    return [SamplingParams(temperature=1.0, max_tokens=TOKENS, ignore_eos=True, seed=i) for i in range(len(PROMPTS))]


def check_hits_speculate_like_drafting(target, draft):
    sd = generate(target, draft, greedy(), "sd")
    hits = generate(target, draft, greedy(), "ssd", ssd=ALL_CACHED)
    misses = generate(target, draft, greedy(), "ssd", ssd=NONE_CACHED)
    assert hits[2]["hit_rate"] == 1.0 and misses[2]["hit_rate"] == 0.0
    assert hits[0] == misses[0] == sd[0]
    by_k = hits[2]["rounds_by_k"], misses[2]["rounds_by_k"]
    assert by_k[0] == by_k[1], f"rounds_by_k differ: hits {by_k[0]}, neural backup {by_k[1]}"
    per_round = [(m["verifications"], m["acceptance_by_position"]) for m in (sd[1], hits[1], misses[1])]
    assert per_round[0] == per_round[1] == per_round[2], f"rounds, acceptance by position: {per_round}"


def check_identical_draft_accepts_everything(target, mode: str, **settings):
    _, metrics, stats = generate(target, target, sampled(), mode, **settings)
    assert metrics["acceptance_rate"] == 1.0, f"acceptance_rate {metrics['acceptance_rate']}"
    if settings.get("ssd") == ALL_CACHED:
        assert stats["hit_rate"] == 1.0  # every round ends with the bonus token, whichever it is


def test_cache_hits_speculate_like_drafting_from_the_true_state(target, draft):
    check_hits_speculate_like_drafting(target, draft)


@pytest.mark.parametrize("mode, settings", [("sd", {}), ("ssd", {"ssd": ALL_CACHED}), ("ssd", {"ssd": NONE_CACHED})],
                         ids=["sd", "ssd-hits", "ssd-neural-backup"])
def test_a_draft_identical_to_the_target_accepts_everything(target, mode, settings):
    check_identical_draft_accepts_everything(target, mode, **settings)


def test_a_lookup_that_ignores_the_bonus_token_is_caught(target, monkeypatch):
    """All K accepted: any branch forked at the bonus position is taken, whatever the bonus token."""
    from ssdecode.decoding.ssd.tree import Branches

    lookup = Branches.lookup

    def any_bonus_branch(self, k, t):
        if k == len(self.widths) - 1:
            return next((w for (j, _), w in self.keys.items() if j == k), None)
        return lookup(self, k, t)

    monkeypatch.setattr(Branches, "lookup", any_bonus_branch)
    with pytest.raises(AssertionError, match="acceptance_rate 0"):
        check_identical_draft_accepts_everything(target, "ssd", ssd=ALL_CACHED)


def test_a_backup_on_stale_cache_rows_is_caught(target, draft, monkeypatch):
    """The neural backup drafts with one row more than the committed prefix in the draft cache
    (after a rejection: the rejected draft token)."""
    from ssdecode.decoding.ssd.backup import NeuralBackup

    propose = NeuralBackup.propose

    def on_stale_rows(self, worker, seqs):
        for s in seqs:
            worker.cache.lengths[s.slot] += 1
        return propose(self, worker, seqs)

    monkeypatch.setattr(NeuralBackup, "propose", on_stale_rows)
    with pytest.raises(AssertionError, match="rounds_by_k differ"):
        check_hits_speculate_like_drafting(target, draft)
