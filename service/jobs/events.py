"""What a job's state change sets off, written in the same Redis transaction as the change itself.

`JobStore` (the one place where transitions happen) calls `mark` before and `apply` inside each MULTI, so the
worker's runtime needs no webhook or index code, and an event is emitted if and only if its transition committed:
- a message on the job's pub/sub channel (server-sent events and `Prefer: wait` listen to it), every change;
- a pending webhook delivery (record + due-time entry) when the job subscribed to the event; `progress` events are
  throttled to one per `PROGRESS_EVENT_SECONDS`; the webhook worker dispatches what is due (transactional outbox);
- the indexes: the tenant's job list, jobs awaiting prompt enhancement, the interactive queue order (queue
  position), the batch lane (`service/jobs/lanes.py`), finished jobs (retention), each key's unfinished jobs
  (quota), recent run durations per
  profile (ETA), and a batch item's place and its batch's counts per status (`service/jobs/batches.py`).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from service.jobs import lanes
from service.jobs.record import EventType, JobRecord, JobStatus

DeliveryObject = Literal["edit", "batch"]

PROGRESS_EVENT_SECONDS = 2.0
"""Smallest gap between two `progress` webhooks of one job; server-sent events get every step."""

DURATION_SAMPLES = 20
STATUS_EVENTS: dict[JobStatus, EventType] = {
    JobStatus.QUEUED: "queued",
    JobStatus.RUNNING: "started",
    JobStatus.SUCCEEDED: "succeeded",
    JobStatus.FAILED: "failed",
    JobStatus.CANCELED: "canceled",
}


class JobKeys:
    """Names of the Redis keys around job records, in one place for the store, the API and the webhook worker."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.queued = f"{prefix}:queued"
        self.enhancing = f"{prefix}:enhancing"
        """Jobs awaiting prompt enhancement, by creation time (the reconciler enforces the enhancement deadline)."""
        self.finished = f"{prefix}:finished"
        self.webhooks_due = f"{prefix}:webhooks:due"
        self.unfinished_batches = f"{prefix}:batches:unfinished"
        """Closed or canceled batches not yet completed, by when they were closed (the reconciler's sweep)."""
        self.open_batches = f"{prefix}:batches:open"
        """Open batches by when they last took items (the reconciler closes those idle too long)."""
        self.lane = lanes.LaneKeys(prefix)

    def channel(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    def tenant_jobs(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:jobs"

    def active(self, owner: str) -> str:
        return f"{self.prefix}:active:{owner}"

    def deliveries(self, subject_id: str) -> str:
        """Webhook deliveries of a job or a batch."""
        return f"{self.prefix}:deliveries:{subject_id}"

    def durations(self, profile: str) -> str:
        return f"{self.prefix}:durations:{profile}"

    def batch(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}"

    def batch_counts(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:counts"

    def batch_items(self, batch_id: str) -> str:
        """Sorted set: item job id -> its index in the batch."""
        return f"{self.prefix}:batch:{batch_id}:items"

    def batch_refs(self, batch_id: str) -> str:
        """Hash: client reference -> item job id."""
        return f"{self.prefix}:batch:{batch_id}:refs"

    def batch_seq(self, batch_id: str) -> str:
        return f"{self.prefix}:batch:{batch_id}:seq"

    def tenant_batches(self, tenant: str) -> str:
        return f"{self.prefix}:tenant:{tenant}:batches"


def owner(job: JobRecord) -> str:
    """Who the concurrent-job quota counts the job against: its API key, else its tenant."""
    return job.key_id or f"tenant:{job.tenant}"


def profile(job: JobRecord) -> str:
    """Jobs with the same profile take about as long: kind, steps, output size and outputs."""
    p = job.params
    return f"{job.kind}:{p.num_inference_steps}:{p.width}x{p.height}:{'+'.join(sorted(p.outputs))}"


def event_of(old: JobRecord | None, new: JobRecord) -> EventType | None:
    """The event a change is, or None for changes nobody is told about (lease renewals, file deletion)."""
    if old is None or old.status != new.status:
        return STATUS_EVENTS[new.status]
    if new.status == JobStatus.RUNNING and old.attempt != new.attempt:
        return "started"  # a re-claim under an expired lease
    if new.progress.step != old.progress.step:
        return "progress"
    return None


def released(old: JobRecord | None, new: JobRecord) -> bool:
    """The change finishes the job's prompt enhancement: from now on it may wait in the GPU queues."""
    return old is not None and old.awaits_enhancement() and not new.awaits_enhancement()


def wants_webhook(job: JobRecord, event: EventType | None) -> bool:
    return event is not None and job.webhook is not None and event in job.webhook_events


def mark(old: JobRecord | None, new: JobRecord, now: float) -> JobRecord:
    """Throttle `progress` webhooks: return `new` stamped when this change emits one, else with the old stamp."""
    if event_of(old, new) != "progress" or not wants_webhook(new, "progress"):
        return new
    last = old.progress_event_at if old is not None else None
    if last is not None and now - last < PROGRESS_EVENT_SECONDS:
        return new.model_copy(update={"progress_event_at": last})
    return new.model_copy(update={"progress_event_at": now})


def apply(pipe: Any, keys: JobKeys, old: JobRecord | None, new: JobRecord, now: float) -> None:
    """Queue every side effect of `old -> new` on `pipe` (inside MULTI)."""
    event = event_of(old, new)
    if event is None:
        if released(old, new):  # not news to clients (still `queued`), but the job now enters the GPU queues
            _queue(pipe, keys, old, new, now)
        return
    _index(pipe, keys, old, new, now)
    pipe.publish(keys.channel(new.id), json.dumps({"event": event, "job": new.model_dump(mode="json")}))
    throttled = event == "progress" and (new.progress_event_at != now)
    if wants_webhook(new, event) and not throttled:
        add_delivery(pipe, keys, new.id, "edit", event or "", new.webhook or "", new.model_dump(mode="json"))


def _index(pipe: Any, keys: JobKeys, old: JobRecord | None, new: JobRecord, now: float) -> None:
    if old is None:
        pipe.zadd(keys.tenant_jobs(new.tenant), {new.id: new.created_at})
    _queue(pipe, keys, old, new, now)
    if new.batch_id is not None:
        _count_item(pipe, keys, old, new)
    if new.status.is_terminal():
        pipe.zadd(keys.finished, {new.id: new.finished_at or now})
        pipe.zrem(keys.active(owner(new)), new.id)
    if new.status == JobStatus.SUCCEEDED and new.started_at is not None and new.cached_from is None:
        seconds = str(round((new.finished_at or now) - new.started_at, 3))
        for name in (profile(new), "all"):
            pipe.lpush(keys.durations(name), seconds)
            pipe.ltrim(keys.durations(name), 0, DURATION_SAMPLES - 1)


def _queue(pipe: Any, keys: JobKeys, old: JobRecord | None, new: JobRecord, now: float) -> None:
    """Interactive jobs wait in one order (their queue position); batch items in their tenant's lane. A job whose
    prompt enhancement is pending waits in neither: no GPU worker may take it before its prompt is final."""
    if new.awaits_enhancement():
        pipe.zadd(keys.enhancing, {new.id: new.created_at}, nx=True)
        return
    pipe.zrem(keys.enhancing, new.id)
    queued = new.status == JobStatus.QUEUED
    if new.lane == "batch":
        if queued:
            lanes.enter(pipe, keys.lane, new)
        elif old is not None and old.status == JobStatus.QUEUED:
            lanes.leave(pipe, keys.lane, new)
    elif queued:
        pipe.zadd(keys.queued, {new.id: now}, nx=True)
    else:
        pipe.zrem(keys.queued, new.id)


def _count_item(pipe: Any, keys: JobKeys, old: JobRecord | None, new: JobRecord) -> None:
    batch_id = new.batch_id or ""
    counts = keys.batch_counts(batch_id)
    if old is None:
        pipe.zadd(keys.batch_items(batch_id), {new.id: new.batch_index or 0})
        if new.reference is not None:
            pipe.hset(keys.batch_refs(batch_id), new.reference, new.id)
        pipe.hincrby(counts, "total", 1)
    elif old.status != new.status:
        pipe.hincrby(counts, old.status.value, -1)
    if old is None or old.status != new.status:
        pipe.hincrby(counts, new.status.value, 1)
    if new.status == JobStatus.SUCCEEDED and new.cached_from is not None and (old is None or old.status != new.status):
        pipe.hincrby(counts, "cached", 1)


def new_delivery(
    subject_id: str, object_: DeliveryObject, event: str, url: str, snapshot: dict[str, Any], now: float
) -> dict[str, Any]:
    """A pending delivery about a job or a batch; its `id` is the `webhook-id`, the same for every attempt."""
    return {
        "id": f"msg_{uuid.uuid4().hex}",
        "subject_id": subject_id,
        "object": object_,
        "event": event,
        "url": url,
        "status": "pending",
        "created_at": now,
        "next_attempt_at": now,
        "attempts": [],
        "snapshot": snapshot,
    }


def add_delivery(
    pipe: Any, keys: JobKeys, subject_id: str, object_: DeliveryObject, event: str, url: str, snapshot: dict[str, Any]
) -> None:
    """Queue a webhook delivery (inside the MULTI of the change it reports): the record and its due-time entry."""
    delivery = new_delivery(subject_id, object_, event, url, snapshot, time.time())
    pipe.hset(keys.deliveries(subject_id), delivery["id"], json.dumps(delivery))
    pipe.zadd(keys.webhooks_due, {f"{subject_id}/{delivery['id']}": delivery["created_at"]})
