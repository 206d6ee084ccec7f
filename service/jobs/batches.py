"""Batches: many items, each an ordinary job on the batch lane, under one record that counts them.

A batch is `open` while items may be appended, `running` once closed, and `completed` when closed and every item is
finished (`canceled` when a client canceled it; it too gets `completed_at` once every item is finished). Counts per
status are kept in a hash that the job store updates in the transaction of every item's change (`events.apply`), so
they never drift from the items. The step to `completed` is a transaction of its own, taken by whoever sees the last
item finish (the job store's hook), a close, a cancel, or the reconciler's sweep; it commits the `batch.completed`
webhook with it, so the webhook goes out exactly once. A finished batch's keys expire after the output retention.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Literal, cast

import redis
from pydantic import BaseModel, Field

from service.jobs import events
from service.jobs.events import JobKeys
from service.jobs.record import Kind, Mode

BatchStatus = Literal["open", "running", "completed", "canceled"]


class BatchRecord(BaseModel):
    id: str
    tenant: str
    key_id: str | None = None
    kind: Kind
    mode: Mode
    defaults: dict[str, Any] = Field(default_factory=dict)
    """The parameters shared by the items, as the client sent them."""
    cache: bool = True
    webhook: str | None = None
    status: BatchStatus = "open"
    created_at: float = Field(default_factory=time.time)
    closed_at: float | None = None
    canceled_at: float | None = None
    completed_at: float | None = None
    request_id: str | None = None


class BatchCounts(BaseModel):
    total: int = 0
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    cached: int = 0
    """Succeeded items that reused an earlier job's outputs."""

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed + self.canceled


class BatchClosed(Exception):
    """Items were appended to a batch that no longer takes any."""


class DuplicateReference(Exception):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"the reference is job {job_id} already")
        self.job_id = job_id


BatchTransition = Callable[[BatchRecord], BatchRecord | None]


