"""The environment the GPU benchmarks give the service's processes on one machine: the embedded stack's pieces
(a redis-server on `redis_port`, local storage under `data`), the API on `port` without keys, plain log lines and a
free metrics port."""

from __future__ import annotations

import secrets
from pathlib import Path

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
