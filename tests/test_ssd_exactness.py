"""SSD's output distribution equals the target's, on cache hits and on misses with each backup.

As for SD (test_sd_exactness.py): thousands of rows of one prompt in one batch, each with its
own seed, against the exactly enumerated target distribution of the first three tokens. The
first round verifies the speculation drafted at prefill; with K = 2 and a poor draft, the third
token usually comes from a second round, whose speculation is a cache hit or a backup.
"""
from __future__ import annotations

import pytest

from exactness import chi_square_check, exact_target_distribution
from ssd_support import run
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.params import SamplingParams

VOCAB, PROMPT, N, K, TOKENS = 8, [3, 7, 1], 4000, 2, 3
ALL_FORKS = f"uniform:{VOCAB}"  # every token is a fork at every position: every round hits
NO_FORKS = ",".join(["0"] * (K + 1))  # no forks: every round misses

CASES = {
    "forced-hits-t1": dict(fanout=ALL_FORKS, temperature=1.0),
    "forced-hits-t05-topk3": dict(fanout=ALL_FORKS, temperature=0.5, top_k=3),
    "forced-misses-neural-t1": dict(fanout=NO_FORKS, backup="neural", temperature=1.0),
    "forced-misses-fast-t1": dict(fanout=NO_FORKS, backup="fast", temperature=1.0),
    "forced-misses-adaptive-topp08": dict(fanout=NO_FORKS, backup="adaptive", temperature=1.0, top_p=0.8),
    "saguaro-c03-geometric-t1": dict(fanout="geometric", saguaro_c=0.3, temperature=1.0),
    "saguaro-c05-uniform2-t08-topp09": dict(fanout="uniform:2", saguaro_c=0.5, temperature=0.8, top_p=0.9),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_ssd_matches_target_distribution(name, pair8):
    case = dict(CASES[name])
    sampling = {key: case.pop(key) for key in ("temperature", "top_k", "top_p") if key in case}
    target, draft = pair8
    strategy = SSDStrategy(target, SSDConfig(k=K, **case), draft=draft)
    rows = [SamplingParams(**sampling, max_tokens=TOKENS, ignore_eos=True, seed=500 + i) for i in range(N)]
    try:
        samples = [tuple(out) for out in run(strategy, [PROMPT] * N, rows, vocab=VOCAB)]
        stats = strategy.stats()
    finally:
        strategy.close()
    if case["fanout"] == ALL_FORKS:
        assert stats["hit_rate"] == 1.0
    if case["fanout"] == NO_FORKS:
        assert stats["hit_rate"] == 0.0
    chi_square_check(samples, exact_target_distribution(target, SamplingParams(**sampling), PROMPT, TOKENS))
