"""A job awaiting prompt enhancement, against a real Redis: it is `queued` but in no GPU queue (neither the
interactive order nor the batch lane) and no worker can claim it; finishing the enhancement enters it there in the
same transaction; a failure goes through the job's policy; the reconciler republishes its lost message to the
`enhance` queue and enforces the enhancement deadline."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
import redis

from service.jobs.lanes import BatchLane
from service.jobs.queue import ENHANCE_QUEUE, queue_for
from service.jobs.reconciler import Reconciler
from service.jobs.record import Enhancement, JobRecord, JobStatus
from service.jobs.store import JobStore
from service.jobs.system import JobSystem
from service.settings import CommonSettings
from tests.records import job_record

DB = 62


@pytest.fixture
def store(redis_server: str) -> JobStore:
    client = redis.Redis.from_url(f"{redis_server}/{DB}")
    return JobStore(client, prefix=f"gate-{uuid.uuid4().hex[:8]}", lease_seconds=5, max_attempts=2)


def awaiting(store: JobStore, policy: str = "best_effort", **fields: object) -> JobRecord:
    job = job_record(enhancement=Enhancement(policy=policy), **fields)
    store.create(job)
    return job


def in_queue_order(store: JobStore, job_id: str) -> bool:
    return store.client.zscore(store.keys.queued, job_id) is not None


def in_lane(store: JobStore, job: JobRecord) -> bool:
    return store.client.zscore(store.keys.lane.pending(job.tenant), job.id) is not None


def test_a_job_awaiting_enhancement_is_in_no_gpu_queue_until_it_is_enhanced(store: JobStore) -> None:
    job = awaiting(store)
    assert job.awaits_enhancement() and queue_for(job) == ENHANCE_QUEUE
    assert not in_queue_order(store, job.id)
    assert store.client.zscore(store.keys.enhancing, job.id) is not None
    assert store.claim(job.id, "gpu-worker") is None, "a stray edit message cannot start it"
    enhanced = store.finish_enhancement(job.id, "The user wants to ...", "The user wants to ...", "remote:m")
    assert enhanced is not None and enhanced.status == JobStatus.QUEUED and not enhanced.awaits_enhancement()
    assert enhanced.params.enhanced_prompt == "The user wants to ..." and enhanced.params.prompt == "x"
    assert enhanced.progress.stage == "queued" and enhanced.enhancement.enhancer == "remote:m"
    assert in_queue_order(store, job.id) and store.client.zscore(store.keys.enhancing, job.id) is None
    assert queue_for(enhanced) == "edits"
    assert store.finish_enhancement(job.id, "again", "again", "remote:m") is None, "only once"
    assert store.claim(job.id, "gpu-worker").params.model_prompt == "The user wants to ..."


def test_a_batch_item_enters_the_lane_only_once_enhanced(store: JobStore) -> None:
    store.client.set(store.keys.batch("b1"), '{"id": "b1", "tenant": "t", "kind": "edit", "mode": "standard"}')
    job = awaiting(store, lane="batch", batch_id="b1", tenant="t")
    assert not in_lane(store, job) and queue_for(job) == ENHANCE_QUEUE
    assert BatchLane(store.client, store.prefix).take(0) is None
    store.finish_enhancement(job.id, "long", "long", "local:tiny")
    assert in_lane(store, job) and not in_queue_order(store, job.id)
    assert BatchLane(store.client, store.prefix).take(0) == job.id


def test_failure_policy_required_fails_and_best_effort_goes_on_with_the_users_prompt(store: JobStore) -> None:
    required, best = awaiting(store, "required"), awaiting(store, "best_effort")
    failed = store.fail_enhancement(required.id, "timed out", "remote:m")
    assert failed.status == JobStatus.FAILED and failed.error.code == "enhancer_unavailable"
    assert "timed out" in failed.error.message and not in_queue_order(store, required.id)
    assert store.client.zscore(store.keys.finished, required.id) is not None
    went_on = store.fail_enhancement(best.id, "HTTP 500", "remote:m")
    assert went_on.status == JobStatus.QUEUED and went_on.enhancement.status == "failed"
    assert went_on.enhancement.error == "HTTP 500" and went_on.params.enhanced_prompt is None
    assert went_on.params.model_prompt == best.params.model_prompt and in_queue_order(store, best.id)
    assert store.client.zscore(store.keys.enhancing, best.id) is None


def test_a_canceled_job_takes_no_late_enhancement(store: JobStore) -> None:
    job = awaiting(store)
    assert store.request_cancel(job.id).status == JobStatus.CANCELED
    assert store.finish_enhancement(job.id, "late", "late", "remote:m") is None
    assert store.fail_enhancement(job.id, "late", "remote:m") is None
    assert store.client.zscore(store.keys.enhancing, job.id) is None


@pytest.fixture
def system(redis_server: str, tmp_path: Path) -> JobSystem:
    settings = CommonSettings(
        redis_url=f"{redis_server}/{DB}",
        key_prefix=f"gate-{uuid.uuid4().hex[:8]}",
        storage_dir=tmp_path,
        republish_after_seconds=0.01,
        enhance_timeout_seconds=60,
    )
    jobs = JobSystem(settings)
    jobs.redis.delete(ENHANCE_QUEUE, "edits")
    return jobs


def test_reconciler_republishes_a_lost_enhance_message_then_enforces_the_deadline(system: JobSystem) -> None:
    job = job_record(enhancement=Enhancement(policy="best_effort"))
    system.store.create(job)  # created, its message never published (lost)
    time.sleep(0.05)
    reconciler = Reconciler(system)
    reconciler.reconcile_once()
    assert system.redis.llen(ENHANCE_QUEUE) == 1 and system.redis.llen("edits") == 0
    system.settings.enhance_timeout_seconds = 0.01
    reconciler.reconcile_once()
    after = system.store.get(job.id)
    assert after.status == JobStatus.QUEUED and after.enhancement.status == "failed"
    assert "within" in after.enhancement.error
    assert system.redis.llen("edits") == 1, "released with the user's prompt, published to the GPU queue"
