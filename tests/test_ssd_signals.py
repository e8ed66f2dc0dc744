"""Interrupting or terminating the parent never waits on the draft worker: a supervisor's SIGINT
or SIGTERM, sent to the server's PID only while an SSD stream is in flight, ends the server within
seconds, with no process left behind and no traceback (the deadlock this guards: both ends blocked
in a gloo send, the parent's Shutdown against the worker's reply)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from server_support import call, client, save_tiny_pair
from ssdecode.bench.faults import alive, worker_pids
from ssdecode.bench.faults import main as fault_soak


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert server.poll() is None, server.communicate()[1].decode()
        try:
            if call(url, "GET", "/health")[0] == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the server did not come up"
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_server_mid_stream_stops_it_and_its_worker(tmp_path, sig):
    target, draft = save_tiny_pair(tmp_path)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "ssdecode.cli", "serve", "--target", str(target), "--draft",
                               str(draft), "--mode", "ssd", "--transport", "process", "--k", "3", "--port", str(port),
                               "--threads", "1", "--max-model-len", "1000"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**os.environ, "OMP_NUM_THREADS": "1"},
                              start_new_session=True)  # the signal reaches the server alone, not its group
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(url, server, timeout_s=120)
        spawned = worker_pids(server.pid)
        assert spawned, "no draft worker process"
        stream = client(url).completions.create(model=str(target), prompt=[1, 2, 3], max_tokens=900, stream=True,
                                                temperature=0, extra_body={"ignore_eos": True})
        next(iter(stream))  # generation is under way
        sent = time.monotonic()
        os.kill(server.pid, sig)
        _, err = server.communicate(timeout=30)
        took = time.monotonic() - sent
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    text = err.decode()
    assert took < 15, f"the server took {took:.1f} s to exit"
    assert "Traceback" not in text, text
    deadline = time.monotonic() + 5
    while any(alive(p) for p in spawned) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in spawned), "a draft worker outlived the server"


def test_a_fault_soak_loses_nothing(tmp_path):
    """A short run of the scripted soak (python -m ssdecode.bench.faults): the worker is killed
    (SIGKILL) and then stopped (SIGSTOP) while two clients stream; every request completes
    unchanged and a restarted worker serves again after each fault."""
    target, draft = save_tiny_pair(tmp_path)
    assert fault_soak(["--target", str(target), "--draft", str(draft), "--prompt-text", "w1 w2 w3",
                       "--prompt-text", "w4 w5", "--max-tokens", "40", "--clients", "2", "--seconds", "300",
                       "--every", "1", "--faults", "2", "--port", str(free_port()), "--serve-arg=--threads",
                       "--serve-arg=1", "--serve-arg=--max-model-len", "--serve-arg=200"]) == 0

