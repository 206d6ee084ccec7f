"""API keys and tenants: keys kept only as SHA-256 hashes in Redis, each key belonging to a tenant and carrying the
`whsec_` secret that signs the webhooks of the jobs it submits. The API authenticates with them (`service/api/auth.py`);
the webhook worker signs with them. Keys are created and revoked with `chronoedit keys ...`; the key is printed once.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from typing import cast

import redis
from pydantic import BaseModel

KEY_TOKEN_PREFIX = "ce_"  # noqa: S105 - a prefix that makes leaked keys recognisable, not a secret


class ApiKey(BaseModel):
    """An API key's record; the key itself is never stored, only its hash."""

    id: str
    tenant: str
    name: str = ""
    key_hash: str
    webhook_secret: str
    created_at: float
    revoked_at: float | None = None
    rate_limit_per_minute: int | None = None
    """None: the API's `CHRONOEDIT_RATE_LIMIT_PER_MINUTE`."""
    max_concurrent_jobs: int | None = None
    """None: the API's `CHRONOEDIT_MAX_CONCURRENT_JOBS`."""


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    """A Standard Webhooks secret: `whsec_` + base64 of 24 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


class KeyStore:
    """API keys in Redis: `<prefix>:apikey:<id>` (the record) and `<prefix>:apikey-hash:<sha256>` (-> id)."""

    def __init__(self, client: redis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix

    def _record(self, key_id: str) -> str:
        return f"{self.prefix}:apikey:{key_id}"

    def _by_hash(self, digest: str) -> str:
        return f"{self.prefix}:apikey-hash:{digest}"

    def create(
        self, tenant: str, name: str = "", rate_limit: int | None = None, max_concurrent: int | None = None
    ) -> tuple[str, ApiKey]:
        """Returns the key (shown once, never stored) and its record."""
        token = KEY_TOKEN_PREFIX + secrets.token_urlsafe(32)
        record = ApiKey(
            id="key_" + secrets.token_hex(8),
            tenant=tenant,
            name=name,
            key_hash=hash_key(token),
            webhook_secret=new_webhook_secret(),
            created_at=time.time(),
            rate_limit_per_minute=rate_limit,
            max_concurrent_jobs=max_concurrent,
        )
        with self.client.pipeline() as pipe:
            pipe.set(self._record(record.id), record.model_dump_json())
            pipe.set(self._by_hash(record.key_hash), record.id)
            pipe.execute()
        return token, record

    def get(self, key_id: str) -> ApiKey | None:
        raw = self.client.get(self._record(key_id))
        return ApiKey.model_validate_json(raw) if raw is not None else None

    def lookup(self, token: str) -> ApiKey | None:
        """The live key whose hash matches `token`, or None."""
        key_id = self.client.get(self._by_hash(hash_key(token)))
        record = self.get(cast(bytes, key_id).decode()) if key_id is not None else None
        return record if record is not None and record.revoked_at is None else None

    def revoke(self, key_id: str) -> bool:
        """Revoked keys stop authenticating at once; the record stays so their jobs' webhooks can still be signed."""
        record = self.get(key_id)
        if record is None or record.revoked_at is not None:
            return False
        revoked = record.model_copy(update={"revoked_at": time.time()})
        self.client.set(self._record(key_id), revoked.model_dump_json())
        self.client.delete(self._by_hash(record.key_hash))
        return True

    def all(self) -> list[ApiKey]:
        keys = list(self.client.scan_iter(match=self._record("*"), count=500))
        values = cast(list[bytes | None], self.client.mget(keys)) if keys else []
        records = [ApiKey.model_validate_json(v) for v in values if v is not None]
        return sorted(records, key=lambda record: record.created_at)
