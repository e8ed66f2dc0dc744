"""torch.distributed transport: the draft worker is rank 1 of a two-rank group (gloo on CPU, NCCL
when both ends are on CUDA), either spawned here (``torch.multiprocessing``, its own device and
thread count) or started elsewhere under torchrun (``python -m ssdecode.decoding.ssd.worker_main``).

A message is at most three point-to-point transfers, all into preallocated buffers: a fixed
1024-element int64 block (header + the start of the payload: a whole round for small batches),
the rest of a long int payload if any (prompts of a large Start), and one float32 tensor of
q's only when some row samples.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ssdecode import envs
from ssdecode.config.deploy import DraftDeployment
from ssdecode.transport.base import Channel, DraftClient
from ssdecode.transport.codec import HEADER, decode, encode
from ssdecode.transport.messages import Shutdown

log = logging.getLogger(__name__)

CHUNK = 1024  # int64 elements of the fixed first transfer
SHUTDOWN_SEND_S = 5.0
WORKER_RANK, TARGET_RANK = 1, 0


class TensorChannel(Channel):
    """Either end of the pair: encode -> send, recv -> decode, over preallocated buffers."""

    def __init__(self, peer: int, device: torch.device | str, group=None):
        """``group``: a private two-rank process group (spawned pairs), or None for the default
        group (torchrun)."""
        self.peer, self.device, self.group = peer, torch.device(device), group
        self.timeout: timedelta | None = None  # per transfer (the client side sets it per request)
        self.send_head = torch.zeros(CHUNK, dtype=torch.int64, device=self.device)
        self.recv_head = torch.zeros(CHUNK, dtype=torch.int64, device=self.device)
        self.ints = torch.zeros(0, dtype=torch.int64, device=self.device)
        self.floats_in = torch.zeros(0, dtype=torch.float32, device=self.device)
        self.floats_out = torch.zeros(0, dtype=torch.float32, device=self.device)

    def send(self, msg) -> None:
        ints, floats = encode(msg)
        n = ints.numel()
        self.send_head[:min(n, CHUNK)].copy_(ints[:CHUNK])
        self._send(self.send_head)
        if n > CHUNK:
            self._send(ints[CHUNK:].to(self.device))
        if floats is not None:
            if floats.device != self.device or not floats.is_contiguous():
                self.floats_out = _grown(self.floats_out, floats.numel())
                floats = self.floats_out[:floats.numel()].copy_(floats.reshape(-1))
            self._send(floats)

    def recv(self):
        self._recv(self.recv_head)
        n, m = self.recv_head[1:HEADER].tolist()
        ints = self.recv_head[:min(n, CHUNK)]
        if n > CHUNK:
            self.ints = _grown(self.ints, n - CHUNK)
            rest = self.ints[:n - CHUNK]
            self._recv(rest)
            ints = torch.cat([ints, rest])
        floats = None
        if m:
            self.floats_in = _grown(self.floats_in, m)
            floats = self.floats_in[:m]
            self._recv(floats)
        return decode(ints, floats)

    def _send(self, t: torch.Tensor) -> None:
        self._wait(dist.isend(t, self.peer) if self.group is None else self.group.send([t], self.peer, 0))

    def _recv(self, t: torch.Tensor) -> None:
        self._wait(dist.irecv(t, self.peer) if self.group is None else self.group.recv([t], self.peer, 0))

    def _wait(self, work) -> None:
        """A gloo send completes only when the peer receives: a hung peer blocks both ways."""
        if self.timeout is None:
            work.wait()
        else:
            try:
                done = work.wait(self.timeout)
            except RuntimeError as e:
                if "timed out" not in str(e).lower() and "timeout" not in str(e).lower():
                    raise
                done = False
            if not done:
                raise TimeoutError(f"the draft worker did not answer within {self.timeout.total_seconds():g} s")


def _grown(buf: torch.Tensor, n: int) -> torch.Tensor:
    return buf if buf.numel() >= n else torch.empty(max(n, 2 * buf.numel()), dtype=buf.dtype, device=buf.device)


@dataclass(frozen=True)
class WorkerLaunch:
    """How a spawned worker joins: rendezvous port, backend, device, threads."""

    port: int
    backend: str
    device: str
    threads: int | None
    dtype: str | None
    weights: str
    timeout_s: float


def pick_backend(config: DraftDeployment, target_device: torch.device, external: bool = False) -> tuple[str, str]:
    """(backend, draft device): NCCL when both ends are on CUDA on different GPUs (NCCL can't
    pair two ranks on one GPU; a worker started elsewhere is assumed to have its own), else gloo."""
    draft_device = config.draft_device or str(target_device)
    if config.backend:
        return config.backend, draft_device
    d, t = torch.device(draft_device), torch.device(target_device)
    both_cuda = d.type == "cuda" and t.type == "cuda"
    same_gpu = both_cuda and (d.index or 0) == (t.index or 0)
    return ("nccl" if both_cuda and (external or not same_gpu) else "gloo"), draft_device


def under_torchrun() -> bool:
    return envs.torchrun_rank() is not None


class DistClient(DraftClient):
    def __init__(self, source, config: DraftDeployment, target_device: torch.device | str, entry=None,
                 cancel: threading.Event | None = None):
        """``entry(source, WorkerLaunch)``: the spawned process's function (decoding.ssd.worker_main's
        ``spawned_worker``); unused when joining a worker started under torchrun. ``cancel``: set
        it to give up waiting for a spawned worker to come up (a background restart that is no
        longer wanted)."""
        target_device = torch.device(target_device)
        launch = config.launch
        if launch == "auto":
            launch = "external" if under_torchrun() else "spawn"
        backend, draft_device = pick_backend(config, target_device, external=launch == "external")
        timeout = timedelta(seconds=config.timeout_s)
        self.proc, self.group = None, None
        self.closed = False
        if launch == "external":
            if dist.is_initialized():
                raise RuntimeError("torch.distributed is already initialized in this process; a torchrun "
                                   "draft worker needs the default two-rank group")
            if envs.torchrun_rank() != TARGET_RANK:
                raise RuntimeError("under torchrun the target must be rank 0 (the draft worker is rank 1)")
            dist.init_process_group(backend, init_method="env://", rank=TARGET_RANK, world_size=2, timeout=timeout)
        else:
            port = _free_port()
            store = dist.TCPStore("127.0.0.1", port, world_size=2, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            ctx = torch.multiprocessing.get_context("spawn")
            info = WorkerLaunch(port, backend, draft_device, config.draft_threads, config.draft_dtype,
                                config.draft_weights, config.timeout_s)
            self.proc = ctx.Process(target=entry, args=(source, info), name="ssd-draft-worker", daemon=True)
            self.proc.start()
            try:
                self._wait_for_worker(store, config.timeout_s, cancel or threading.Event())
                self.group = private_group(backend, store, TARGET_RANK, timeout)
            except BaseException:
                self._stop_process(grace_s=0.0)
                raise
        comm = target_device if backend == "nccl" else torch.device("cpu")
        self.channel = TensorChannel(WORKER_RANK, comm, self.group)

    def _wait_for_worker(self, store, timeout_s: float, cancel: threading.Event) -> None:
        deadline = time.monotonic() + timeout_s
        while not store.check(["worker_up"]):
            if cancel.is_set():
                raise RuntimeError("the draft worker's start was cancelled")
            if not self.proc.is_alive():
                raise RuntimeError(f"the draft worker process exited during startup (code {self.proc.exitcode})")
            if time.monotonic() > deadline:
                raise TimeoutError("the draft worker process did not join within the timeout")
            time.sleep(0.02)

    def send(self, msg, timeout_s: float | None = None) -> None:
        self._transfer(lambda: self.channel.send(msg), timeout_s)

    def recv(self, timeout_s: float | None = None):
        return self._transfer(self.channel.recv, timeout_s)

    def _transfer(self, fn, timeout_s: float | None):
        """``fn()`` under the deadline; a broken link becomes one clear RuntimeError."""
        self.channel.timeout = None if timeout_s is None else timedelta(seconds=timeout_s)
        try:
            return fn()
        except TimeoutError:
            raise
        except Exception as e:  # gloo's "Connection closed by peer" and the like
            raise self._broken(e) from e

    def _broken(self, error: Exception) -> RuntimeError:
        """One clear line for a transfer that failed: the worker exited, or the link broke."""
        if self.proc is not None:
            self.proc.join(0.5)  # a killed worker is reaped in a moment
            if self.proc.exitcode is not None:
                return RuntimeError(f"the draft worker process exited (code {self.proc.exitcode})")
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return RuntimeError(f"the connection to the draft worker broke: {first[:200]}")

    def abandon(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()  # SIGKILL also ends a stopped (SIGSTOP) or hung process
            self.proc.join(5)
        self.group = None

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self.proc is None or self.proc.is_alive():
                self.channel.timeout = timedelta(seconds=SHUTDOWN_SEND_S)  # never wait long on a hung peer
                self.channel.send(Shutdown())
        except Exception as e:  # the peer is gone already (or hung: it is terminated below)
            log.debug("sending Shutdown failed: %s", e)
        self._stop_process()
        if self.group is None:  # the default group belongs to this torchrun pair
            try:
                dist.destroy_process_group()
            except Exception as e:
                log.debug("destroy_process_group failed: %s", e)
        self.group = None

    def _stop_process(self, grace_s: float = 5.0) -> None:
        if self.proc is None:
            return
        self.proc.join(grace_s)
        if self.proc.is_alive():
            log.warning("draft worker did not exit after Shutdown; terminating it")
            self.proc.terminate()
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def private_group(backend: str, store, rank: int, timeout: timedelta):
    """A two-rank process group of its own (not the default group), so several spawned draft
    workers (one per SSD strategy, e.g. a benchmark comparing K) can live in one process."""
    if backend == "nccl":
        opts = dist.ProcessGroupNCCL.Options()
        opts._timeout = timeout
        return dist.ProcessGroupNCCL(store, rank, 2, opts)
    return dist.ProcessGroupGloo(store, rank, 2, timeout)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
