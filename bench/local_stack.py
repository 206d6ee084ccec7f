"""The service on one GPU machine for the benchmarks that go through its API: the embedded stack's pieces (a
redis-server, local storage), one worker command and the API without keys, plain log lines, free ports."""

from __future__ import annotations

import secrets
import time
from collections.abc import Sequence
from pathlib import Path

from service.cli.processes import Child, free_port, python_module, start_redis, wait_http

ROOT = Path(__file__).resolve().parent.parent


def stack_env(data: Path, model: Path, redis_port: int, port: int, **settings: str) -> dict[str, str]:
    """`settings`: further environment variables, e.g. the worker's queues and name."""
    return {
        "PYTHONPATH": str(ROOT),
        "CHRONOEDIT_REDIS_URL": f"redis://127.0.0.1:{redis_port}/0",
        "CHRONOEDIT_STORAGE_BACKEND": "local",
        "CHRONOEDIT_STORAGE_DIR": str(data / "storage"),
        "CHRONOEDIT_URL_SIGNING_SECRET": secrets.token_hex(16),
        "CHRONOEDIT_MODEL_DIR": str(model),
        "CHRONOEDIT_PORT": str(port),
        "CHRONOEDIT_AUTH_REQUIRED": "false",
        "CHRONOEDIT_METRICS_PORT": "0",
        "CHRONOEDIT_LOG_FORMAT": "plain",
        **settings,
    }


def start_local_stack(
    data: Path,
    logs: Path,
    model: Path,
    worker_args: Sequence[str],
    children: list[Child],
    timeout: float,
    **settings: str,
) -> tuple[str, Child, float]:
    """Start redis, `chronoedit worker WORKER_ARGS` and the API (appended to `children`, to stop in reverse); wait
    until the API is ready, which needs a ready worker. Returns the API's URL, the worker and the seconds it took."""
    redis_port, port = free_port(), free_port()
    env = stack_env(data, model, redis_port, port, **settings)
    children.append(start_redis(redis_port, data / "redis", log=logs / "redis.log"))
    started = time.monotonic()
    worker = Child("worker", python_module("service.cli", "worker", *worker_args), env, log=logs / "worker.log")
    children.append(worker)
    children.append(Child("api", python_module("service.cli", "api"), env, log=logs / "api.log"))
    base = f"http://127.0.0.1:{port}"
    wait_http(f"{base}/readyz", children[-1], timeout=timeout)
    return base, worker, time.monotonic() - started
