"""Helpers for the server tests: tiny LLMs with a chat template, a real uvicorn server on a free
port in a thread, raw HTTP calls (for bodies no client would send, and for hanging up mid-stream),
and tiny Hugging Face folders for ``ssdecode serve`` subprocesses."""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import openai
import torch
import uvicorn
from transformers import LlamaConfig, LlamaForCausalLM

from ssd_support import SlowModel
from ssdecode.engine.llm import LLM
from ssdecode.server.serve import EngineServer
from tiny import tiny_hf_config, tiny_tokenizer

CHAT_TEMPLATE = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
MODEL = "tiny"


def chat_tokenizer():
    tok = tiny_tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    return tok


def tiny_llm(mode: str, target, draft, delay: float = 0.0, **kwargs) -> LLM:
    """An LLM over the tiny pair (SSD: draft worker in a thread); ``delay`` seconds per target
    forward keep requests running long enough to overlap, queue or be hung up on."""
    if delay:
        target = SlowModel(target, delay)
    kwargs = {"k": 3, "max_model_len": 128, "ssd": {"transport": "thread"} if mode == "ssd" else None, **kwargs}
    return LLM.from_models(chat_tokenizer(), target, draft, mode=mode, **kwargs)


@contextmanager
def running(app):
    """Serve ``app`` with uvicorn in a thread on a free port; yield its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = EngineServer(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(20)
        sock.close()
        assert not thread.is_alive(), "the server did not shut down"


def client(url: str, api_key: str = "unused", timeout: float = 60) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=api_key, max_retries=0, timeout=timeout)


def connect(url: str) -> http.client.HTTPConnection:
    u = urlparse(url)
    return http.client.HTTPConnection(u.hostname, u.port, timeout=60)


def call(url: str, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict | str]:
    """One raw request; (status, parsed JSON or text). ``body``: a dict (sent as JSON) or raw text."""
    conn = connect(url)
    data = body if isinstance(body, (str, type(None))) else json.dumps(body)
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except json.JSONDecodeError:
        return resp.status, text


def wait_until(predicate, timeout: float = 10.0, what: str = "the condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def save_tiny_pair(root: Path, context: int = 1024) -> tuple[Path, Path]:
    """Random tiny target (seed 0) and draft (seed 1) as HF folders sharing the tiny tokenizer
    (with a chat template). Llama-typed, with tests/tiny.py's shapes: for a qwen2 folder,
    Transformers 5 rebuilds the tokenizer as Qwen2's byte-level BPE, which the word-level one is not."""
    q = tiny_hf_config(context=context)
    config = LlamaConfig(vocab_size=q.vocab_size, hidden_size=q.hidden_size, intermediate_size=q.intermediate_size,
                         num_hidden_layers=q.num_hidden_layers, num_attention_heads=q.num_attention_heads,
                         num_key_value_heads=q.num_key_value_heads, max_position_embeddings=context,
                         tie_word_embeddings=False, eos_token_id=q.eos_token_id, bos_token_id=None)
    dirs = []
    for seed, name in [(0, "target"), (1, "draft")]:
        torch.manual_seed(seed)
        path = root / name
        LlamaForCausalLM(config).eval().save_pretrained(path)
        chat_tokenizer().save_pretrained(path)
        dirs.append(path)
    return dirs[0], dirs[1]


def open_stream(url: str, path: str, body: dict):
    """POST a streaming request; (connection, response) to read events from and hang up on."""
    conn = connect(url)
    conn.request("POST", path, json.dumps({**body, "stream": True}), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.read()
    return conn, resp


def next_event(resp) -> dict | str:
    """The next server-sent event's data (parsed JSON, or the literal such as ``[DONE]``)."""
    while True:
        line = resp.readline().decode()
        assert line, "the stream ended"
        if line.startswith("data: "):
            data = line[len("data: "):].strip()
            return data if data.startswith("[") else json.loads(data)
