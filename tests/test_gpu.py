"""The CUDA graph path (runtime/graphs.py), on a GPU only: graph replay equals eager, greedy
SD/SSD through graphs equal AR, and a captured round never waits for the host.
Run by scripts/gpu_check.sh; skipped without CUDA."""
from __future__ import annotations

import pytest
import torch

from ssd_support import prompts_for
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner
from tiny import tiny_model, tiny_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def cuda_pair():
    return tiny_model(0, context=512, device="cuda"), tiny_model(1, context=512, device="cuda")


def _calls(runner):
    """Prefill two ragged rows, then decode, verify and tree-masked steps of several widths."""
    outs = [runner.forward(torch.tensor([[1, 2, 3, 4, 5], [6, 7, 8, 0, 0]], device="cuda"),
                           torch.arange(5, device="cuda").expand(2, 5), [1, 0], num_new=[5, 3])]
    for t in (1, 4, 6, 1):
        ids = torch.arange(t, device="cuda").expand(2, t) + 3
        pos = torch.tensor([[5], [3]], device="cuda") + torch.arange(t, device="cuda")
        outs.append(runner.forward(ids, pos, [1, 0], last_only=t == 6))
        runner.cache.truncate(1, 5 + (t == 1))
        runner.cache.truncate(0, 3 + (t == 1))
    span = max(runner.cache.lengths[:2]) + 3
    mask = torch.zeros(2, 3, span, dtype=torch.bool, device="cuda")
    mask[..., :4] = True
    mask[:, torch.arange(3), span - 3 + torch.arange(3)] = True
    outs.append(runner.forward(torch.ones(2, 3, dtype=torch.long, device="cuda"),
                               torch.full((2, 3), 6, device="cuda"), [1, 0], attn_mask=mask))
    return outs


def test_graph_replay_equals_eager(cuda_pair):
    want = _calls(ModelRunner(cuda_pair[0], 2, 64, backend="eager"))
    graphs = ModelRunner(cuda_pair[0], 2, 64, backend="static")
    first = _calls(graphs)  # each bucket is captured on first use, then replayed
    for slot in (0, 1):
        graphs.cache.reset(slot)
    again = _calls(graphs)  # replays only
    for a, b, w in zip(first, again, want):
        assert torch.allclose(a, w, atol=1e-4), (a - w).abs().max()
        assert torch.equal(a, b)
    assert graphs.graphs.replays == 2 * len(want)


def test_captured_decode_never_syncs(cuda_pair):
    runner = ModelRunner(cuda_pair[0], 1, 64, backend="static")
    runner.forward(torch.tensor([[1, 2, 3]], device="cuda"), torch.arange(3, device="cuda")[None], [0])
    ids = torch.tensor([[4]], device="cuda")
    runner.forward(ids, torch.tensor([[3]], device="cuda"), [0])  # captures the bucket
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for pos in range(4, 8):
            runner.forward(ids, torch.tensor([[pos]], device="cuda"), [0])
    finally:
        torch.cuda.set_sync_debug_mode(0)
    runner.check()


@pytest.mark.parametrize("mode,settings", [("sd", {"k": 4}), ("ssd", {"k": 3, "ssd": {"transport": "thread"}})])
def test_greedy_through_graphs_equals_ar(cuda_pair, mode, settings):
    prompts = prompts_for(3, seed=9)
    params = SamplingParams(max_tokens=24, ignore_eos=True)
    outs = []
    for m, s, graphs in (("ar", {}, False), (mode, settings, True)):
        llm = LLM.from_models(tiny_tokenizer(24), *cuda_pair, mode=m, max_num_seqs=3, cuda_graphs=graphs, **s)
        try:
            outs.append([c.token_ids for c in llm.generate(prompts, params)])
        finally:
            llm.close()
    assert outs[0] == outs[1]
