"""API keys and tenants: `Authorization: Bearer <key>`, keys kept only as SHA-256 hashes in Redis, each key belonging
to a tenant, with a per-key rate limit (fixed one-minute window) and a quota of unfinished jobs.

Keys are created and revoked with `chronoedit keys ...`; the key is printed once, with the key's `whsec_` secret
that signs the webhooks of the jobs it submits. With `CHRONOEDIT_AUTH_REQUIRED=false` (loopback only) a request
without a key is the `default` tenant, unlimited, and its webhooks are signed with `CHRONOEDIT_DEFAULT_WEBHOOK_SECRET`.
"""

from __future__ import annotations

import base64
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis
from pydantic import BaseModel

from service.errors import ApiError
from service.events import JobKeys
from service.jobs import DEFAULT_TENANT

RESERVATION_GRACE_SECONDS = 120.0
"""A quota slot whose job record does not exist is someone's submission in flight until it is this old."""
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


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and the key used (None for the anonymous default tenant)."""

    tenant: str
    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


ANONYMOUS = Principal(tenant=DEFAULT_TENANT)


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


class Limits:
    """The per-key rate limit and concurrent-job quota, both answering 429 with `Retry-After`."""

    def __init__(
        self,
        client: redis.Redis,
        keys: JobKeys,
        rate_limit: int,
        max_concurrent: int,
        unfinished: Callable[[str, bool], bool],
    ) -> None:
        self.client = client
        self.keys = keys
        self.rate_limit = rate_limit
        self.max_concurrent = max_concurrent
        self.unfinished = unfinished
        """Whether a job is unfinished (the flag: whether a missing record counts as finished); prunes slots that a
        crashed API process left behind."""

    def check_rate(self, principal: Principal) -> None:
        if principal.key is None:
            return  # the anonymous loopback tenant is not limited
        limit = principal.key.rate_limit_per_minute or self.rate_limit
        now = time.time()
        window = int(now // 60)
        counter = f"{self.keys.prefix}:rate:{principal.key.id}:{window}"
        with self.client.pipeline() as pipe:
            pipe.incr(counter)
            pipe.expire(counter, 120)
            count = int(pipe.execute()[0])
        if count > limit:
            retry = max(1, math.ceil((window + 1) * 60 - now))
            raise ApiError(
                429,
                "rate_limited",
                f"more than {limit} requests this minute with key {principal.key.id}; retry in {retry} s",
                headers={"Retry-After": str(retry)},
            )

    def reserve(self, principal: Principal, owner: str, job_id: str) -> None:
        """Count `job_id` against the key's quota, or refuse. Add-then-count is race-free: never over the quota."""
        if principal.key is None:
            return
        limit = principal.key.max_concurrent_jobs or self.max_concurrent
        active = self.keys.active(owner)
        with self.client.pipeline() as pipe:
            pipe.zadd(active, {job_id: time.time()})
            pipe.zcard(active)
            count = int(pipe.execute()[1])
        if count > limit:
            count -= self._prune(active, job_id)
        if count > limit:
            self.client.zrem(active, job_id)
            raise ApiError(
                429,
                "concurrency_limit",
                f"key {principal.key.id} has {limit} unfinished jobs, its limit; retry when one finishes",
                headers={"Retry-After": "5"},
            )

    def _prune(self, active: str, job_id: str) -> int:
        """Drop slots of jobs that finished or never got created (the store frees slots on finishing, but a process
        that died between reserving and submitting leaves one); returns how many were dropped."""
        young = time.time() - RESERVATION_GRACE_SECONDS
        members = cast(list[tuple[bytes, float]], self.client.zrange(active, 0, -1, withscores=True))
        stale = [
            m.decode() for m, at in members if m.decode() != job_id and not self.unfinished(m.decode(), at < young)
        ]
        if stale:
            self.client.zrem(active, *stale)
        return len(stale)

    def release(self, owner: str, job_id: str) -> None:
        self.client.zrem(self.keys.active(owner), job_id)


def authenticate(keys: KeyStore, authorization: str | None, required: bool) -> Principal:
    """The principal of a request's `Authorization` header; 401 `unauthorized` when missing (if required) or bad."""
    if not authorization:
        if required:
            raise _unauthorized("send `Authorization: Bearer <API key>`")
        return ANONYMOUS
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise _unauthorized("the Authorization header must be `Bearer <API key>`")
    record = keys.lookup(token.strip())
    if record is None:
        raise _unauthorized("the API key is unknown or revoked")
    return Principal(tenant=record.tenant, key=record)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": 'Bearer realm="chronoedit"'})
