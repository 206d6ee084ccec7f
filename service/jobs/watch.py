"""Watching a job: the updates the job store publishes on the job's Redis pub/sub channel with every change
(`service/jobs/events.py`), for `GET /v1/edits/{id}/events` (server-sent events) and `Prefer: wait=N`.

The channel is subscribed before the record is read, so no change can fall between the two.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable

import redis.asyncio as aioredis
from starlette.concurrency import run_in_threadpool

from service.jobs.events import STATUS_EVENTS, JobKeys
from service.jobs.record import JobRecord

KEEPALIVE_SECONDS = 15.0

Update = tuple[str, JobRecord | None]
"""An event type and the job after it, or ("keepalive", None) when nothing happened for a while."""


class Watcher:
    def __init__(self, client: aioredis.Redis, keys: JobKeys, get: Callable[[str], JobRecord | None]) -> None:
        self.client = client
        self.keys = keys
        self.get = get

    async def updates(self, job_id: str, timeout: float, keepalive: float = KEEPALIVE_SECONDS) -> AsyncIterator[Update]:
        """The current state (as its status event), then every change, until the job is finished or `timeout`."""
        deadline = time.monotonic() + timeout
        async with self.client.pubsub() as pubsub:
            await pubsub.subscribe(self.keys.channel(job_id))
            job = await run_in_threadpool(self.get, job_id)
            if job is None:
                return
            yield STATUS_EVENTS[job.status], job
            while not job.status.is_terminal():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=min(remaining, keepalive))
                if message is None:
                    yield "keepalive", None
                    continue
                data = json.loads(message["data"])
                job = JobRecord.model_validate(data["job"])
                yield data["event"], job

    async def wait_finished(self, job: JobRecord, seconds: float) -> JobRecord:
        """The job once finished, or as it is after `seconds`."""
        latest = job
        async for _, update in self.updates(job.id, seconds, keepalive=seconds):
            if update is not None:
                latest = update
        return latest
