"""Managing a tenant's jobs: listing (newest first, cursor pagination, status filter), deleting a finished job's
files, the retention sweep, and the queue position and ETA of a queued job.

The indexes are maintained by the job store in the transaction of each change (`service/jobs/events.py`).
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from dataclasses import dataclass
from typing import cast

from service.api.errors import ApiError
from service.api.uploads import Uploads
from service.jobs.events import JobKeys, profile
from service.jobs.record import JobRecord, JobStatus
from service.jobs.registry import edit_workers
from service.jobs.system import JobSystem
from service.jobs.view import JobView, render_job
from service.storage import StorageError

logger = logging.getLogger(__name__)

SCAN_LIMIT = 1000
"""Most index entries one list request reads when a status filter skips many jobs; the cursor carries on."""


@dataclass
class Page:
    jobs: list[JobRecord]
    next_cursor: str | None


@dataclass
class QueueInfo:
    position: int
    eta_seconds: float | None


def encode_cursor(job: JobRecord) -> str:
    return base64.urlsafe_b64encode(f"{job.created_at!r}".encode()).decode()


def decode_cursor(cursor: str) -> float:
    try:
        value = float(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned") from exc
    if not math.isfinite(value):  # `nan` and `inf` are floats, but not a place in a list
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned")
    return value


class JobManager:
    def __init__(self, jobs: JobSystem, retention_seconds: int) -> None:
        self.jobs = jobs
        self.keys = JobKeys(jobs.settings.key_prefix)
        self.retention = retention_seconds

    def owned(self, tenant: str, job_id: str) -> JobRecord:
        """The job if it exists and belongs to `tenant`; 404 otherwise (other tenants cannot tell it exists)."""
        job = self.jobs.get(job_id)
        if job is None or job.tenant != tenant:
            raise ApiError(404, "not_found", f"edit {job_id} does not exist")
        return job

    def list(self, tenant: str, limit: int, cursor: str | None, status: JobStatus | None) -> Page:
        upper: str | float = f"({decode_cursor(cursor)}" if cursor else "+inf"
        found: list[JobRecord] = []
        scanned, last = 0, None
        while len(found) < limit and scanned < SCAN_LIMIT:
            batch = cast(
                list[bytes],
                self.jobs.redis.zrevrangebyscore(self.keys.tenant_jobs(tenant), upper, "-inf", start=0, num=limit),
            )
            if not batch:
                return Page(found, None)
            for job_id in batch:
                scanned += 1
                job = self.jobs.get(job_id.decode())
                if job is None:
                    continue
                last = job
                if status is None or job.status == status:
                    found.append(job)
                    if len(found) == limit:
                        break
            upper = f"({last.created_at!r}" if last else upper
        return Page(found, encode_cursor(last) if last else None)

    def cancel(self, tenant: str, job_id: str) -> JobRecord:
        """Cancel a queued job at once, or ask its worker to stop a running one at the next denoising step."""
        job = self.owned(tenant, job_id)
        if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
            raise ApiError(409, "job_finished", f"edit {job_id} already {job.status}; there is nothing to cancel")
        changed = self.jobs.store.request_cancel(job_id)
        return changed or self.owned(tenant, job_id)

    def live(self, tenant: str, job_id: str) -> JobRecord:
        """`owned`, and not deleted: a deleted job's events and deliveries are gone with it (404)."""
        job = self.owned(tenant, job_id)
        if job.deleted_at is not None:
            raise ApiError(404, "not_found", f"edit {job_id} was deleted")
        return job

    def delete(self, tenant: str, job_id: str) -> JobRecord:
        """Delete a finished job's files and webhook deliveries; the record stays as a tombstone until retention."""
        job = self.owned(tenant, job_id)
        if not job.status.is_terminal():
            raise ApiError(409, "job_not_finished", f"edit {job_id} is {job.status}; only finished jobs are deleted")
        self._delete_files(job)
        self.jobs.store.forget_deliveries(job.id)

        def transition(current: JobRecord) -> JobRecord | None:
            if current.deleted_at is not None:
                return None
            now = time.time()
            return current.model_copy(update={"outputs": {}, "files_deleted_at": now, "deleted_at": now})

        return self.jobs.store.update(job.id, transition) or self.jobs.get(job.id) or job

    def _delete_files(self, job: JobRecord) -> None:
        try:
            self.jobs.storage.delete_prefix(f"jobs/{job.id}/")
        except StorageError as exc:
            raise ApiError(503, "storage_unavailable", f"deleting the files failed: {exc}") from exc

    def sweep(self, uploads: Uploads) -> int:
        """Remove jobs that finished more than the retention ago (their files, record, deliveries and index
        entries), and expired uploads."""
        before = time.time() - self.retention
        ids = cast(list[bytes], self.jobs.redis.zrangebyscore(self.keys.finished, "-inf", before, start=0, num=200))
        for raw in ids:
            job = self.jobs.get(raw.decode())
            if job is None:
                self.jobs.redis.zrem(self.keys.finished, raw)
                continue
            try:
                self._delete_files(job)
            except ApiError:
                logger.warning("retention: deleting the files of %s failed; retrying next pass", job.id)
                continue
            self.jobs.store.forget(job)
        for input_key in uploads.expired(before):
            self.jobs.storage.delete_prefix(input_key + "/")
            uploads.forget(input_key)
        return len(ids)

    def view(self, job: JobRecord, base_url: str) -> JobView:
        """The job as the API shows it: stored fields, download URLs, expiry and, while queued, position and ETA."""
        view = render_job(job, self.jobs.storage, base_url, self.jobs.settings.url_ttl_seconds, self.retention)
        info = self.queue_info(job)
        if info is not None:
            view.queue_position, view.eta_seconds = info.position, info.eta_seconds
        return view

    def queue_info(self, job: JobRecord) -> QueueInfo | None:
        if job.status != JobStatus.QUEUED:
            return None
        rank = self.jobs.redis.zrank(self.keys.queued, job.id)
        if rank is None:
            return None
        position = int(cast(int, rank)) + 1
        return QueueInfo(position, self._eta(job, position))

    def _eta(self, job: JobRecord, position: int) -> float | None:
        """Jobs ahead at the recent average, spread over the ready workers, plus this job at its profile's average."""
        own = self.mean_duration(profile(job))
        overall = self.mean_duration("all")
        if own is None and overall is None:
            return None
        workers = max(1, sum(1 for w in edit_workers(self.jobs.registry.workers()) if w.get("ready")))
        ahead = (position - 1) * (overall or own or 0.0) / workers
        return round(ahead + (own or overall or 0.0), 1)

    def mean_duration(self, name: str) -> float | None:
        """Mean seconds of recent succeeded jobs of a profile (`all`: of every profile); None without any."""
        values = cast(list[bytes], self.jobs.redis.lrange(self.keys.durations(name), 0, -1))
        return sum(float(v) for v in values) / len(values) if values else None
