"""Webhook delivery records and their schedule in Redis.

A delivery is created by the job store in the transaction of the change it reports (`service/jobs/events.py`) and
lives in Redis: `<prefix>:deliveries:<subject id>` (hash of delivery id -> record, attempts included; the subject is
a job or a batch) and `<prefix>:webhooks:due` (sorted set of `<subject id>/<delivery id>` by due time). The webhook
worker claims what is due and runs one attempt per Celery task (`service/webhooks/worker.py`,
`service/webhooks/attempts.py`).
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from service.jobs.events import JobKeys

CLAIM_DUE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, member in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], member) end
return due
"""
"""Atomically take the due deliveries and push them a lease into the future: if the dispatcher dies before the task
runs, the delivery comes due again after the lease instead of being lost."""

SAVE = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
if ARGV[4] == '' then redis.call('ZREM', KEYS[2], ARGV[3]) else redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3]) end
return 1
"""
"""Update a delivery that still exists: an attempt that finishes after its job was deleted (and its deliveries
dropped) must not bring the record back."""


class Deliveries:
    """Delivery records and the due-time schedule."""

    def __init__(self, client: redis.Redis, keys: JobKeys) -> None:
        self.client = client
        self.keys = keys
        self._claim = client.register_script(CLAIM_DUE)
        self._save = client.register_script(SAVE)

    def for_subject(self, subject_id: str) -> list[dict[str, Any]]:
        """The deliveries of a job or a batch, oldest first."""
        values = cast(dict[bytes, bytes], self.client.hgetall(self.keys.deliveries(subject_id)))
        return sorted((_current(json.loads(v)) for v in values.values()), key=lambda d: d["created_at"])

    def get(self, subject_id: str, delivery_id: str) -> dict[str, Any] | None:
        raw = self.client.hget(self.keys.deliveries(subject_id), delivery_id)
        return _current(json.loads(cast(bytes, raw))) if raw is not None else None

    def save(self, delivery: dict[str, Any], due_at: float | None) -> bool:
        """Update the record; schedule it at `due_at`, or take it off the schedule when None. False (and nothing
        written) when the delivery was dropped meanwhile."""
        member = f"{delivery['subject_id']}/{delivery['id']}"
        keys = [self.keys.deliveries(delivery["subject_id"]), self.keys.webhooks_due]
        due = "" if due_at is None else repr(due_at)
        return bool(self._save(keys=keys, args=[delivery["id"], json.dumps(delivery), member, due]))

    def redeliver(self, delivery: dict[str, Any]) -> dict[str, Any]:
        """Back to `pending`, due now, with a fresh retry schedule; the id (and so `webhook-id`) stays."""
        now = time.time()
        again = {**delivery, "status": "pending", "next_attempt_at": now, "round_attempts": 0}
        self.save(again, now)
        return again

    def claim_due(self, lease_seconds: float, limit: int = 100) -> list[tuple[str, str]]:
        now = time.time()
        members = cast(list[bytes], self._claim(keys=[self.keys.webhooks_due], args=[now, now + lease_seconds, limit]))
        return [cast(tuple[str, str], tuple(m.decode().split("/", 1))) for m in members]


def _current(delivery: dict[str, Any]) -> dict[str, Any]:
    """A delivery in today's shape: records written before batches named their subject `job_id` and were all about
    edits (they can still be pending, retries span a day)."""
    if "subject_id" not in delivery:
        delivery = {**delivery, "subject_id": delivery.get("job_id"), "object": "edit"}
    return delivery
