"""SSD's small parts: message codec round trips, the fast backup's n-gram lookup, the adaptive
backup's choice and the section-6 throughput formulas."""
from types import SimpleNamespace

import pytest
import torch

from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.ssd.backup import AdaptiveBackup, ngram_lookup
from ssdecode.decoding.ssd.stats import WorkerStats
from ssdecode.params import SamplingParams
from ssdecode.plan.theory import batch_throughput as expected_throughput
from ssdecode.plan.theory import round_throughput
from ssdecode.transport.codec import decode, encode
from ssdecode.transport.dist import CHUNK
from ssdecode.transport.messages import (
    NewSequence,
    Outcome,
    Ready,
    Setup,
    Shutdown,
    SpeculationBatch,
    Start,
    Stats,
    StatsRequest,
    WorkerError,
)


def _roundtrip(msg):
    ints, floats = encode(msg)
    assert ints.dtype == torch.int64 and ints.dim() == 1 and int(ints[1]) == ints.numel()
    assert (floats is None) == (int(ints[2]) == 0)
    return decode(ints, floats)


def test_codec_roundtrips_every_message():
    cfg = SSDConfig(k=3, fanout=(1, 2, 0, 4), saguaro_c=0.25, backup="adaptive")
    assert _roundtrip(Setup(cfg.to_dict(), 5, 300, 151_936)) == Setup(cfg.to_dict(), 5, 300, 151_936)
    assert _roundtrip(Setup(cfg.to_dict(), 5, 300, 9, "static")).backend == "static"
    assert _roundtrip(Ready(24, 999)) == Ready(24, 999)
    start = Start([NewSequence(7, 2, [5, 6, 7], 9, SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=42)),
                   NewSequence(8, 0, list(range(3000)), 1, SamplingParams())], released=[1, 3])
    got = _roundtrip(start)  # longer than the fixed first block
    assert encode(start)[0].numel() > CHUNK
    assert [(s.seq_id, s.slot, s.prompt_ids, s.first_token) for s in got.seqs] == \
        [(s.seq_id, s.slot, s.prompt_ids, s.first_token) for s in start.seqs]
    assert got.seqs[0].params == SamplingParams(temperature=0.7, top_k=5, top_p=0.9, seed=42)
    assert got.seqs[1].params.greedy and got.seqs[1].params.seed is None and got.released == [1, 3]
    outcome = Outcome([3, 1], [0, 2], [11, 4], [9], 0.123456789)
    assert _roundtrip(outcome) == outcome
    for stat in (StatsRequest(), Shutdown()):
        assert isinstance(_roundtrip(stat), type(stat))
    assert _roundtrip(Stats({"hit_rate": 0.5, "by_k": {"0": 1}})).data == {"hit_rate": 0.5, "by_k": {"0": 1}}
    assert _roundtrip(WorkerError("Traceback: é")).message == "Traceback: é"


def test_codec_ships_q_only_for_sampling_rows():
    probs = torch.rand(1, 3, 10)
    spec = SpeculationBatch([4, 5, 6], torch.tensor([[1, 2, 3], [4, 5, 6], [7, 0, 0]]), [3, 3, 1], [True, False, True],
                       [True, False, True], probs, [1], 0.5, 0.25)
    ints, floats = encode(spec)
    assert floats.numel() == probs.numel()
    got = decode(ints, floats)
    assert torch.equal(got.tokens, spec.tokens) and torch.equal(got.probs, probs)
    assert (got.seq_ids, got.num_draft, got.hit, got.point_mass, got.prob_rows) == ([4, 5, 6], [3, 3, 1],
                                                                                      [True, False, True],
                                                                                      [True, False, True], [1])
    greedy = SpeculationBatch([4], torch.tensor([[1, 2, 3]]), [3], [False], [True], None, [])
    ints, floats = encode(greedy)
    assert floats is None and decode(ints).probs is None


def test_ngram_lookup():
    history = [1, 2, 3, 4, 5, 9, 1, 2, 3]
    assert ngram_lookup(history, 3, 4) == [4, 5, 9, 1]  # longest suffix [1, 2, 3] seen at 0
    assert ngram_lookup([7, 8, 7], 3, 2) == [8, 7]  # only the 1-gram [7] matches
    assert ngram_lookup([1, 2, 3], 3, 4) == []
    assert ngram_lookup([5, 5, 5, 5], 2, 3) == [5]  # latest earlier occurrence
    assert ngram_lookup([1, 2, 1, 2], 3, 0) == []


def test_throughput_formulas():
    # All rows hit: tokens E_hit per max(1, T_p).
    assert round_throughput(4, 0, 3.0, 2.0, 0.5, 0.8) == pytest.approx(4 * 3.0 / 1.8)
    assert expected_throughput(1.0, 4, 3.0, 2.0, 0.5, 0.8) == pytest.approx(3.0)
    # Section 7 at b = 1: [h E_hit + (1-h) E_miss] / [h max(1, T_p) + (1-h)(1 + T_b)].
    h, e_hit, e_miss, t_p, t_b = 0.6, 3.0, 2.5, 1.2, 0.7
    assert expected_throughput(h, 1, e_hit, e_miss, t_p, t_b) == pytest.approx(
        (h * e_hit + (1 - h) * e_miss) / (h * t_p + (1 - h) * (1 + t_b)))


def _worker(t_b, e_neural, e_fast, verify=1.0):
    stats = WorkerStats()
    stats.verify_time.add(verify)
    stats.tree_time.add(0.5 * verify)
    if t_b is not None:
        stats.backup_time["neural"].add(t_b * verify)
    stats.tokens_by_source["hit"].add(3.0)
    stats.tokens_by_source["neural"].add(e_neural)
    stats.tokens_by_source["fast"].add(e_fast)
    return SimpleNamespace(stats=stats, config=SSDConfig(k=4), fanout=SimpleNamespace(acceptance=0.7))


def test_adaptive_prefers_neural_at_small_batch_and_fast_at_large():
    policy = AdaptiveBackup()
    assert policy.choose(_worker(None, 3.0, 1.0), 8, 1).name == "neural"  # measure T_b first
    w = _worker(0.6, 3.0, 1.0)
    assert policy.choose(w, 1, 1).name == "neural"  # 3 / 1.6 > 1 / 1
    assert policy.choose(w, 16, 1).name == "fast"  # one miss would stall 15 hits for T_b
