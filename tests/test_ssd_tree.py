"""SSD building blocks: glue + fork + tree decode against per-branch decoding, and fan-out math."""
import json
import math

import pytest
import torch

from ssd_support import tiny_model
from ssdecode.config.deploy import DraftDeployment
from ssdecode.config.settings import DecodingSettings
from ssdecode.config.ssd import SSDConfig
from ssdecode.decoding.ssd.fanout import FanoutPolicy, fit_power, position_caps
from ssdecode.decoding.ssd.tree import TreeRow, build_branches, fork
from ssdecode.params import InvalidParams, SamplingParams
from ssdecode.plan.theory import geometric_fanout, outcome_probs, round_to_budget
from ssdecode.runtime.runner import ModelRunner
from ssdecode.sampling import SamplingTensors, probs_from_logits, saguaro_reweight

V, K = 24, 3


@pytest.fixture(scope="module")
def draft():
    return tiny_model(1, vocab=V)


def _prefill(runner, slot, tokens):
    runner.cache.reset(slot)
    runner.forward(torch.tensor([tokens]), torch.arange(len(tokens))[None], [slot])


def _q_alone(model, tokens, params, c, fan_out):
    """The draft's distribution after ``tokens``, computed on its own (fresh cache, causal)."""
    runner = ModelRunner(model, 1, len(tokens) + 1)
    logits = runner.forward(torch.tensor([tokens]), torch.arange(len(tokens))[None], [0], last_only=True)[:, 0]
    q = probs_from_logits(logits, SamplingTensors.from_params([params]))
    return saguaro_reweight(q, c, fan_out)[0] if c < 1 else q[0]


@pytest.mark.parametrize("saguaro_c", [1.0, 0.5])
def test_tree_equals_decoding_each_branch_alone(draft, saguaro_c):
    """Two sequences of different lengths (one greedy, one sampling, one with a short
    speculation): every branch's tokens are the argmax / a sample of q given exactly its own
    context, and the stored q's equal those computed branch by branch."""
    runner = ModelRunner(draft, 3, 400)
    histories = [[3, 5, 7, 11, 2], [1, 4, 9], [6, 6, 2, 8, 1, 0, 5]]  # committed tokens (last = t_prev)
    specs = [[4, 17, 9], [2, 3, 5], [13]]
    params = [SamplingParams(), SamplingParams(temperature=1.0, top_k=6, seed=3), SamplingParams(temperature=0.7)]
    fanout = [2, 1, 3, 2]
    fanout_next = [3, 2, 1, 2]
    rows = []
    for slot, (hist, spec, p) in enumerate(zip(histories, specs, params)):
        _prefill(runner, slot, hist[:-1])
        gen = None if p.greedy else torch.Generator().manual_seed(slot)
        rows.append(TreeRow(slot, len(hist) - 1, hist[-1], spec, fanout, SamplingTensors.from_params([p]), gen))
    branches = build_branches(runner, rows, K, saguaro_c, fanout_next)
    for hist, spec, p, br in zip(histories, specs, params, branches):
        n = len(spec)
        assert br.widths == [min(fanout[j], V - 1) for j in range(n)] + [fanout[K]]
        assert len(br.keys) == sum(br.widths) == br.tokens.shape[0]
        assert (br.probs is None) == p.greedy
        for (j, c), w in br.keys.items():
            if j < n:
                assert c != spec[j]  # forks never repeat the speculated token
            context = hist + spec[:j] + [c]
            for m in range(K):
                q = _q_alone(draft, context, p, saguaro_c, fanout_next[m])
                tok = int(br.tokens[w, m])
                if p.greedy:
                    assert tok == int(q.argmax())
                else:
                    torch.testing.assert_close(br.probs[w, m], q, atol=1e-5, rtol=1e-4)
                    assert q[tok] > 0
                context.append(tok)


def test_fork_takes_top_tokens_excluding_the_speculated_one():
    logits = torch.tensor([[[0.0, 5.0, 4.0, 3.0, 2.0, 1.0]] * 3])  # [1, T=3, V=6], ranking 1,2,3,4,5,0
    row = TreeRow(0, 0, 0, [1, 3], [2, 2, 4], None, None)  # K = 2, s_1 = 1, s_2 = 3
    bi, ji, ci, widths = fork(logits, [row], 6, 2)
    got = {}
    for j, c in zip(ji.tolist(), ci.tolist()):
        got.setdefault(j, []).append(c)
    assert got == {0: [2, 3], 1: [1, 2], 2: [1, 2, 3, 4]}  # j=0 skips s_1=1, j=1 skips s_2=3, j=K none
    assert widths.tolist() == [[2, 2, 4]]


def test_fork_caps_at_vocab():
    logits = torch.randn(1, 2, 5)
    row = TreeRow(0, 0, 0, [2], [9, 9], None, None)
    _, ji, ci, widths = fork(logits, [row], 5, 1)
    assert widths.tolist() == [[4, 5]]
    assert 2 not in ci[ji == 0].tolist() and sorted(ci[ji == 1].tolist()) == list(range(5))


# -- fan-out ------------------------------------------------------------------------------------

