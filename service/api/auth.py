"""Who is calling: `Authorization: Bearer <key>` checked against the key store (`service/keys.py`), with a per-key
rate limit (fixed one-minute window) and a quota of unfinished jobs.

With `CHRONOEDIT_AUTH_REQUIRED=false` (loopback only) a request without a key is the `default` tenant, unlimited, and
its webhooks are signed with `CHRONOEDIT_DEFAULT_WEBHOOK_SECRET`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import redis

from service.api.errors import ApiError
from service.jobs.events import JobKeys
from service.jobs.record import DEFAULT_TENANT
from service.keys import ApiKey, KeyStore

RESERVATION_GRACE_SECONDS = 120.0
"""A quota slot whose job record does not exist is someone's submission in flight until it is this old."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: a tenant, and the key used (None for the anonymous default tenant)."""

    tenant: str
    key: ApiKey | None = None

    @property
    def key_id(self) -> str | None:
        return self.key.id if self.key else None


ANONYMOUS = Principal(tenant=DEFAULT_TENANT)


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
