"""Two ways to use N GPUs (`chronoedit worker --gpus N`):

- a worker group (the default): torchrun starts N ranks of `worker.group`; each job runs on all N GPUs at once
  (guidance split, sequence parallel), so one job finishes up to N times sooner. For long jobs: temporal reasoning.
- `--replicas`: N independent single-GPU workers, one process per GPU, each with its own name and metrics port;
  N jobs run side by side. For throughput: catalog batches of short edits.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from typing import NoReturn

from service.cli.processes import Child, python_module
from worker.settings import WorkerSettings

REPLICA_STOP_SECONDS = 600.0
"""A replica's warm shutdown finishes its running job first; give it that long before it is killed."""


def exec_group(gpus: int) -> NoReturn:
    """Replace this process with torchrun running `gpus` ranks of the worker group; its exit status is ours
    (non-zero when any rank failed). `--standalone` rendezvous on a free local port, so groups never clash."""
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={gpus}"]
    os.execv(sys.executable, [*argv, "-m", "worker.group"])  # noqa: S606 - a fixed argv of our own


def run_replicas(gpus: int) -> int:
    """Start one single-GPU worker per GPU and supervise them: when one exits, stop the others (each finishes its
    running job) and exit with its status, so a process supervisor restarts the set."""
    settings = WorkerSettings()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(index) for index in range(gpus)]
    if len(devices) < gpus:
        raise SystemExit(f"--gpus {gpus} --replicas, but CUDA_VISIBLE_DEVICES names only {visible}")
    worker = python_module("service.cli", "worker")
    replicas = [Child(f"replica-{i}", worker, _replica_env(settings, i, devices[i])) for i in range(gpus)]
    signalled: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda number, _: signalled.append(number))
    try:
        while not signalled and all(replica.alive() for replica in replicas):
            time.sleep(0.5)
    finally:
        _stop_all(replicas)
    return 0 if signalled else max(abs(replica.process.returncode or 0) for replica in replicas)


def _replica_env(settings: WorkerSettings, index: int, device: str) -> dict[str, str]:
    env = {"CUDA_VISIBLE_DEVICES": device, "CHRONOEDIT_WORKER_NAME": f"{settings.worker_name}-gpu{index}"}
    if settings.metrics_port:
        env["CHRONOEDIT_METRICS_PORT"] = str(settings.metrics_port + index)
    return env


def _stop_all(replicas: list[Child]) -> None:
    """SIGTERM to every replica at once (warm shutdowns run side by side), then wait for each."""
    for replica in replicas:
        if replica.alive():
            replica.kill(signal.SIGTERM)
    deadline = time.monotonic() + REPLICA_STOP_SECONDS
    for replica in replicas:
        replica.stop(timeout=max(1.0, deadline - time.monotonic()))
