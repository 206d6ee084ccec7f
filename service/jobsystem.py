"""The small interface the HTTP layer depends on: submit, get, readiness, and the reconciler that re-enqueues jobs
whose worker went silent. Behind it: Redis (records, broker), object storage and Celery.
"""

from __future__ import annotations

import logging
import threading

import redis
from celery import Celery

from service.jobs import JobRecord
from service.queue import make_celery, publish
from service.settings import CommonSettings
from service.storage import Storage, StorageError, make_storage
from service.store import JobStore, WorkerRegistry

logger = logging.getLogger(__name__)


class JobSystem:
    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.store = JobStore(self.redis, settings.key_prefix, settings.lease_seconds, settings.max_attempts)
        self.registry = WorkerRegistry(self.redis, settings.key_prefix)
        self.storage: Storage = make_storage(settings)
        self.celery: Celery = make_celery(settings, name="chronoedit-api")
        self._stop = threading.Event()
        self._reconciler: threading.Thread | None = None

    def submit(self, job: JobRecord, input_data: bytes) -> None:
        """Input first, then the record, then the message: a worker never sees a job whose input is missing."""
        self.storage.put(job.input.key, input_data, job.input.content_type)
        self.store.create(job)
        try:
            publish(self.celery, job)
        except Exception:  # the record is stored: the reconciler publishes it again, so nothing is lost
            logger.exception("job %s: publishing failed; the reconciler will retry", job.id)
        logger.info("job %s submitted", job.id, extra={"job_id": job.id})

    def get(self, job_id: str) -> JobRecord | None:
        return self.store.get(job_id)

    def readiness(self, require_worker: bool = True) -> dict[str, str]:
        """Each part's state; a value other than "ok" says what is missing."""
        checks: dict[str, str] = {}
        try:
            self.redis.ping()
            checks["redis"] = "ok"
        except redis.RedisError as exc:
            checks["redis"] = f"unreachable: {exc}"
        try:
            self.storage.check()
            checks["storage"] = "ok"
        except StorageError as exc:
            checks["storage"] = f"unusable: {exc}"
        if require_worker:
            checks["worker"] = self._worker_check() if checks["redis"] == "ok" else "unknown: redis is unreachable"
        return checks

    def _worker_check(self) -> str:
        workers = self.registry.workers()
        ready = [w for w in workers if w.get("ready")]
        if ready:
            return "ok"
        if workers:
            return "no worker ready: " + ", ".join(f"{w['name']} {w.get('state')}" for w in workers)
        return "no worker registered"

    def reconcile_once(self) -> int:
        """Re-enqueue running jobs whose lease expired (their worker died) and re-publish queued jobs whose message
        may be lost (a broker restart, a failed publish); returns how many were requeued. Duplicates are harmless:
        a worker's claim drops a message for a job that is running or finished."""
        requeued = self._republish_stale()
        for job_id in self.store.expired_leases():
            job = self.store.requeue_if_expired(job_id)
            if job is None:
                continue
            if job.status == "queued":
                publish(self.celery, job)
                requeued += 1
                logger.warning("job %s: worker lease expired after attempt %d; requeued", job_id, job.attempt)
            else:
                logger.error("job %s: worker lost on every attempt; failed", job_id)
        return requeued

    def _republish_stale(self) -> int:
        count = 0
        for job_id in self.store.stale_queued(self.settings.republish_after_seconds):
            job = self.store.get(job_id)
            if job is not None and job.status == "queued":
                publish(self.celery, job)
                count += 1
                logger.warning(
                    "job %s: still queued after %.0f s; published again", job_id, self.settings.republish_after_seconds
                )
            self.store.mark_published(job_id)
        return count

    def start_reconciler(self, interval_seconds: float) -> None:
        def loop() -> None:
            while not self._stop.wait(interval_seconds):
                try:
                    self.reconcile_once()
                except Exception:  # keep reconciling through Redis hiccups
                    logger.exception("reconciler pass failed")

        self._reconciler = threading.Thread(target=loop, name="reconciler", daemon=True)
        self._reconciler.start()

    def close(self) -> None:
        self._stop.set()
        if self._reconciler is not None:
            self._reconciler.join(timeout=5)
        self.redis.close()
