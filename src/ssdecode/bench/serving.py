"""The serving benchmark: a live ``ssdecode serve`` per mode, driven by N concurrent streaming
clients (the official ``openai`` client) over a prompt set.

Each mode gets its own server process (started, timed, shut down: one set of weights in memory
at a time). For each concurrency level N, N closed-loop clients take the set's prompts from one
queue: a client sends its next request as soon as its previous one finished. Every request is
greedy with a fixed length (``ignore_eos``), so all modes produce the same tokens and the same
amount of work. Reported per (mode, set, N): output tokens/s over the level's wall time, time to
first token and inter-chunk latency (p50/p99), time per output token, and the speculation
counts the server adds to ``usage``.
"""
from __future__ import annotations

import asyncio
import logging
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field

from ssdecode import envs

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600


@dataclass
class RequestTiming:
    text: str = ""
    ttft: float | None = None
    gaps: list[float] = field(default_factory=list)  # seconds between content chunks
    total: float = 0.0
    tokens: int = 0
    usage: dict = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


class ServerProcess:
    """``ssdecode serve`` in a child process on a free loopback port."""

    def __init__(self, args: list[str]):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "ssdecode.cli", "serve", "--host", "127.0.0.1", "--port", str(self.port), *args]
        log.info("starting %s", " ".join(cmd))
        self.log = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and stall the server
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log, text=True)
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"the server exited during startup:\n{self.log.read()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:  # not listening yet (URLError is an OSError)
                pass
            time.sleep(1.0)
        raise TimeoutError("the server did not become ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


async def _one(client, model: str, prompt, max_tokens: int) -> RequestTiming:
    """One streaming request; ``prompt`` is bench.prompts.Prompt (chat or raw completion)."""
    t = RequestTiming()
    common = dict(model=model, max_tokens=max_tokens, temperature=0.0, stream=True,
                  stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    start = last = time.perf_counter()
    if prompt.chat:
        stream = await client.chat.completions.create(messages=[{"role": "user", "content": prompt.text}], **common)
    else:
        stream = await client.completions.create(prompt=prompt.text, **common)
    async for chunk in stream:
        if chunk.usage is not None:
            t.usage = chunk.usage.model_dump()
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        piece = choice.delta.content if prompt.chat else choice.text
        if piece:
            now = time.perf_counter()
            if t.ttft is None:
                t.ttft = now - start
            else:
                t.gaps.append(now - last)
            last = now
            t.text += piece
    t.total = time.perf_counter() - start
    t.tokens = t.usage.get("completion_tokens", 0)
    return t


async def run_level(base_url: str, prompts: list, concurrency: int,
                    max_tokens: int) -> tuple[float, list[RequestTiming]]:
    """``concurrency`` closed-loop clients over ``prompts``; (wall seconds, timings in prompt order)."""
    from openai import AsyncOpenAI  # the server extra: optional

    client = AsyncOpenAI(base_url=base_url, api_key=envs.api_key() or "none", max_retries=0,
                         timeout=3600)
    queue: asyncio.Queue = asyncio.Queue()
    for i, p in enumerate(prompts):
        queue.put_nowait((i, p))
    out: list[RequestTiming | None] = [None] * len(prompts)
    model = (await client.models.list()).data[0].id

    async def worker():
        while not queue.empty():
            i, p = queue.get_nowait()
            out[i] = await _one(client, model, p, max_tokens)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    await client.close()
    return wall, out


def summarize(mode: str, set_name: str, concurrency: int, wall: float, timings: list[RequestTiming]) -> dict:
    tokens = sum(t.tokens for t in timings)
    gaps = [g for t in timings for g in t.gaps]
    tpot = [(t.total - t.ttft) / (t.tokens - 1) for t in timings if t.ttft is not None and t.tokens > 1]
    drafted = sum(t.usage.get("draft_tokens") or 0 for t in timings)
    accepted = sum(t.usage.get("accepted_tokens") or 0 for t in timings)
    hits = sum(t.usage.get("ssd_hits") or 0 for t in timings)
    misses = sum(t.usage.get("ssd_misses") or 0 for t in timings)
    ms = lambda x: None if x is None else round(1000 * x, 1)
    return {
        "mode": mode, "prompts": set_name, "concurrency": concurrency, "requests": len(timings),
        "output_tokens": tokens, "wall_s": round(wall, 2), "output_tokens_per_s": round(tokens / wall, 3),
        "ttft_p50_ms": ms(percentile([t.ttft for t in timings if t.ttft is not None], 50)),
        "ttft_p99_ms": ms(percentile([t.ttft for t in timings if t.ttft is not None], 99)),
        "itl_p50_ms": ms(percentile(gaps, 50)), "itl_p99_ms": ms(percentile(gaps, 99)),
        "tpot_mean_ms": ms(sum(tpot) / len(tpot)) if tpot else None,
        "acceptance": round(accepted / drafted, 4) if drafted else None,
        "hit_rate": round(hits / (hits + misses), 4) if hits + misses else None,
    }


def bench_serving(server_args: dict[str, list[str]], sets: dict[str, list], levels: list[int],
                  max_tokens: int, progress=None) -> list[dict]:
    """For each mode (its ``ssdecode serve`` arguments), each prompt set and each concurrency
    level: one row. ``progress(str)`` is told what runs (the CLI prints it)."""
    rows, texts = [], {}
    for mode, args in server_args.items():
        server = ServerProcess(args)
        try:
            server.wait_ready()
            first = next(iter(sets.values()))[:1]
            asyncio.run(run_level(server.base_url, first, 1, 4))  # warm-up, not timed
            for set_name, prompts in sets.items():
                for n in levels:
                    if progress:
                        progress(f"{mode} {set_name} concurrency {n}: {len(prompts)} requests x {max_tokens} tokens")
                    wall, timings = asyncio.run(run_level(server.base_url, prompts, n, max_tokens))
                    row = summarize(mode, set_name, n, wall, timings)
                    base = texts.setdefault((set_name, n), [t.text for t in timings])
                    row["text_matches_first_mode"] = round(
                        sum(a == t.text for a, t in zip(base, timings)) / len(timings), 3)
                    rows.append(row)
                    if progress:
                        progress(format_row(row))
        finally:
            server.stop()
    return rows


COLUMNS = ["mode", "prompts", "concurrency", "output_tokens_per_s", "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms",
           "itl_p99_ms", "tpot_mean_ms", "acceptance", "hit_rate", "text_matches_first_mode"]


def format_row(row: dict) -> str:
    return " | ".join(f"{'-' if row.get(c) is None else row.get(c)!s:>10}" for c in COLUMNS)
