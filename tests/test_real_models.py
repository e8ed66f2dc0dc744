"""The demo pair, real weights (Qwen2.5-Coder 1.5B target, 0.5B draft), fp32 on CPU.

Slow (a 1.5B forward is ~0.5 s here), so few and short; marked ``real``. ``scripts/test.sh``
pulls the pair first, so these run in CI rather than skip.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ssdecode.bench.hf_peer import HFPeer
from ssdecode.bench.prompts import humaneval_prompts
from ssdecode.engine.llm import LLM
from ssdecode.models.demo import pull_demo
from ssdecode.models.loader import load_model
from ssdecode.params import SamplingParams
from ssdecode.runtime.runner import ModelRunner

pytestmark = pytest.mark.real
NEW_TOKENS = 64


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def demo():
    return pull_demo(progress=False)


@pytest.fixture(scope="module")
def llm(demo):
    return LLM(target=str(demo.target_dir), draft=str(demo.draft_dir), mode="ar", device="cpu")


@pytest.fixture(scope="module")
def prompts(llm):
    return [llm.encode(p.text, chat=p.chat) for p in humaneval_prompts(5)]


@pytest.fixture(scope="module")
def ar_outputs(llm, prompts):
    llm.configure("ar")
    return [c.token_ids for c in llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))]


@pytest.mark.parametrize("which", ["target", "draft"])
def test_native_logits_match_transformers(demo, llm, which):
    from transformers import AutoModelForCausalLM

    folder = getattr(demo, f"{which}_dir")
    # the GGUF as stored with fp32 activations: the fp32 conversion's model up to float rounding
    # (the default, gguf-a8, rounds activations to int8 as llama.cpp does: ~0.7 on a scale of 30)
    ours = load_model(str(folder), device="cpu", weights="gguf")
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    ids = torch.tensor([llm.encode("def quicksort(xs):", chat=True)])
    runner = ModelRunner(ours, 1, 128)
    with torch.inference_mode():
        ref = hf(ids).logits[0]
        got = runner.forward(ids, torch.arange(ids.shape[1])[None], [0])[0]
        # fp32 summation order differs by CPU (oneDNN's blocking, AVX-512 or AVX2): 1.3e-4 at most
        # on AMD Zen 5 at logits up to ~20; a wrong op (RoPE, a norm's eps) moves them by 1e-2
        tol = 2e-5 * ref.abs().max().item()
        assert (got - ref).abs().max().item() < tol, "prefill logits differ"
        # rollback the last 3 tokens and decode them again one by one
        runner.cache.truncate(0, ids.shape[1] - 3)
        for pos in range(ids.shape[1] - 3, ids.shape[1]):
            step = runner.forward(ids[:, pos:pos + 1], torch.tensor([[pos]]), [0])[0, 0]
            assert (step - ref[pos]).abs().max().item() < tol, f"decode logits differ at {pos}"
    del hf


def test_greedy_generate_matches_transformers_generate(demo, prompts, ar_outputs):
    peer = HFPeer(demo.target_dir)
    for p, ours in zip(prompts, ar_outputs):
        assert ours == peer.generate(p, NEW_TOKENS, assisted=False, stop_at_eos=True)


def test_greedy_sd_equals_ar(llm, prompts, ar_outputs):
    llm.configure("sd", k=5)
    outs = llm.generate(prompts, SamplingParams(max_tokens=NEW_TOKENS))
    assert [c.token_ids for c in outs] == ar_outputs
    assert llm.core.run_metrics.summary()["acceptance_rate"] > 0.5


def test_greedy_sd_with_the_int4_draft_equals_ar(demo, llm, prompts, ar_outputs):
    """The demo draft in 4-bit blocks with int8 activations: still the target's tokens, and a draft
    that still agrees with it (the int8 draft's acceptance on these prompts is ~0.95)."""
    from ssdecode.models.loader import load_model

    draft = load_model(str(demo.draft_dir), weights="int4")
    sd = LLM.from_models(llm.tokenizer, llm.target, draft, mode="sd", k=4)
    outs = sd.generate(prompts[:2], SamplingParams(max_tokens=NEW_TOKENS))
    assert [c.token_ids for c in outs] == ar_outputs[:2]
    assert sd.core.run_metrics.summary()["acceptance_rate"] > 0.8


def test_greedy_auto_equals_ar(llm, prompts, ar_outputs, tmp_path, monkeypatch):
    """auto calibrates this machine (a fresh cache: measured here), then picks K per round."""
    monkeypatch.setenv("SSDECODE_CACHE", str(tmp_path))
    llm.configure("auto")
    try:
        outs = llm.generate(prompts[:3], SamplingParams(max_tokens=NEW_TOKENS))
        assert llm.choice and llm.strategy.stats()["rounds_by_k"]
    finally:
        llm.configure("ar")
    assert [c.token_ids for c in outs] == ar_outputs[:3]


def test_cli_generate_json(demo):
    out = subprocess.run(
        [sys.executable, "-m", "ssdecode.cli", "generate", "Say hi.", "--target", str(demo.target_dir),
         "--max-tokens", "6", "--json"], capture_output=True, text=True, timeout=600, check=True)
    result = json.loads(out.stdout)
    assert len(result["token_ids"]) <= 6 and isinstance(result["text"], str) and "stats" in result


def test_cli_reports_bad_input_clearly(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ssdecode.cli", "generate", "x", "--target",
                          str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "does not exist" in out.stderr
    out = subprocess.run([sys.executable, "-m", "ssdecode.cli", "generate", "x", "--temperature", "-1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "temperature" in out.stderr


def test_greedy_ssd_equals_ar_second_process(llm, prompts, ar_outputs):
    """SSD with the draft worker in a second process (gloo), one core each."""
    llm.configure("ssd", k=3, ssd={"transport": "process", "draft_threads": 1, "budget": 8})
    try:
        outs = llm.generate(prompts[:2], SamplingParams(max_tokens=NEW_TOKENS))
        stats = llm.strategy.stats()
    finally:
        llm.configure("ar")
    assert [c.token_ids for c in outs] == ar_outputs[:2]
    assert stats["rounds"] > 0
