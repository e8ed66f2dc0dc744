"""The server on the demo pair (real weights): eight greedy streaming requests through the
official openai client, started at different times on four slots (so some wait and the batch
changes between rounds), give token for token what each prompt gives run alone offline, in AR, SD
and SSD with the draft worker in its own process. Prompts mix chat (HumanEval) and raw completions
(stdlib sources). Marked ``real``; short, since a target forward is ~0.2 s here."""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from server_support import client, running
from ssdecode.bench.prompts import humaneval_prompts, stdlib_prompts
from ssdecode.engine.llm import LLM
from ssdecode.models.demo import pull_demo
from ssdecode.params import SamplingParams
from ssdecode.server.app import build_app

pytestmark = pytest.mark.real
NEW_TOKENS, SLOTS, STAGGER_S = 16, 4, 0.4
MODES = {"ar": {}, "sd": {"k": 4}, "ssd": {"k": 4, "ssd": {"transport": "process", "draft_threads": 1}}}


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="module")
def llm():
    demo = pull_demo(progress=False)
    with LLM(target=str(demo.target_dir), draft=str(demo.draft_dir), mode="ar", device="cpu",
             max_num_seqs=SLOTS, max_model_len=1024) as llm:
        yield llm


@pytest.fixture(scope="module")
def prompts():
    return humaneval_prompts(4) + stdlib_prompts(4)


@pytest.fixture(scope="module")
def offline(llm, prompts):
    """Each prompt alone through LLM.generate (AR, one request at a time)."""
    llm.configure("ar")
    params = SamplingParams(max_tokens=NEW_TOKENS, ignore_eos=True)
    return [llm.generate([p.text], params, chat=p.chat)[0].token_ids for p in prompts]


@pytest.mark.parametrize("mode", list(MODES))
def test_concurrent_streams_equal_offline_token_for_token(llm, prompts, offline, mode):
    llm.configure(mode, **MODES[mode])
    with running(build_app(llm, "demo")) as url:
        c = client(url, timeout=600)  # a queued request waits for a batch's CPU prefill (~20 s)

        def stream(i: int) -> tuple[list[int], dict]:
            time.sleep(STAGGER_S * i)
            common = dict(model="demo", max_tokens=NEW_TOKENS, temperature=0, stream=True,
                          stream_options={"include_usage": True},
                          extra_body={"ignore_eos": True, "return_token_ids": True})
            p = prompts[i]
            if p.chat:
                chunks = list(c.chat.completions.create(messages=[{"role": "user", "content": p.text}], **common))
            else:
                chunks = list(c.completions.create(prompt=p.text, **common))
            ids = [t for ch in chunks if ch.choices for t in ch.choices[0].model_extra.get("token_ids") or []]
            return ids, chunks[-1].usage.model_extra

        with ThreadPoolExecutor(len(prompts)) as pool:
            results = list(pool.map(stream, range(len(prompts))))
    assert [ids for ids, _ in results] == offline
    usage = [u for _, u in results]
    assert all(u["mode"] == mode for u in usage)
    if mode != "ar":
        assert sum(u["accepted_tokens"] for u in usage) > 0.5 * sum(u["draft_tokens"] for u in usage)
    if mode == "ssd":
        assert sum(u["ssd_hits"] for u in usage) > 0
