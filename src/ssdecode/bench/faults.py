"""A fault soak: an SSD server whose draft worker is killed (SIGKILL) and hung (SIGSTOP) again and
again while clients stream greedy completions. Nothing may be lost: every request ends with all
its tokens, equal to the same request's output before the faults began (greedy outputs do not
depend on the draft), and the server exits promptly at the end. Prints one JSON line; exits 1 on
a lost or changed request.

    python -m ssdecode.bench.faults --seconds 300 --clients 3 --every 10 --max-tokens 64

After each fault it waits until a restarted worker serves again (``/health`` back to "ok"), then
lets it serve ``--every`` seconds before the next fault; it reports the slowest recovery.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

from ssdecode.bench.prompts import load_prompts

KILL_KINDS = (signal.SIGKILL, signal.SIGSTOP)


def worker_pids(server_pid: int) -> list[int]:
    """The server's spawned draft worker processes (not multiprocessing's resource tracker)."""
    pids = []
    for task in Path(f"/proc/{server_pid}/task").glob("*/children"):
        for pid in task.read_text().split():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except FileNotFoundError:
                continue
            if "multiprocessing" in cmd and "resource_tracker" not in cmd:
                pids.append(int(pid))
    return pids


def metric(text: str, name: str) -> float:
    return next((float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")), 0.0)


class Soak:
    def __init__(self, url: str, prompts: list[str], max_tokens: int, model: str):
        import openai  # the server extra: optional

        self.client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        self.prompts, self.max_tokens, self.model = prompts, max_tokens, model
        self.reference: dict[int, list[int]] = {}
        self.lock = threading.Lock()
        self.done = self.lost = self.changed = self.tokens = 0
        self.errors: list[str] = []

    def complete(self, i: int) -> list[int]:
        ids = []
        for chunk in self.client.completions.create(model=self.model, prompt=self.prompts[i], stream=True,
                                                    max_tokens=self.max_tokens, temperature=0,
                                                    extra_body={"ignore_eos": True, "return_token_ids": True}):
            for choice in chunk.choices:
                ids += (choice.model_extra or {}).get("token_ids") or []
        return ids

    def client_loop(self, start: int, stop: threading.Event) -> None:
        i = start
        while not stop.is_set():
            n = i % len(self.prompts)
            try:
                ids = self.complete(n)
            except Exception as e:  # a lost request
                ids, error = None, f"{type(e).__name__}: {e}"
            with self.lock:
                if ids is None or len(ids) != self.max_tokens:
                    self.lost += 1
                    self.errors.append(error if ids is None else f"prompt {n}: {len(ids)} tokens")
                else:
                    self.done += 1
                    self.tokens += len(ids)
                    self.changed += ids != self.reference[n]
            i += 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--target", default="demo-target")
    p.add_argument("--draft", default="demo-draft")
    p.add_argument("--prompts", default="humaneval,stdlib", help="prompt sets (ssdecode.bench.prompts)")
    p.add_argument("--prompt-text", action="append", default=[], help="literal prompts instead of the sets")
    p.add_argument("--num-prompts", type=int, default=4, help="per set")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--clients", type=int, default=3)
    p.add_argument("--seconds", type=float, default=300.0, help="how long the faults go on")
    p.add_argument("--every", type=float, default=10.0, help="seconds of SSD serving between faults")
    p.add_argument("--faults", type=int, default=0, help="stop after this many faults (0: no limit)")
    p.add_argument("--port", type=int, default=8011)
    p.add_argument("--serve-arg", action="append", default=[], help="extra `ssdecode serve` argument")
    args = p.parse_args(argv)
    prompts = args.prompt_text or [x.text for s in args.prompts.split(",")
                                   for x in _load(s, args.num_prompts)]
    url = f"http://127.0.0.1:{args.port}"
    log = tempfile.TemporaryFile()  # the server's stderr (a pipe nobody reads would fill and block it)
    server = subprocess.Popen([sys.executable, "-m", "ssdecode.cli", "-v", "serve", "--target", args.target, "--draft",
                               args.draft, "--mode", "ssd", "--transport", "process", "--port", str(args.port),
                               "--max-num-seqs", str(args.clients), *args.serve_arg],
                              stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    report, seen, stop = {"faults": {}, "prompts": len(prompts)}, set(), threading.Event()
    try:
        _wait_healthy(url, server)
        soak = Soak(url, prompts, args.max_tokens, args.target)
        for i in range(len(prompts)):  # references, before any fault
            soak.reference[i] = soak.complete(i)
        clients = [threading.Thread(target=soak.client_loop, args=(c, stop), daemon=True)
                   for c in range(args.clients)]
        for t in clients:
            t.start()
        t0, n, recovery = time.monotonic(), 0, []
        while time.monotonic() - t0 < args.seconds and not 0 < args.faults <= n:
            time.sleep(args.every)
            pids = worker_pids(server.pid)  # a serving worker: the server is healthy again
            seen.update(pids)
            kind = KILL_KINDS[n % 2]
            os.kill(pids[0], kind)
            report["faults"][kind.name] = report["faults"].get(kind.name, 0) + 1
            n += 1
            try:
                recovery.append(_until_healthy_again(url))
            except TimeoutError as e:
                report["unrecovered"] = str(e)
                break
            print(f"{time.monotonic() - t0:6.0f} s: {n} faults, back to SSD in {recovery[-1]:.1f} s; "
                  f"{soak.done} done, {soak.lost} lost, {soak.changed} changed", file=sys.stderr, flush=True)
        stop.set()
        for t in clients:
            t.join()
        elapsed = time.monotonic() - t0
        seen.update(worker_pids(server.pid))
        metrics = _get(url, "/metrics")
        report.update(recovery_s_max=round(max(recovery, default=0), 1), done=soak.done, lost=soak.lost,
                      changed=soak.changed, errors=soak.errors[:5],
                      tokens_per_s=round(soak.tokens / elapsed, 2), seconds=round(elapsed, 1),
                      worker_failures=metric(metrics, "ssdecode_draft_worker_failures_total"),
                      worker_restarts=metric(metrics, "ssdecode_draft_worker_restarts_total"),
                      health=json.loads(_get(url, "/health"))["status"])
    finally:
        stop.set()
        t1 = time.monotonic()
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.seek(0)
        report.update(exit_s=round(time.monotonic() - t1, 1), exit_code=server.returncode,
                      traceback="Traceback" in log.read().decode(errors="replace"),
                      workers_left=sum(alive(pid) for pid in seen))
    print(json.dumps(report))
    ok = ("unrecovered" not in report and report.get("lost") == 0 and not report.get("changed")
          and report["exit_s"] < 30 and not report["traceback"] and not report["workers_left"])
    return 0 if ok else 1


def _load(name: str, n: int):
    return load_prompts(name, n)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _get(url: str, path: str) -> str:
    with urllib.request.urlopen(url + path, timeout=60) as r:
        return r.read().decode()


def _until_healthy_again(url: str, timeout_s: float = 300) -> float:
    """Seconds until /health says "ok" after a fault (first "degraded", then a worker is back)."""
    t0 = time.monotonic()
    while json.loads(_get(url, "/health"))["status"] == "ok":  # the fault not noticed yet
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError("the fault was never noticed")
        time.sleep(0.1)
    while json.loads(_get(url, "/health"))["status"] != "ok":
        if time.monotonic() - t0 > timeout_s:
            raise TimeoutError(f"no draft worker serving {timeout_s:.0f} s after a fault")
        time.sleep(0.2)
    return time.monotonic() - t0


def _wait_healthy(url: str, server: subprocess.Popen, timeout_s: float = 600) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the server exited with code {server.returncode}")
        try:
            _get(url, "/health")
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError("the server did not come up")


if __name__ == "__main__":
    sys.exit(main())
