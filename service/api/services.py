"""The API process's services, built once in the lifespan and reached by routes through `ServicesDep`: API keys and
limits, idempotency, uploads, job and batch management, watching, webhook deliveries, and the retention sweeper
thread."""

from __future__ import annotations

import logging
import threading

import redis.asyncio as aioredis

from service.api.auth import Limits
from service.api.batches import BatchManager
from service.api.idempotency import Idempotency
from service.api.manage import JobManager
from service.api.uploads import Uploads
from service.jobs.events import JobKeys
from service.jobs.system import JobSystem
from service.jobs.watch import Watcher
from service.keys import KeyStore
from service.settings import ApiSettings
from service.webhooks.deliveries import Deliveries

logger = logging.getLogger(__name__)


class Services:
    def __init__(self, settings: ApiSettings, jobs: JobSystem) -> None:
        prefix = settings.key_prefix
        keys = JobKeys(prefix)
        self.settings = settings
        self.jobs = jobs
        self.async_redis = aioredis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
        self.api_keys = KeyStore(jobs.redis, prefix)
        self.limits = Limits(
            jobs.redis, keys, settings.rate_limit_per_minute, settings.max_concurrent_jobs, self._unfinished
        )
        self.idempotency = Idempotency(
            self.async_redis, prefix, settings.idempotency_ttl_seconds, settings.idempotency_wait_seconds
        )
        self.uploads = Uploads(jobs.redis, prefix, jobs.storage, settings)
        self.manager = JobManager(jobs, settings.output_retention_seconds)
        self.batches = BatchManager(jobs, self.manager)
        self.watcher = Watcher(self.async_redis, keys, jobs.get)
        self.deliveries = Deliveries(jobs.redis, keys)
        self._stop = threading.Event()
        self._sweeper = threading.Thread(target=self._sweep_loop, name="retention", daemon=True)

    def _unfinished(self, job_id: str, missing_is_finished: bool) -> bool:
        job = self.jobs.get(job_id)
        return not missing_is_finished if job is None else not job.status.is_terminal()

    def start(self) -> None:
        self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop.wait(self.settings.reconcile_interval_seconds):
            try:
                self.manager.sweep(self.uploads)
            except Exception:  # keep sweeping through Redis or storage hiccups
                logger.exception("retention pass failed")

    async def close(self) -> None:
        self._stop.set()
        self._sweeper.join(timeout=5)
        await self.async_redis.aclose()
