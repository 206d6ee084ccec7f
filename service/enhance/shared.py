"""Enhancements shared between identical requests: batch items (or a review through `POST /v1/prompts/enhance`
and the job that follows it) with the same tenant, kind, instruction and image bytes get one enhancement.

The key hashes those with the enhancer's name and the system prompts' digest, so another model or a reworded system
prompt never reuses an answer. One enhancer runs a key at a time: the others wait for its answer (single flight),
and run it themselves if it does not come. Entries live as long as outputs do; tenants never share them.
"""

from __future__ import annotations

import hashlib
import json
import time

import redis

from service.enhance.prompts import PROMPT_DIGEST


class SharedEnhancements:
    def __init__(self, client: redis.Redis, prefix: str, ttl_seconds: int) -> None:
        self.client = client
        self.prefix = prefix
        self.ttl = ttl_seconds

    def key(self, tenant: str, enhancer: str, kind: str, prompt: str, image_sha256: str) -> str:
        identity = [tenant, enhancer, PROMPT_DIGEST, kind, prompt, image_sha256]
        digest = hashlib.sha256(json.dumps(identity).encode()).hexdigest()
        return f"{self.prefix}:enhanced:{tenant}:{digest}"

    def get(self, key: str) -> str | None:
        raw = self.client.get(key)
        return raw.decode() if isinstance(raw, bytes) else None

    def put(self, key: str, text: str) -> None:
        self.client.set(key, text, ex=self.ttl)

    def claim(self, key: str, seconds: float) -> bool:
        """True when this caller is to run the enhancement; the claim lapses after `seconds`."""
        return bool(self.client.set(f"{key}:running", "1", nx=True, px=int(seconds * 1000)))

    def release(self, key: str) -> None:
        self.client.delete(f"{key}:running")

    def wait(self, key: str, seconds: float, poll: float = 0.1) -> str | None:
        """The answer of the enhancer holding the claim, or None when it is gone or does not answer in time."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            text = self.get(key)
            if text is not None or not self.client.exists(f"{key}:running"):
                return text
            time.sleep(poll)
        return None