@pytest.mark.parametrize("budget", [0, 1, 7, 20, 33])
@pytest.mark.parametrize("a", [0.3, 0.7, 0.95])
@pytest.mark.parametrize("r", [0.5, 1.0, 3.0])
def test_geometric_allocation_sums_to_budget_and_decays(budget, a, r):
    k = 5
    f = geometric_fanout(budget, a, r, k, position_caps(k, 1000))
    assert sum(f) == budget and all(x >= 0 for x in f)
    assert all(f[i] >= f[i + 1] for i in range(k - 1))  # P(k) decreasing for k < K
    real = [budget * p ** (1 / (1 + r)) / sum(q ** (1 / (1 + r)) for q in outcome_probs(a, k))
            for p in outcome_probs(a, k)]
    assert all(abs(x - y) < 1 for x, y in zip(f, real))  # rounding moves each by less than 1


def test_geometric_matches_closed_form():
    a, r, k, budget = 0.8, 1.0, 4, 1000
    f = geometric_fanout(budget, a, r, k, position_caps(k, 10_000))
    f0 = f[0]
    for j in range(k):
        assert abs(f[j] - f0 * a ** (j / (1 + r))) <= 2
    assert abs(f[k] - f0 * a ** (k / (1 + r)) * (1 - a) ** (-1 / (1 + r))) <= 2


def test_round_to_budget_largest_remainder_and_caps():
    assert round_to_budget([1, 1, 1], 10, [10, 10, 10]) == [4, 3, 3]  # ties -> lower position
    assert round_to_budget([0.5, 0.3, 0.2], 7, [10] * 3) == [4, 2, 1]  # 3.5, 2.1, 1.4
    assert round_to_budget([10, 1, 1], 12, [3, 100, 100]) == [3, 5, 4]  # cap, then redistribute
    assert round_to_budget([1, 1], 50, [5, 6]) == [5, 6]  # budget beyond the caps
    assert sum(round_to_budget([0.0, 0.0, 1.0], 5, [5, 5, 5])) == 5


def test_fit_power_recovers_exponent():
    r = 0.8
    cells = {f: (round(1000 * f ** -r), 1000) for f in (1, 2, 3, 5, 8)}
    assert abs(fit_power(cells) - r) < 0.05
    assert fit_power({}) is None


def test_policy_modes_and_online_update():
    vocab = 6
    assert FanoutPolicy(SSDConfig(k=3, fanout="uniform:2"), vocab).fanout == [2, 2, 2, 2]
    assert FanoutPolicy(SSDConfig(k=3, fanout="uniform:9"), vocab).fanout == [5, 5, 5, 6]  # V-1, V
    assert FanoutPolicy(SSDConfig(k=3, fanout=[3, 0, 1, 4]), vocab).fanout == [3, 0, 1, 4]
    assert FanoutPolicy(SSDConfig(k=3, fanout="0,1,2,3"), vocab).fanout == [0, 1, 2, 3]
    policy = FanoutPolicy(SSDConfig(k=3, fanout="geometric", budget=12, acceptance=0.5), 100)
    assert sum(policy.fanout) == 12
    before = list(policy.fanout)
    for _ in range(200):  # the draft turns out to be accepted almost always
        policy.record_outcome(3, 3)
    policy.update()
    assert policy.acceptance > 0.9 and policy.fanout[3] > before[3] and sum(policy.fanout) == 12
    for f in (1, 2, 4):
        for i in range(40):
            policy.record_fork(f, hit=i >= 40 * f ** -1.5)
    assert abs(policy.power - 1.5) < 0.3


@pytest.mark.parametrize("bad", [dict(fanout="1,2"), dict(fanout="uniform:x"), dict(saguaro_c=0.0),
                                 dict(saguaro_c=1.5), dict(backup="slow"), dict(k=0)])
def test_config_rejects_bad_values(bad):
    with pytest.raises(InvalidParams):
        SSDConfig(**{"k": 3, **bad})


@pytest.mark.parametrize("bad", [dict(transport="smoke"), dict(launch="later"), dict(draft_threads=0),
                                 dict(timeout_s=0), dict(draft_weights="int3")])
def test_deployment_rejects_bad_values(bad):
    with pytest.raises(InvalidParams):
        DraftDeployment(**bad)


def test_ssd_options_split_into_algorithm_and_deployment():
    s = DecodingSettings.build("ssd", k=4, ssd={"fanout": "uniform:2", "transport": "thread",
                                                "draft_threads": None, "backup": "fast"})
    assert s.ssd == SSDConfig(k=4, fanout="uniform:2", backup="fast") and s.deploy == DraftDeployment()
    with pytest.raises(InvalidParams, match="unknown SSD options"):
        DecodingSettings.build("ssd", k=4, ssd={"fanuot": 3})
    with pytest.raises(InvalidParams, match="unknown SSD options"):  # set from the loaded draft
        DecodingSettings.build("ssd", k=4, ssd={"draft_weights": "int4"})


def test_config_builds_from_cli_dict_and_json():
    cfg = DecodingSettings.build("ssd", k=4, ssd={"fanout": "geometric", "budget": None, "saguaro_c": 0.5,
                                                   "backup": "adaptive"}).ssd
    assert cfg.k == 4 and cfg.total_budget == 15 and cfg.saguaro_c == 0.5
    assert SSDConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    listed = SSDConfig(k=2, fanout=(1, 2, 3))
    assert SSDConfig.from_dict(json.loads(json.dumps(listed.to_dict()))) == listed and listed.total_budget == 6
    assert math.isclose(DecodingSettings.build("ssd", k=2).ssd.acceptance, 0.7)
