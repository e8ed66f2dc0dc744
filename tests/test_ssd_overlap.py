"""SSD's point: the draft's glue + tree decode runs WHILE the target verifies. With a slow target
(0.3 s per forward) and a draft whose glue + tree takes about as long, a round costs about
max(verify, draft work), not their sum. Forced hits (full fan-out) keep the backup out of it."""
import time

import pytest

from ssd_support import SlowModel, prompts_for, tiny_model
from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.sequence import Sequence
from ssdecode.decoding.ssd.strategy import SSDStrategy
from ssdecode.params import SamplingParams
from ssdecode.sampling import make_generator

V, K, VERIFY_S, DRAFT_S = 8, 2, 0.3, 0.1  # glue + K tree steps = 3 draft forwards = 0.3 s
ROUNDS = 4


@pytest.mark.parametrize("transport", ["thread", "process"])
def test_round_time_is_max_not_sum(transport):
    target = SlowModel(tiny_model(0, vocab=V), VERIFY_S)
    draft = SlowModel(tiny_model(1, vocab=V), DRAFT_S)
    config = SSDConfig(k=K, fanout=f"uniform:{V}")
    strategy = SSDStrategy(target, config, draft=draft, deploy=DraftDeployment(transport=transport, draft_threads=1))
    params = SamplingParams(temperature=1.0, max_tokens=64, seed=0)
    seqs = [Sequence(i, i, p, params, make_generator(params)) for i, p in enumerate(prompts_for(2, vocab=V))]
    try:
        strategy.setup(len(seqs), 128)
        for s, t in zip(seqs, strategy.prefill(seqs)):
            s.output_ids.append(t)
        walls = []
        for r in range(ROUNDS):
            start = time.perf_counter()
            out = strategy.step(seqs)
            walls.append(time.perf_counter() - start)
            for s, toks in zip(seqs, out.tokens):
                s.output_ids.extend(toks)
            assert all(out.hit) or r == 0  # full fan-out: all but the first speculation come from the cache
        stats = strategy.stats()
    finally:
        strategy.close()
    verify, tree = stats["mean_verify_s"], stats["mean_tree_s"]
    assert verify > 0.9 * VERIFY_S and tree > 0.9 * (K + 1) * DRAFT_S  # the work really is that slow
    mean_round = sum(walls) / len(walls)
    assert mean_round < 0.75 * (verify + tree), (walls, verify, tree)
    assert stats["T_p"] == pytest.approx(tree / verify, rel=0.01)
