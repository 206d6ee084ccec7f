"""Stripe-style `Idempotency-Key` for every creating POST.

A key is scoped by tenant and kept `CHRONOEDIT_IDEMPOTENCY_TTL_SECONDS` (24 h). The first request claims it with
`SET NX` and a fingerprint of the request (the parsed fields and a hash of the image bytes, so multipart boundaries do
not matter); when it is done, the response (status and body) is stored under the key. Then:
- same key, same request: the stored response is replayed (same status, same body, `Idempotent-Replayed: true`);
- same key, other request: 422 `idempotency_key_reuse`;
- same key while the first is still running: the duplicate waits up to `CHRONOEDIT_IDEMPOTENCY_WAIT_SECONDS` for the
  first one's response and replays it, else answers 409 `idempotency_key_in_progress` (retry later).
A request refused with an error creates nothing and releases the key, so a corrected retry may reuse it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from service.api.errors import ApiError

MAX_KEY_LENGTH = 255
REPLAY_HEADER = "Idempotent-Replayed"


@dataclass
class StoredResponse:
    status: int
    body: dict[str, Any]
    headers: dict[str, str]


def fingerprint(route: str, fields: dict[str, Any], data: bytes = b"") -> str:
    """A hash of what the request asks for: route, fields (canonical JSON) and the image bytes."""
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    digest = hashlib.sha256(route.encode() + b"\n" + canonical.encode() + b"\n")
    digest.update(hashlib.sha256(data).digest())
    return digest.hexdigest()


class Idempotency:
    def __init__(self, client: aioredis.Redis, prefix: str, ttl_seconds: int, wait_seconds: float) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl_seconds
        self.wait = wait_seconds

    def _key(self, tenant: str, key: str) -> str:
        return f"{self.prefix}:idem:{tenant}:{hashlib.sha256(key.encode()).hexdigest()}"

    async def run(
        self, tenant: str, key: str | None, print_: str, create: Callable[[], Awaitable[StoredResponse]]
    ) -> tuple[StoredResponse, bool]:
        """Run `create` once per (tenant, key); returns the response and whether it is a replay."""
        if key is None:
            return await create(), False
        if not 0 < len(key) <= MAX_KEY_LENGTH:
            raise ApiError(422, "invalid_idempotency_key", f"Idempotency-Key must be 1-{MAX_KEY_LENGTH} characters")
        redis_key = self._key(tenant, key)
        claim = json.dumps({"state": "pending", "fingerprint": print_})
        if await self.client.set(redis_key, claim, nx=True, ex=self.ttl):
            return await self._first(redis_key, print_, create), False
        return await self._duplicate(redis_key, print_), True

    async def _first(
        self, redis_key: str, print_: str, create: Callable[[], Awaitable[StoredResponse]]
    ) -> StoredResponse:
        try:
            response = await create()
        except BaseException:
            await self.client.delete(redis_key)  # nothing was created: the key is free again
            raise
        done = {"state": "done", "fingerprint": print_, **response.__dict__}
        await self.client.set(redis_key, json.dumps(done), ex=self.ttl)
        return response

    async def _duplicate(self, redis_key: str, print_: str) -> StoredResponse:
        deadline = time.monotonic() + self.wait
        while True:
            raw = await self.client.get(redis_key)
            if raw is None:
                raise ApiError(409, "idempotency_key_in_progress", "the first request with this key failed; retry it")
            entry = json.loads(raw)
            if entry["fingerprint"] != print_:
                raise ApiError(
                    422,
                    "idempotency_key_reuse",
                    "this Idempotency-Key was used with a different request; use a new key for a new request",
                )
            if entry["state"] == "done":
                return StoredResponse(entry["status"], entry["body"], entry.get("headers", {}))
            if time.monotonic() >= deadline:
                raise ApiError(
                    409,
                    "idempotency_key_in_progress",
                    "a request with this Idempotency-Key is still being processed; retry shortly",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(0.05)
