"""The worker registry: each worker (or worker group) announces what it holds and its state under a short TTL, read by
`/readyz`, `GET /v1/models`, queue-depth metrics and Prometheus service discovery."""

from __future__ import annotations

import json
from typing import Any

import redis

ENHANCER_ROLE = "enhancer"
"""The `role` prompt enhancer workers announce; edit workers announce none."""


def edit_workers(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The workers that run edits (GPU workers), not prompt enhancers."""
    return [worker for worker in workers if worker.get("role") != ENHANCER_ROLE]


def ready_enhancers(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [worker for worker in workers if worker.get("role") == ENHANCER_ROLE and worker.get("ready")]


class WorkerRegistry:
    """Workers announce themselves with a short TTL; a worker that stops announcing disappears."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def announce(self, name: str, info: dict[str, Any], ttl_seconds: float) -> None:
        self.client.set(f"{self.prefix}:worker:{name}", json.dumps(info), px=int(ttl_seconds * 1000))

    def withdraw(self, name: str) -> None:
        self.client.delete(f"{self.prefix}:worker:{name}")

    def workers(self) -> list[dict[str, Any]]:
        keys = list(self.client.scan_iter(match=f"{self.prefix}:worker:*", count=100))
        values = self.client.mget(keys) if keys else []
        return [json.loads(v) for v in values if v is not None]