class BatchStore:
    def __init__(self, client: redis.Redis, prefix: str, retention_seconds: float) -> None:
        self.client = client
        self.keys = JobKeys(prefix)
        self.retention = retention_seconds

    def create(self, batch: BatchRecord) -> None:
        with self.client.pipeline() as pipe:
            pipe.set(self.keys.batch(batch.id), batch.model_dump_json())
            pipe.zadd(self.keys.tenant_batches(batch.tenant), {batch.id: batch.created_at})
            pipe.zadd(self.keys.open_batches, {batch.id: batch.created_at})
            pipe.execute()

    def touch(self, batch_id: str) -> None:
        """The batch just took items: its idle clock starts again."""
        self.client.zadd(self.keys.open_batches, {batch_id: time.time()}, xx=True)

    def idle_open(self, before: float, limit: int = 100) -> list[str]:
        """Open batches that took no items since `before`."""
        members = cast(list[bytes], self.client.zrangebyscore(self.keys.open_batches, "-inf", before, 0, limit))
        return [member.decode() for member in members]

    def get(self, batch_id: str) -> BatchRecord | None:
        raw = self.client.get(self.keys.batch(batch_id))
        return BatchRecord.model_validate_json(raw) if raw is not None else None

    def counts(self, batch_id: str) -> BatchCounts:
        raw = cast(dict[bytes, bytes], self.client.hgetall(self.keys.batch_counts(batch_id)))
        return BatchCounts(**{name.decode(): int(value) for name, value in raw.items()})

    def reserve_indices(self, batch_id: str, count: int) -> int:
        """The first of `count` consecutive item places in the batch, for one request's items in their order (places
        of items that are refused stay empty)."""
        return int(cast(int, self.client.incrby(self.keys.batch_seq(batch_id), count))) - count

    def job_for_reference(self, batch_id: str, reference: str) -> str | None:
        job_id = self.client.hget(self.keys.batch_refs(batch_id), reference)
        return cast(bytes, job_id).decode() if job_id is not None else None

    def items(self, batch_id: str, after: int, limit: int) -> list[tuple[str, int]]:
        """(job id, index) of up to `limit` items whose index is above `after`, in index order."""
        members = cast(
            list[tuple[bytes, float]],
            self.client.zrangebyscore(
                self.keys.batch_items(batch_id), f"({after}", "+inf", start=0, num=limit, withscores=True
            ),
        )
        return [(member.decode(), int(score)) for member, score in members]

    def close(self, batch_id: str) -> BatchRecord | None:
        def transition(batch: BatchRecord) -> BatchRecord | None:
            if batch.status != "open":
                return None
            return batch.model_copy(update={"status": "running", "closed_at": time.time()})

        return self._change_then_complete(batch_id, transition)

    def cancel(self, batch_id: str) -> BatchRecord | None:
        """Mark the batch canceled (it takes no more items); the caller cancels the unfinished items."""

        def transition(batch: BatchRecord) -> BatchRecord | None:
            if batch.status not in ("open", "running"):
                return None
            now = time.time()
            return batch.model_copy(update={"status": "canceled", "canceled_at": now, "closed_at": now})

        return self.update(batch_id, transition)

    def _change_then_complete(self, batch_id: str, transition: BatchTransition) -> BatchRecord | None:
        changed = self.update(batch_id, transition)
        if changed is not None:
            return self.try_complete(batch_id) or changed
        return None

    def update(self, batch_id: str, transition: BatchTransition) -> BatchRecord | None:
        """Apply `transition` atomically; the new record, or None when missing or unchanged."""
        key = self.keys.batch(batch_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    new = transition(BatchRecord.model_validate_json(raw)) if raw is not None else None
                    if new is None:
                        return None
                    pipe.multi()
                    pipe.set(key, new.model_dump_json(), keepttl=True)
                    if new.status != "open":
                        pipe.zrem(self.keys.open_batches, batch_id)
                        pipe.zadd(self.keys.unfinished_batches, {batch_id: time.time()}, nx=True)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def try_complete(self, batch_id: str) -> BatchRecord | None:
        """Complete the batch if it is closed and every item is finished; returns the record when this call did."""
        key, counts_key = self.keys.batch(batch_id), self.keys.batch_counts(batch_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key, counts_key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    batch = BatchRecord.model_validate_json(raw)
                    counts = self.counts(batch_id)
                    if batch.status == "open" or batch.completed_at is not None or counts.finished < counts.total:
                        return None
                    done = self._completed(batch)
                    pipe.multi()
                    pipe.set(key, done.model_dump_json())
                    pipe.zrem(self.keys.unfinished_batches, batch_id)
                    if done.webhook is not None:
                        snapshot = {"batch": done.model_dump(mode="json"), "counts": counts.model_dump()}
                        events.add_delivery(pipe, self.keys, batch_id, "batch", "completed", done.webhook, snapshot)
                    self._expire(pipe, batch_id)  # after the delivery exists, so its record expires too
                    pipe.execute()
                    return done
                except redis.WatchError:
                    continue

    @staticmethod
    def _completed(batch: BatchRecord) -> BatchRecord:
        status: BatchStatus = "canceled" if batch.status == "canceled" else "completed"
        return batch.model_copy(update={"status": status, "completed_at": time.time()})

    def _expire(self, pipe: Any, batch_id: str) -> None:
        ttl = int(self.retention)
        for key in (
            self.keys.batch(batch_id),
            self.keys.batch_counts(batch_id),
            self.keys.batch_items(batch_id),
            self.keys.batch_refs(batch_id),
            self.keys.batch_seq(batch_id),
            self.keys.deliveries(batch_id),
        ):
            pipe.expire(key, ttl)

    def unfinished(self, limit: int = 500) -> list[str]:
        """Closed or canceled batches not yet completed, closed longest ago first (for the reconciler's sweep; each
        completes once its items are finished, so the set stays small)."""
        members = cast(list[bytes], self.client.zrange(self.keys.unfinished_batches, 0, limit - 1))
        return [member.decode() for member in members]

    def is_canceled(self, batch_id: str) -> bool:
        batch = self.get(batch_id)
        return batch is not None and batch.status == "canceled"

    def page(self, tenant: str, before: float | None, limit: int) -> list[BatchRecord]:
        """A tenant's batches, newest first, created before `before`; index entries of expired batches are pruned."""
        upper: str | float = f"({before!r}" if before is not None else "+inf"
        index = self.keys.tenant_batches(tenant)
        found: list[BatchRecord] = []
        while len(found) < limit:
            rows = cast(
                list[tuple[bytes, float]],
                self.client.zrevrangebyscore(index, upper, "-inf", start=0, num=limit, withscores=True),
            )
            if not rows:
                break
            values = cast(list[bytes | None], self.client.mget([self.keys.batch(i.decode()) for i, _ in rows]))
            for (batch_id, _), raw in zip(rows, values, strict=True):
                if raw is None:
                    self.client.zrem(index, batch_id)
                else:
                    found.append(BatchRecord.model_validate_json(raw))
            upper = f"({rows[-1][1]!r}"
        return found[:limit]
