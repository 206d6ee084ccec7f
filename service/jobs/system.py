"""The small interface the HTTP layer depends on: submit, get, readiness. Behind it: Redis (records, broker), object
storage and Celery. The reconciler (`service/jobs/reconciler.py`) keeps its promises when a worker or message is lost.
"""

from __future__ import annotations

import logging

import redis
from celery import Celery

from service.jobs.batches import BatchClosed, BatchStore, DuplicateReference
from service.jobs.lanes import BatchLane
from service.jobs.queue import make_celery, publish
from service.jobs.record import JobRecord
from service.jobs.registry import WorkerRegistry, edit_workers
from service.jobs.store import JobStore
from service.settings import CommonSettings
from service.storage import Storage, StorageError, make_storage

logger = logging.getLogger(__name__)


class JobSystem:
    def __init__(self, settings: CommonSettings) -> None:
        self.settings = settings
        self.redis = redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.batches = BatchStore(self.redis, settings.key_prefix, settings.output_retention_seconds)
        self.store = JobStore(
            self.redis,
            settings.key_prefix,
            settings.lease_seconds,
            settings.max_attempts,
            on_item_finished=self.batches.try_complete,
        )
        self.lane = BatchLane(self.redis, settings.key_prefix)
        self.registry = WorkerRegistry(self.redis, settings.key_prefix)
        self.storage: Storage = make_storage(settings)
        self.celery: Celery = make_celery(settings, name="chronoedit-api")

    def submit(self, job: JobRecord, input_data: bytes) -> None:
        """Input first, then the record, then the message: a worker never sees a job whose input is missing. A batch
        item the store refuses (`BatchClosed`, `DuplicateReference`) leaves no file behind."""
        self.storage.put(job.input.key, input_data, job.input.content_type)
        try:
            self.store.create(job)
        except (BatchClosed, DuplicateReference):
            self.storage.delete_prefix(f"jobs/{job.id}/")
            raise
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
        workers = edit_workers(self.registry.workers())  # a prompt enhancer runs no edit
        ready = [w for w in workers if w.get("ready")]
        if ready:
            return "ok"
        if workers:
            return "no worker ready: " + ", ".join(f"{w['name']} {w.get('state')}" for w in workers)
        return "no worker registered"

    def close(self) -> None:
        self.redis.close()
