"""The worker's side of the result cache (`service/jobs/cache.py`): answer a claimed job from an earlier identical
job of the tenant without GPU work, and remember the outputs of the jobs it runs.

A hit copies the earlier job's files to this job's attempt-scoped keys (server-side on S3), so deleting either job
never takes the other's files. A hit whose source job is gone, no longer succeeded or lost its files is dropped
and the job runs.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import Counter

from service.jobs.cache import ResultCache
from service.jobs.record import JobRecord, JobStatus, StoredFile, output_key
from service.jobs.store import JobStore
from service.storage import ObjectNotFound, Storage, StorageError

logger = logging.getLogger(__name__)

CACHE_LOOKUPS = Counter(
    "chronoedit_result_cache_lookups",
    "Result-cache lookups of jobs that may use it: hit (no GPU work), miss, or stale (entry dropped, job ran).",
    ["outcome"],
)
for _outcome in ("hit", "miss", "stale"):
    CACHE_LOOKUPS.labels(_outcome)


class OutputReuse:
    def __init__(self, cache: ResultCache, store: JobStore, storage: Storage) -> None:
        self.cache = cache
        self.store = store
        self.storage = storage

    def reuse(self, job: JobRecord, key: str) -> tuple[dict[str, StoredFile], str] | None:
        """This job's outputs copied from an earlier identical job, and that job's id; None: run the job."""
        try:
            hit = self.cache.lookup(job.tenant, key)
        except redis.RedisError as exc:  # the cache is an optimisation: without it the job runs
            logger.warning("job %s: cache lookup failed (%s); running it", job.id, exc)
            hit = None
        if hit is None:
            CACHE_LOOKUPS.labels("miss").inc()
            return None
        source = self.store.get(hit.job_id)
        if source is None or source.status != JobStatus.SUCCEEDED or source.files_deleted_at is not None:
            self._drop(job, key, f"source job {hit.job_id} no longer has its outputs")
            return None
        outputs: dict[str, StoredFile] = {}
        for name, stored in hit.outputs.items():
            target = output_key(job.id, job.attempt, stored.key.rsplit("/", 1)[-1])
            try:
                self.storage.copy(stored.key, target)
            except (ObjectNotFound, StorageError) as exc:
                self._drop(job, key, f"copying {stored.key} failed: {exc}")
                return None
            outputs[name] = stored.model_copy(update={"key": target})
        CACHE_LOOKUPS.labels("hit").inc()
        logger.info("job %s: outputs reused from job %s", job.id, hit.job_id)
        return outputs, hit.job_id

    def _drop(self, job: JobRecord, key: str, why: str) -> None:
        CACHE_LOOKUPS.labels("stale").inc()
        logger.info("job %s: cache entry dropped (%s); running it", job.id, why)
        self.cache.forget(job.tenant, key)

    def remember(self, job: JobRecord, key: str, outputs: dict[str, StoredFile]) -> None:
        try:
            self.cache.remember(job.tenant, key, job.id, outputs)
        except redis.RedisError as exc:  # the job succeeded; only its reuse is lost
            logger.warning("job %s: remembering its outputs failed (%s)", job.id, exc)
