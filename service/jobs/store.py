"""Job records in Redis. Every state transition of a job happens here, each one an
optimistic transaction (WATCH/MULTI) on the job's key, so concurrent workers, redelivered messages and the
reconciler can never both win.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, cast

import redis

from service.jobs import events
from service.jobs.batches import BatchClosed, BatchRecord, DuplicateReference
from service.jobs.metrics import record_terminal
from service.jobs.record import (
    JobError,
    JobRecord,
    JobStatus,
    JobTimings,
    RanWith,
    Stage,
    StageSeconds,
    StoredFile,
)

Transition = Callable[[JobRecord], JobRecord | None]
"""Takes the current record and returns the new one, or None to leave it unchanged."""


class JobStore:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str,
        lease_seconds: float,
        max_attempts: int,
        on_item_finished: Callable[[str], object] | None = None,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self.on_item_finished = on_item_finished
        """Called with the batch id after a batch item reached a terminal state (`BatchStore.try_complete`)."""
        self._leases = f"{prefix}:leases"
        self._published = f"{prefix}:published"
        """Queued jobs by when their message was last published; the reconciler re-publishes stale ones."""
        self.keys = events.JobKeys(prefix)

    def _key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def create(self, record: JobRecord) -> None:
        """Store a new record; its `queued` event and index entries commit with it (one MULTI) or not at all.

        A batch item is created only while its batch is open (else `BatchClosed`) and only if no item of the batch
        has its reference (else `DuplicateReference`), both checked in the same transaction."""
        key = self._key(record.id)
        watched = [key]
        if record.batch_id is not None:
            watched += [self.keys.batch(record.batch_id), self.keys.batch_refs(record.batch_id)]
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*watched)
                    if pipe.exists(key):
                        raise KeyError(f"job {record.id} exists already")
                    if record.batch_id is not None:
                        _check_item(pipe, self.keys, record)
                    now = time.time()
                    new = events.mark(None, record, now)
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    if _republishable(new):
                        pipe.zadd(self._published, {new.id: now})
                    events.apply(pipe, self.keys, None, new, now)
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue  # another item of the batch, or a close, committed in between: check again

    def get(self, job_id: str) -> JobRecord | None:
        raw = self.client.get(self._key(job_id))
        return JobRecord.model_validate_json(raw) if raw is not None else None

    def get_many(self, job_ids: list[str]) -> list[JobRecord | None]:
        """The records of `job_ids` in one round trip, None for missing ones."""
        if not job_ids:
            return []
        values = cast(list[bytes | None], self.client.mget([self._key(job_id) for job_id in job_ids]))
        return [JobRecord.model_validate_json(raw) if raw is not None else None for raw in values]

    def update(self, job_id: str, transition: Transition) -> JobRecord | None:
        """Apply `transition` atomically; returns the new record, or None if the job is missing or unchanged."""
        key = self._key(job_id)
        with self.client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        return None
                    old = JobRecord.model_validate_json(raw)
                    new = transition(old)
                    if new is None:
                        return None
                    now = time.time()
                    new = events.mark(old, new, now)
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    events.apply(pipe, self.keys, old, new, now)
                    if _republishable(new) and (old.status != JobStatus.QUEUED or events.released(old, new)):
                        pipe.zadd(self._published, {job_id: now})  # a new message goes out after this commit
                    elif not _republishable(new):
                        pipe.zrem(self._published, job_id)
                    if new.status == JobStatus.RUNNING and new.lease_expires_at is not None:
                        pipe.zadd(self._leases, {job_id: new.lease_expires_at})
                    else:
                        pipe.zrem(self._leases, job_id)
                    pipe.execute()
                    record_terminal(old, new)  # after the commit: a job is counted once, by whoever finished it
                    if new.batch_id and new.status.is_terminal() and self.on_item_finished is not None:
                        self.on_item_finished(new.batch_id)
                    return new
                except redis.WatchError:
                    continue

    # --- transitions -------------------------------------------------------------------------------------------

    def claim(self, job_id: str, worker: str, batch_canceled: Callable[[str], bool] | None = None) -> JobRecord | None:
        """Start a new attempt if the job is queued, or running under an expired lease. None: not ours to run.
        `batch_canceled(batch_id)` is asked about a batch item's batch: an item of a canceled batch ends `canceled`
        instead. The new attempt starts in the `loading` stage (the worker reads its input first)."""

        def transition(job: JobRecord) -> JobRecord | None:
            now = time.time()
            lease_live = job.lease_expires_at is not None and job.lease_expires_at > now
            if job.awaits_enhancement():  # a stray message: its prompt is not final yet
                return None
            if job.status.is_terminal() or (job.status == JobStatus.RUNNING and lease_live):
                return None
            if job.status == JobStatus.RUNNING:  # its last attempt was lost: claimable since its lease expired
                job = job.model_copy(update={"requeued_at": job.lease_expires_at})
            in_canceled_batch = job.batch_id is not None and batch_canceled is not None and batch_canceled(job.batch_id)
            if job.cancel_requested_at is not None or in_canceled_batch:  # asked to stop while no worker ran it
                return _canceled(job, job.progress.step)
            if job.attempt >= self.max_attempts:
                return _failed(job, "attempts_exhausted", f"the job was started {job.attempt} times and never finished")
            return job.model_copy(
                update={
                    "status": JobStatus.RUNNING,
                    "attempt": job.attempt + 1,
                    "worker": worker,
                    "started_at": now,
                    "lease_expires_at": now + self.lease_seconds,
                    "progress": job.progress.model_copy(update={"step": 0, "stage": "loading"}),
                }
            )

        claimed = self.update(job_id, transition)
        return claimed if claimed is not None and claimed.status == JobStatus.RUNNING else None

    def renew(self, job_id: str, attempt: int) -> bool:
        return self._if_current(job_id, attempt, {"lease_expires_at": time.time() + self.lease_seconds}) is not None

    def set_progress(self, job_id: str, attempt: int, step: int, total: int, stage: Stage = "denoising") -> bool:
        """Record progress; True while the attempt should go on (still current, no cancel requested)."""
        progress = {"step": step, "total": total, "stage": stage}
        new = self._if_current(
            job_id, attempt, {"progress": progress, "lease_expires_at": time.time() + self.lease_seconds}
        )
        return new is not None and new.cancel_requested_at is None

    def set_stage(self, job_id: str, attempt: int, stage: Stage) -> bool:
        def transition(job: JobRecord) -> JobRecord | None:
            if not _is_current(job, attempt):
                return None
            return job.model_copy(update={"progress": job.progress.model_copy(update={"stage": stage})})

        new = self.update(job_id, transition)
        return new is not None and new.cancel_requested_at is None

    def succeed(
        self,
        job_id: str,
        attempt: int,
        outputs: dict[str, StoredFile],
        ran_with: RanWith | None = None,
        cached_from: str | None = None,
        stages: StageSeconds | None = None,
    ) -> bool:
        """Finalise the current attempt; `cached_from` names the job whose outputs were reused instead of a run,
        `stages` what the attempt's stages took (kept in the record's `timings`)."""

        def transition(job: JobRecord) -> JobRecord | None:
            if not _is_current(job, attempt):
                return None
            now = time.time()
            update = {
                "status": JobStatus.SUCCEEDED,
                "outputs": outputs,
                "finished_at": now,
                "timings": JobTimings.of(job, now, stages),
                "ran_with": ran_with,
                "cached_from": cached_from,
            }
            progress = job.progress.model_copy(update={"stage": "done"})
            return job.model_copy(update={**update, "lease_expires_at": None, "progress": progress})

        return self.update(job_id, transition) is not None

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """A queued job is canceled at once; a running one is asked to stop at its next denoising step.
        Returns the new record when this call changed the job."""

        def transition(job: JobRecord) -> JobRecord | None:
            now = time.time()
            if job.status == JobStatus.QUEUED:
                return _canceled(job, job.progress.step)
            if job.status == JobStatus.RUNNING and job.cancel_requested_at is None:
                return job.model_copy(update={"cancel_requested_at": now})
            return None

        return self.update(job_id, transition)

    def finish_canceled(self, job_id: str, attempt: int, steps_done: int, stages: StageSeconds | None = None) -> bool:
        """The running attempt stopped on request after `steps_done` denoising steps and the `stages` it finished."""

        def transition(job: JobRecord) -> JobRecord | None:
            return _canceled(job, steps_done, stages) if _is_current(job, attempt) else None

        return self.update(job_id, transition) is not None

    def fail(self, job_id: str, attempt: int, code: str, message: str, stages: StageSeconds | None = None) -> bool:
        """The running attempt failed after the `stages` it finished."""

        def transition(job: JobRecord) -> JobRecord | None:
            return _failed(job, code, message, stages) if _is_current(job, attempt) else None

        return self.update(job_id, transition) is not None

    def requeue_if_expired(self, job_id: str) -> JobRecord | None:
        """Reconciler step: a running job whose lease expired goes back to `queued` (or fails past the attempt cap).
        Returns the new record when this call made the change."""

        def transition(job: JobRecord) -> JobRecord | None:
            expired = job.lease_expires_at is not None and job.lease_expires_at <= time.time()
            if job.status != JobStatus.RUNNING or not expired:
                return None
            if job.cancel_requested_at is not None:
                return _canceled(job, job.progress.step)
            if job.attempt >= self.max_attempts:
                message = f"the worker stopped responding during each of {job.attempt} attempts"
                return _failed(job, "worker_lost", message)
            update = {"status": JobStatus.QUEUED, "requeued_at": job.lease_expires_at, "lease_expires_at": None}
            return job.model_copy(update={**update, "worker": None})

        return self.update(job_id, transition)

    # --- prompt enhancement ------------------------------------------------------------------------------------

    def finish_enhancement(
        self, job_id: str, text: str, model_prompt: str, enhancer: str, shared: bool = False
    ) -> JobRecord | None:
        """Record the enhanced prompt and what the model will see; the job enters the GPU queues in the same
        transaction. None when the job no longer waits for it (canceled, or given up on by the reconciler)."""

        def transition(job: JobRecord) -> JobRecord | None:
            if not job.awaits_enhancement() or job.enhancement is None:
                return None
            done = {"status": "succeeded", "enhancer": enhancer, "shared": shared, "finished_at": time.time()}
            params = job.params.model_copy(update={"enhanced_prompt": text, "model_prompt": model_prompt})
            return job.model_copy(
                update={
                    "enhancement": job.enhancement.model_copy(update=done),
                    "params": params,
                    "progress": job.progress.model_copy(update={"stage": "queued"}),
                }
            )

        return self.update(job_id, transition)

    def fail_enhancement(self, job_id: str, error: str, enhancer: str | None = None) -> JobRecord | None:
        """The enhancer failed or timed out: by the job's policy it fails (`required`: `enhancer_unavailable`) or
        enters the GPU queues with the user's own prompt (`best_effort`). None when the job no longer waits."""

        def transition(job: JobRecord) -> JobRecord | None:
            if not job.awaits_enhancement() or job.enhancement is None:
                return None
            failed = {"status": "failed", "enhancer": enhancer, "error": error, "finished_at": time.time()}
            job = job.model_copy(update={"enhancement": job.enhancement.model_copy(update=failed)})
            if job.enhancement is not None and job.enhancement.policy == "required":
                return _failed(job, "enhancer_unavailable", f"the prompt enhancer failed: {error}")
            return job.model_copy(update={"progress": job.progress.model_copy(update={"stage": "queued"})})

        return self.update(job_id, transition)

    def overdue_enhancements(self, older_than_seconds: float) -> list[str]:
        """Jobs created longer ago than this that still wait for their prompt enhancement."""
        members = cast(
            list[bytes], self.client.zrangebyscore(self.keys.enhancing, "-inf", time.time() - older_than_seconds)
        )
        return [member.decode() for member in members]

    def forget(self, job: JobRecord) -> None:
        """Remove the record with everything kept about it: its webhook deliveries and its index entries (the
        retention's last step, after its files)."""
        deliveries = self.keys.deliveries(job.id)
        delivery_ids = [d.decode() for d in cast(list[bytes], self.client.hkeys(deliveries))]
        with self.client.pipeline() as pipe:
            pipe.delete(self._key(job.id), deliveries)
            if delivery_ids:
                pipe.zrem(self.keys.webhooks_due, *(f"{job.id}/{d}" for d in delivery_ids))
            for index in (self.keys.tenant_jobs(job.tenant), self.keys.finished, self.keys.queued, self._leases):
                pipe.zrem(index, job.id)
            pipe.zrem(self._published, job.id)
            pipe.zrem(self.keys.active(events.owner(job)), job.id)
            pipe.execute()

    def forget_deliveries(self, job_id: str) -> None:
        """Drop a job's webhook deliveries, pending ones included (a deleted job tells nobody anything more)."""
        deliveries = self.keys.deliveries(job_id)
        delivery_ids = [d.decode() for d in cast(list[bytes], self.client.hkeys(deliveries))]
        with self.client.pipeline() as pipe:
            pipe.delete(deliveries)
            if delivery_ids:
                pipe.zrem(self.keys.webhooks_due, *(f"{job_id}/{d}" for d in delivery_ids))
            pipe.execute()

    def stale_queued(self, older_than_seconds: float) -> list[str]:
        """Jobs queued (or last re-published) longer ago than this: their message may be lost."""
        members = cast(
            list[bytes], self.client.zrangebyscore(self._published, "-inf", time.time() - older_than_seconds)
        )
        return [member.decode() for member in members]

    def mark_published(self, job_id: str) -> None:
        self.client.zadd(self._published, {job_id: time.time()}, xx=True)

    def expired_leases(self) -> list[str]:
        members = cast(list[bytes], self.client.zrangebyscore(self._leases, "-inf", time.time()))
        return [member.decode() for member in members]

    def _if_current(self, job_id: str, attempt: int, update: dict[str, Any]) -> JobRecord | None:
        def transition(job: JobRecord) -> JobRecord | None:
            if not _is_current(job, attempt):
                return None
            return JobRecord.model_validate({**job.model_dump(), **update})

        return self.update(job_id, transition)


