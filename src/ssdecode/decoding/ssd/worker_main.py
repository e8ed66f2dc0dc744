"""The draft worker process: rank 1 of the SSD pair.

Spawned by the process transport, or started by hand under torchrun so the draft runs on another
device or host, e.g. with the target (rank 0) on host A::

    # host B (draft)
    torchrun --nnodes 2 --node-rank 1 --nproc-per-node 1 --master-addr A --master-port 29500 \\
        -m ssdecode.decoding.ssd.worker_main --draft demo-draft --device cuda:0
    # host A (target): same torchrun flags with --node-rank 0, running the ssdecode program with
    # the ssd transport 'process' (launch 'auto' or 'external' picks up the torchrun environment)

The algorithm's configuration arrives from the target in the ``Setup`` message; this process only
needs to know what to load and where.
"""
from __future__ import annotations

import argparse
import logging
import signal
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist

from ssdecode import envs
from ssdecode.decoding.ssd.worker import DraftWorker
from ssdecode.transport.base import serve
from ssdecode.transport.dist import TARGET_RANK, WORKER_RANK, TensorChannel, WorkerLaunch, private_group
from ssdecode.transport.model_source import load_draft

log = logging.getLogger(__name__)


class _FailedWorker:
    """Stands in when the draft could not be loaded: every request gets the load error."""

    def __init__(self, error: str):
        self.error = error

    def handle(self, msg):
        raise RuntimeError(f"the draft model failed to load:\n{self.error}")

    def prepare(self) -> None:
        pass


def run_worker(source, device: str, dtype: str | None, weights: str, backend: str, group=None) -> None:
    """Load the draft and serve the target (rank 0) until Shutdown over ``group`` (None: the
    default group, joined already)."""
    if torch.device(device).type == "cuda":
        torch.cuda.set_device(torch.device(device))
    try:
        worker = DraftWorker(load_draft(source, device, dtype, weights))
    except Exception:
        worker = _FailedWorker(traceback.format_exc())
    comm = device if backend == "nccl" else "cpu"
    try:
        serve(worker, TensorChannel(TARGET_RANK, comm, group))
    finally:
        if group is None:
            dist.destroy_process_group()


def spawned_worker(source, info: WorkerLaunch) -> None:
    """Entry point of a worker spawned by DistClient (its ``entry``). Ctrl+C reaches the whole
    process group; the parent owns the shutdown (it sends Shutdown, then terminates), so the
    worker ignores SIGINT instead of dying mid-message with a traceback."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if info.threads:
        torch.set_num_threads(info.threads)
    timeout = timedelta(seconds=info.timeout_s)
    store = dist.TCPStore("127.0.0.1", info.port, world_size=2, is_master=False, timeout=timeout)
    store.set("worker_up", "1")
    group = private_group(info.backend, store, WORKER_RANK, timeout)
    run_worker(source, info.device, info.dtype, info.weights, info.backend, group)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m ssdecode.decoding.ssd.worker_main", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--draft", required=True, help="draft model: demo-draft, an HF folder, a .gguf file or a hub id")
    p.add_argument("--device", default=None, help="draft device (default: cuda:LOCAL_RANK if CUDA, else cpu)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: per device)")
    p.add_argument("--weights", default="auto", help="matmul weight format: auto, dense, packed, int8, int4, gguf")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--backend", default=None, help="gloo or nccl (default: nccl on CUDA)")
    p.add_argument("--timeout", type=float, default=600.0, help="collective timeout in seconds")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s draft-worker %(levelname)s %(message)s")
    if envs.torchrun_rank() != WORKER_RANK:
        p.error("run under torchrun as rank 1 of a world of 2 (RANK=1, WORLD_SIZE=2)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or (f"cuda:{envs.local_rank()}" if torch.cuda.is_available() else "cpu")
    backend = args.backend or ("nccl" if torch.device(device).type == "cuda" else "gloo")
    dist.init_process_group(backend, init_method="env://", rank=WORKER_RANK, world_size=2,
                            timeout=timedelta(seconds=args.timeout))
    log.info("draft worker up: %s on %s (%s)", args.draft, device, backend)
    run_worker(args.draft, device, args.dtype, args.weights, backend)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
