"""The OpenAI-compatible server, driven by the official openai client (and raw HTTP where no client
would go) against real uvicorn servers over tiny random models: completions and chat, streamed and
not, n choices, stops, usage; every refusal in OpenAI's error shape with the server still serving
afterwards; hang-ups and a full queue; Prometheus metrics that add up; concurrent greedy streams
equal to LLM.generate in AR, SD and SSD; and ``ssdecode serve`` as a process that SIGTERM ends,
SSD draft worker process included."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from server_support import (
    MODEL,
    call,
    chat_tokenizer,
    client,
    next_event,
    open_stream,
    running,
    save_tiny_pair,
    tiny_llm,
    wait_until,
)
from ssd_support import SlowModel, tiny_model
from ssdecode.engine.llm import LLM
from ssdecode.params import SamplingParams
from ssdecode.server.app import build_app

GREEDY = {"temperature": 0, "extra_body": {"ignore_eos": True}}
ERROR_KEYS = {"message", "type", "param", "code"}


@pytest.fixture(scope="module")
def pair():
    return tiny_model(0), tiny_model(1)


@pytest.fixture(scope="module")
def server(pair):
    """SD, 4 slots, 128 tokens per request: the server most tests share."""
    with running(build_app(tiny_llm("sd", *pair, max_num_seqs=4), MODEL)) as url:
        yield url


@pytest.fixture(scope="module")
def slow_server(pair):
    """One slot, one waiting place, 20 ms per target forward: requests that can be hung up on."""
    with running(build_app(tiny_llm("ar", *pair, delay=0.02, max_num_seqs=1), MODEL, max_queue=1)) as url:
        yield url


def alone(pair, mode: str, prompt: list[int], params: SamplingParams):
    """``prompt`` run by itself through LLM.generate."""
    llm = tiny_llm(mode, *pair)
    try:
        return llm.generate([prompt], params)[0]
    finally:
        llm.close()


def chat_ids(content: str) -> list[int]:
    tok = chat_tokenizer()
    text = tok.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return tok.encode(text, add_special_tokens=False)


def metrics(url: str) -> dict:
    """{(sample name, sorted labels): value} from /metrics."""
    status, text = call(url, "GET", "/metrics")
    assert status == 200
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def assert_serving(url: str, slots: int) -> None:
    status, health = call(url, "GET", "/health")
    assert status == 200 and health["status"] == "ok" and health["free_slots"] == slots
    out = client(url).completions.create(model=MODEL, prompt="w1 w2", max_tokens=3, **GREEDY)
    assert out.usage.completion_tokens == 3


def free(url: str, slots: int) -> dict:
    return wait_until(lambda: (h := call(url, "GET", "/health")[1])["free_slots"] == slots
                      and h["running"] == h["waiting"] == 0 and h, what=f"{slots} free slots")


# -- generation ----------------------------------------------------------------------------------
def test_completion_from_text_or_token_ids_matches_generate(server, pair):
    c = client(server)
    by_text = c.completions.create(model=MODEL, prompt="w1 w2 w3", max_tokens=12, **GREEDY)
    by_ids = c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=12, **GREEDY)
    ref = alone(pair, "sd", [1, 2, 3], SamplingParams(max_tokens=12, ignore_eos=True))
    assert by_text.object == "text_completion" and by_text.model == MODEL
    assert by_text.choices[0].text == by_ids.choices[0].text == ref.text
    with_ids = c.completions.create(model=MODEL, prompt=[1, 2, 3], max_tokens=12, temperature=0,
                                    extra_body={"ignore_eos": True, "return_token_ids": True})
    assert with_ids.choices[0].model_extra["token_ids"] == ref.token_ids
    assert by_text.choices[0].finish_reason == "length"
    u = by_text.usage
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (3, 12, 15)
    extra = u.model_extra
    assert extra["mode"] == "sd" and extra["ssd_hits"] == extra["ssd_misses"] == 0
    assert extra["draft_tokens"] == ref.stats["draft_proposed"] > 0
    assert extra["verify_rounds"] == ref.stats["verifications"] > 0
    assert extra["accepted_tokens"] == ref.stats["draft_accepted"]


def test_chat_streamed_and_not(server, pair):
    c = client(server)
    messages = [{"role": "system", "content": "w4"}, {"role": "user", "content": [{"type": "text", "text": "w1 w2"}]}]
    whole = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, **GREEDY)
    ref = alone(pair, "sd", chat_ids("w4 w1 w2"), SamplingParams(max_tokens=10, ignore_eos=True))
    assert whole.object == "chat.completion"
    assert whole.choices[0].message.role == "assistant" and whole.choices[0].message.content == ref.text
    chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=10, stream=True,
                                            stream_options={"include_usage": True}, **GREEDY))
    assert all(ch.object == "chat.completion.chunk" and ch.id == chunks[0].id for ch in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks[:-1]) == ref.text
    assert chunks[-2].choices[0].finish_reason == "length"
    assert all(ch.usage is None for ch in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens == 3
    plain = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=4, stream=True, **GREEDY))
    assert all(ch.usage is None for ch in plain) and plain[-1].choices[0].finish_reason == "length"


def test_completion_stream_matches_whole(server):
    c = client(server)
    whole = c.completions.create(model=MODEL, prompt="w7 w8", max_tokens=16, **GREEDY)
    chunks = list(c.completions.create(model=MODEL, prompt="w7 w8", max_tokens=16, stream=True, **GREEDY))
    assert "".join(ch.choices[0].text for ch in chunks) == whole.choices[0].text
    assert [ch.choices[0].finish_reason for ch in chunks][-1] == "length"


def test_n_choices_are_seeded_independent_requests(server):
    c = client(server)
    kw = {"model": MODEL, "prompt": "w3 w4", "max_tokens": 8, "temperature": 1.0, "extra_body": {"ignore_eos": True}}
    many = c.completions.create(n=3, seed=7, **kw)
    one_by_one = [c.completions.create(seed=7 + i, **kw).choices[0].text for i in range(3)]
    assert [ch.index for ch in many.choices] == [0, 1, 2]
    assert [ch.text for ch in many.choices] == one_by_one
    assert len(set(one_by_one)) > 1  # the seeds differ
    assert (many.usage.prompt_tokens, many.usage.completion_tokens) == (2, 24)
    streamed = ["", "", ""]
    for chunk in c.completions.create(n=3, seed=7, stream=True, **kw):
        streamed[chunk.choices[0].index] += chunk.choices[0].text
    assert streamed == one_by_one


def test_stop_strings_cut_the_text(server):
    c = client(server)
    kw = {"model": MODEL, "prompt": "w1 w5", "max_tokens": 20, **GREEDY}
    text = c.completions.create(**kw).choices[0].text
    stop = text.split()[3]
    expected = text[:text.find(stop)]
    for stops in (stop, [stop, "never"]):
        out = c.completions.create(stop=stops, **kw).choices[0]
        assert (out.text, out.finish_reason) == (expected, "stop")
    streamed = list(c.completions.create(stop=stop, stream=True, **kw))
    assert "".join(ch.choices[0].text for ch in streamed) == expected
    assert streamed[-1].choices[0].finish_reason == "stop"


def test_models_and_health(server):
    models = client(server).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert call(server, "GET", "/health") == (200, {"status": "ok", "running": 0, "waiting": 0,
                                                    "free_slots": 4, "max_num_seqs": 4})


# -- refusals ------------------------------------------------------------------------------------
COMPLETION = {"model": MODEL, "prompt": "w1 w2"}
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "w1"}]}
BAD = {
    "malformed-json": ("/v1/completions", '{"model": "tiny", "prompt": ', 400, "JSON"),
    "missing-prompt": ("/v1/completions", {"model": MODEL}, 400, "prompt"),
    "missing-messages": ("/v1/chat/completions", {"model": MODEL}, 400, "messages"),
    "string-max-tokens": ("/v1/completions", {**COMPLETION, "max_tokens": "5"}, 400, "max_tokens"),
    "unknown-model": ("/v1/completions", {**COMPLETION, "model": "gpt-9"}, 404, "gpt-9"),
    "over-context": ("/v1/completions", {**COMPLETION, "max_tokens": 127}, 400, "129"),
    "prompt-over-context": ("/v1/completions", {**COMPLETION, "prompt": [1] * 128}, 400, "128"),
    "empty-prompt": ("/v1/completions", {**COMPLETION, "prompt": ""}, 400, "empty"),
    "empty-ids": ("/v1/completions", {**COMPLETION, "prompt": []}, 400, "empty"),
    "id-out-of-vocab": ("/v1/completions", {**COMPLETION, "prompt": [1, 24]}, 400, "[0, 24)"),
    "batched-prompts": ("/v1/completions", {**COMPLETION, "prompt": ["w1", "w2"]}, 400, "prompt"),
    "negative-temperature": ("/v1/completions", {**COMPLETION, "temperature": -1}, 400, "temperature"),
    "zero-top-p": ("/v1/completions", {**COMPLETION, "top_p": 0}, 400, "top_p"),
    "negative-top-k": ("/v1/completions", {**COMPLETION, "top_k": -3}, 400, "top_k"),
    "zero-max-tokens": ("/v1/completions", {**COMPLETION, "max_tokens": 0}, 400, "max_tokens"),
    "zero-n": ("/v1/completions", {**COMPLETION, "n": 0}, 400, "n must"),
    "empty-stop": ("/v1/completions", {**COMPLETION, "stop": [""]}, 400, "stop"),
    "logprobs": ("/v1/completions", {**COMPLETION, "logprobs": 1}, 400, "logprobs"),
    "echo": ("/v1/completions", {**COMPLETION, "echo": True}, 400, "echo"),
    "best-of": ("/v1/completions", {**COMPLETION, "best_of": 2}, 400, "best_of"),
    "presence-penalty": ("/v1/completions", {**COMPLETION, "presence_penalty": 0.5}, 400, "presence_penalty"),
    "frequency-penalty": ("/v1/completions", {**COMPLETION, "frequency_penalty": 1}, 400, "frequency_penalty"),
    "logit-bias": ("/v1/completions", {**COMPLETION, "logit_bias": {"1": 5}}, 400, "logit_bias"),
    "unknown-param": ("/v1/completions", {**COMPLETION, "colour": "red"}, 400, "colour"),
    "chat-logprobs": ("/v1/chat/completions", {**CHAT, "logprobs": True}, 400, "logprobs"),
    "chat-tools": ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]},
                   400, "tools"),
    "chat-no-messages": ("/v1/chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    "chat-bad-role": ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "w1"}]},
                      400, "role"),
    "chat-image": ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "http://x"}}]}]}, 400, "messages"),
    "unknown-route": ("/v1/embeddings", COMPLETION, 404, "Not Found"),
}


@pytest.mark.parametrize("case", BAD.values(), ids=BAD.keys())
def test_refusals_in_openai_shape_and_still_serving(server, case):
    path, body, status, word = case
    got, reply = call(server, "POST", path, body)
    assert got == status, reply
    assert set(reply) == {"error"} and set(reply["error"]) == ERROR_KEYS
    assert word in reply["error"]["message"]
    assert_serving(server, 4)


def test_refusals_reach_the_openai_client_as_its_errors(server):
    c = client(server)
    with pytest.raises(openai.NotFoundError):
        c.completions.create(model="other", prompt="w1")
    with pytest.raises(openai.BadRequestError, match="presence_penalty"):
        c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1"}], presence_penalty=1.0)


def test_api_key(pair):
    with running(build_app(tiny_llm("ar", *pair), MODEL, api_key="s3cret")) as url:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            status, reply = call(url, "GET", "/v1/models", headers=headers)
            assert status == 401 and set(reply["error"]) == ERROR_KEYS
        with pytest.raises(openai.AuthenticationError):
            client(url, api_key="wrong").completions.create(model=MODEL, prompt="w1")
        assert call(url, "GET", "/health")[0] == 200
        out = client(url, api_key="s3cret").completions.create(model=MODEL, prompt="w1", max_tokens=2)
        assert out.usage.completion_tokens <= 2


# -- hang-ups and back-pressure ------------------------------------------------------------------
def test_hanging_up_mid_stream_frees_the_slot(slow_server):
    before = metrics(slow_server).get(("ssdecode_requests_total", (("status", "abort"),)), 0)
    conn, resp = open_stream(slow_server, "/v1/completions", {**COMPLETION, "max_tokens": 100, "ignore_eos": True})
    assert next_event(resp)["choices"][0]["text"]
    assert call(slow_server, "GET", "/health")[1]["running"] == 1
    conn.close()
    free(slow_server, 1)
    after = metrics(slow_server)[("ssdecode_requests_total", (("status", "abort"),))]
    assert after == before + 1
    assert_serving(slow_server, 1)


def test_hanging_up_on_a_whole_response_frees_the_slot(slow_server):
    impatient = client(slow_server).with_options(timeout=0.5)
    with pytest.raises(openai.APITimeoutError):
        impatient.completions.create(model=MODEL, prompt="w1", max_tokens=100, **GREEDY)
    free(slow_server, 1)
    assert_serving(slow_server, 1)


def test_a_full_queue_refuses_with_429(slow_server):
    body = {**COMPLETION, "max_tokens": 100, "ignore_eos": True}
    first = open_stream(slow_server, "/v1/completions", body)
    next_event(first[1])  # running
    second = open_stream(slow_server, "/v1/completions", body)  # waiting
    wait_until(lambda: call(slow_server, "GET", "/health")[1]["waiting"] == 1, what="a waiting request")
    status, reply = call(slow_server, "POST", "/v1/completions", body)
    assert status == 429 and set(reply["error"]) == ERROR_KEYS and reply["error"]["code"] == "queue_full"
    with pytest.raises(openai.RateLimitError):
        client(slow_server).completions.create(model=MODEL, prompt="w1", max_tokens=1)
    for conn, _ in (first, second):
        conn.close()
    free(slow_server, 1)
    assert_serving(slow_server, 1)


def test_an_engine_failure_is_reported_not_hung_on(pair):
    class Broken(SlowModel):
        def forward(self, *args, **kwargs):
            raise RuntimeError("device lost")

    with running(build_app(tiny_llm("ar", Broken(pair[0], 0.0), None), MODEL)) as url:
        status, reply = call(url, "POST", "/v1/completions", COMPLETION)
        assert status == 503 and "device lost" in reply["error"]["message"]
        assert call(url, "GET", "/health") == (503, {"status": "error", "running": 0, "waiting": 0,
                                                     "free_slots": 0, "max_num_seqs": 8})
        assert call(url, "POST", "/v1/completions", COMPLETION)[0] == 503


# -- metrics -------------------------------------------------------------------------------------
def test_metrics_add_up(pair):
    target = pair[0]
    with running(build_app(tiny_llm("sd", target, target, max_num_seqs=2), MODEL)) as url:  # draft = target
        c = client(url)
        usages = [c.completions.create(model=MODEL, prompt=p, max_tokens=6, **GREEDY).usage
                  for p in ("w1 w2", "w3 w4 w5")]
        chunks = list(c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w6"}],
                                                max_tokens=5, stream=True, stream_options={"include_usage": True},
                                                **GREEDY))
        usages.append(chunks[-1].usage)
        assert call(url, "POST", "/v1/completions", {**COMPLETION, "model": "x"})[0] == 404
        assert call(url, "POST", "/v1/completions", {**COMPLETION, "top_p": 2})[0] == 400
        m = metrics(url)
    total = lambda key: sum(u.model_extra[key] if key in u.model_extra else getattr(u, key) for u in usages)
    status = lambda s: m[("ssdecode_requests_total", (("status", s),))]
    assert (status("length"), status("404"), status("400")) == (3, 1, 1)
    assert m[("ssdecode_prompt_tokens_total", ())] == total("prompt_tokens") == 2 + 3 + 1
    assert m[("ssdecode_generation_tokens_total", ())] == total("completion_tokens") == 17
    assert m[("ssdecode_time_to_first_token_seconds_count", ())] == 3
    # a request's first step prefills and runs a round: its first output may hold several tokens
    assert 0 < m[("ssdecode_inter_token_latency_seconds_count", ())] <= 17 - 3
    assert m[("ssdecode_draft_tokens_total", ())] == total("draft_tokens") > 0
    assert m[("ssdecode_accepted_tokens_total", ())] == total("accepted_tokens") == total("draft_tokens")
    verifications = m[("ssdecode_verifications_total", ())]
    assert 0 < m[("ssdecode_accepted_tokens_by_position_total", (("position", "1"),))] <= verifications
    assert m[("ssdecode_mean_accepted_length", ())] == pytest.approx(1 + total("accepted_tokens") / verifications)
    assert m[("ssdecode_num_requests_running", ())] == m[("ssdecode_num_requests_waiting", ())] == 0
    assert m[("ssdecode_free_slots", ())] == 2


# -- exactness under concurrency -----------------------------------------------------------------
PROMPTS = [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10], [11], [12, 13]]


@pytest.mark.parametrize("mode", ["ar", "sd", "ssd"])
def test_concurrent_greedy_streams_equal_generate_alone(pair, mode):
    """Five streams joining 30 ms apart on two slots (so some wait, and batches change every
    few rounds) each produce what LLM.generate gives that prompt alone."""
    params = SamplingParams(max_tokens=20, ignore_eos=True)
    expected = [alone(pair, mode, p, params) for p in PROMPTS]
    with running(build_app(tiny_llm(mode, *pair, delay=0.005, max_num_seqs=2), MODEL)) as url:
        c = client(url)

        def stream(i: int):
            time.sleep(0.03 * i)
            chunks = list(c.completions.create(model=MODEL, prompt=PROMPTS[i], max_tokens=20, stream=True,
                                               stream_options={"include_usage": True}, temperature=0,
                                               extra_body={"ignore_eos": True, "return_token_ids": True}))
            ids = [t for ch in chunks[:-1] for t in ch.choices[0].model_extra["token_ids"]]
            return "".join(ch.choices[0].text for ch in chunks[:-1]), ids, chunks[-1].usage

        with ThreadPoolExecutor(len(PROMPTS)) as pool:
            results = list(pool.map(stream, range(len(PROMPTS))))
        m = metrics(url)
    assert [ids for _, ids, _ in results] == [e.token_ids for e in expected]  # token for token
    assert [text for text, _, _ in results] == [e.text for e in expected]
    usages = [u.model_extra for _, _, u in results]
    assert all(u["mode"] == mode for u in usages)
    if mode == "ssd":
        hits, misses = sum(u["ssd_hits"] for u in usages), sum(u["ssd_misses"] for u in usages)
        assert m[("ssdecode_ssd_hits_total", ())] == hits and m[("ssdecode_ssd_misses_total", ())] == misses
        rows = sum(v for (name, _), v in m.items() if name == "ssdecode_ssd_rounds_by_k_total")
        assert rows == hits + misses > 0


# -- the command ---------------------------------------------------------------------------------
def _children(pid: int) -> set[int]:
    kids = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        kids |= {int(x) for x in (task / "children").read_text().split()}
    return kids


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_serve_command_ssd_worker_process_and_sigterm(tmp_path):
    target_dir, draft_dir = save_tiny_pair(tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "ssdecode.cli", "serve", "--mode", "ssd", "--transport", "process",
           "--target", str(target_dir), "--draft", str(draft_dir), "--k", "3", "--threads", "1",
           "--draft-threads", "1", "--max-model-len", "96", "--port", str(port), "--served-model-name", MODEL]
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    log = []
    threading.Thread(target=lambda: log.extend(proc.stdout), daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    try:
        def up():
            assert proc.poll() is None, b"".join(log).decode()
            try:
                return call(url, "GET", "/health")[0] == 200
            except OSError:
                return False
        wait_until(up, timeout=60, what="ssdecode serve to start")
        workers = _children(proc.pid)
        assert workers, "no draft worker process"
        c = client(url)
        out = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "w1 w2"}],
                                        max_tokens=12, **GREEDY)
        with LLM(target=str(target_dir), mode="ar", max_model_len=96) as ref:
            expected = ref.generate(["w1 w2"], SamplingParams(max_tokens=12, ignore_eos=True))[0].text
        assert out.choices[0].message.content == expected
        assert out.usage.model_extra["mode"] == "ssd"
        conn, resp = open_stream(url, "/v1/completions", {**COMPLETION, "max_tokens": 80, "ignore_eos": True})
        next_event(resp)  # a stream in flight when the signal comes
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        assert time.monotonic() - start < 10
        assert proc.returncode in (0, -signal.SIGTERM), b"".join(log).decode()
        wait_until(lambda: not any(_alive(p) for p in workers), timeout=5, what="the worker processes to exit")
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_undecodable_prompt_text_is_replaced_not_refused(server):
    """A JSON escape of a lone surrogate (bytes that were never UTF-8) becomes U+FFFD, as
    ``ssdecode generate`` does for its argument: a documented replacement, not a 500."""
    for path, field in (("/v1/completions", '"prompt": "w1 \\ud800 w2"'),
                        ("/v1/chat/completions", '"messages": [{"role": "user", "content": "w1 \\udcff"}]')):
        body = '{"model": "%s", %s, "max_tokens": 3, "temperature": 0, "ignore_eos": true}' % (MODEL, field)
        status, out = call(server, "POST", path, body)
        assert status == 200, out
        assert out["usage"]["completion_tokens"] == 3