def _republishable(job: JobRecord) -> bool:
    """A queued job whose own message the reconciler re-sends if it seems lost: interactive jobs, and any job on its
    way to a prompt enhancer. Batch items waiting in the lane have the lane's tokens instead."""
    return job.status == JobStatus.QUEUED and (job.lane == "interactive" or job.awaits_enhancement())


def _check_item(pipe: Any, keys: events.JobKeys, item: JobRecord) -> None:
    batch_id = item.batch_id or ""
    raw = pipe.get(keys.batch(batch_id))
    if raw is None or BatchRecord.model_validate_json(raw).status != "open":
        raise BatchClosed(f"batch {batch_id} takes no more items")
    if item.reference is not None:
        existing = pipe.hget(keys.batch_refs(batch_id), item.reference)
        if existing is not None:
            raise DuplicateReference(existing.decode())


def _is_current(job: JobRecord, attempt: int) -> bool:
    return job.status == JobStatus.RUNNING and job.attempt == attempt


def _canceled(job: JobRecord, steps_done: int, stages: StageSeconds | None = None) -> JobRecord:
    now = time.time()
    progress = job.progress.model_copy(update={"step": steps_done, "stage": "done"})
    update = {"status": JobStatus.CANCELED, "finished_at": now, "timings": JobTimings.of(job, now, stages)}
    return job.model_copy(update={**update, "lease_expires_at": None, "progress": progress})


def _failed(job: JobRecord, code: str, message: str, stages: StageSeconds | None = None) -> JobRecord:
    now = time.time()
    return job.model_copy(
        update={
            "status": JobStatus.FAILED,
            "error": JobError(code=code, message=message),
            "finished_at": now,
            "timings": JobTimings.of(job, now, stages),
            "lease_expires_at": None,
        }
    )
