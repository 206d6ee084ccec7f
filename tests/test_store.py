"""The job record's transitions against a real Redis: claims are exclusive, stale attempts cannot write."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from service.jobs.batches import BatchRecord, BatchStore
from service.jobs.record import JobRecord, JobStatus, StoredFile
from service.jobs.store import JobStore
from tests.records import job_record


@pytest.fixture
def store(redis_server: str) -> JobStore:
    client = redis.Redis.from_url(f"{redis_server}/63")
    return JobStore(client, prefix=f"unit-{uuid.uuid4().hex[:8]}", lease_seconds=0.5, max_attempts=2)


def new_job(store: JobStore) -> JobRecord:
    job = job_record(steps=2)
    store.create(job)
    return job


def output() -> dict[str, StoredFile]:
    return {"image": StoredFile(key="o", content_type="image/png", width=16, height=16, bytes=1)}


def test_concurrent_claims_have_one_winner(store: JobStore) -> None:
    job = new_job(store)
    results: list[JobRecord | None] = []
    barrier = threading.Barrier(8)

    def claim(i: int) -> None:
        barrier.wait()
        results.append(store.claim(job.id, f"w{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    assert store.get(job.id).attempt == 1


def test_stale_attempt_cannot_finalise_or_report(store: JobStore) -> None:
    job = new_job(store)
    first = store.claim(job.id, "a")
    time.sleep(0.6)  # lease expired: the job may be taken over
    second = store.claim(job.id, "b")
    assert first is not None and second is not None and second.attempt == 2
    assert not store.set_progress(job.id, first.attempt, 1, 2)
    assert not store.succeed(job.id, first.attempt, output())
    assert not store.fail(job.id, first.attempt, "x", "y")
    assert store.succeed(job.id, second.attempt, output())
    final = store.get(job.id)
    assert final.status == JobStatus.SUCCEEDED and final.worker == "b"
    assert store.claim(job.id, "c") is None, "terminal jobs are never claimed again"


def test_live_lease_blocks_duplicate_delivery(store: JobStore) -> None:
    job = new_job(store)
    claimed = store.claim(job.id, "a")
    assert store.claim(job.id, "b") is None
    assert store.renew(job.id, claimed.attempt)
    assert store.requeue_if_expired(job.id) is None


def test_reconciler_requeues_then_fails_at_the_cap(store: JobStore) -> None:
    job = new_job(store)
    store.claim(job.id, "a")
    time.sleep(0.6)
    assert job.id in store.expired_leases()
    requeued = store.requeue_if_expired(job.id)
    assert requeued.status == JobStatus.QUEUED and requeued.attempt == 1
    assert job.id not in store.expired_leases()
    store.claim(job.id, "b")
    time.sleep(0.6)
    failed = store.requeue_if_expired(job.id)
    assert failed.status == JobStatus.FAILED and failed.error.code == "worker_lost"
    assert store.claim(job.id, "c") is None


def test_cancel_asked_while_the_worker_was_gone_ends_canceled(store: JobStore) -> None:
    job = new_job(store)
    store.claim(job.id, "a")
    assert store.request_cancel(job.id).cancel_requested_at is not None
    time.sleep(0.6)  # the worker died: its lease runs out
    ended = store.requeue_if_expired(job.id)
    assert ended.status == JobStatus.CANCELED, "not re-run, not failed"


def test_queued_jobs_are_listed_for_republishing_until_claimed(store: JobStore) -> None:
    job = new_job(store)
    assert job.id in store.stale_queued(older_than_seconds=0)
    assert job.id not in store.stale_queued(older_than_seconds=60)
    store.mark_published(job.id)
    store.claim(job.id, "a")
    assert job.id not in store.stale_queued(older_than_seconds=0)


def test_the_finishing_transition_records_the_final_attempts_timings(store: JobStore) -> None:
    job = job_record(created_at=time.time() - 2.0)
    store.create(job)
    claimed = store.claim(job.id, "a")
    assert claimed is not None and claimed.timings is None, "no timings until the job finishes"
    stages = {"input_load": 0.01, "inference": 0.5, "encode": 0.02, "upload": 0.03}
    assert store.succeed(job.id, claimed.attempt, output(), stages=stages)
    final = store.get(job.id)
    timings = final.timings
    assert timings is not None and timings.enhance is None
    assert timings.queue_wait == pytest.approx(claimed.started_at - job.created_at, abs=1e-5)
    assert timings.queue_wait >= 2.0
    assert timings.total == pytest.approx(final.finished_at - job.created_at, abs=1e-5)
    assert timings.model_dump(include=set(stages)) == stages


def test_after_a_lost_attempt_the_queue_wait_counts_from_its_lease_expiry(store: JobStore) -> None:
    job = new_job(store)
    first = store.claim(job.id, "a")
    time.sleep(0.6)
    requeued = store.requeue_if_expired(job.id)
    assert requeued is not None and requeued.requeued_at == first.lease_expires_at
    second = store.claim(job.id, "b")
    assert store.fail(job.id, second.attempt, "internal_error", "boom", stages={"input_load": 0.01})
    timings = store.get(job.id).timings
    assert timings.queue_wait == pytest.approx(second.started_at - first.lease_expires_at, abs=1e-5)
    assert timings.input_load == 0.01 and timings.inference is None, "only the stages the final attempt finished"
    assert timings.total >= first.lease_expires_at - job.created_at + timings.queue_wait - 1e-5, "the lost attempt too"


def test_a_job_canceled_before_any_worker_took_it_has_no_queue_wait(store: JobStore) -> None:
    job = new_job(store)
    canceled = store.request_cancel(job.id)
    assert canceled is not None and canceled.status == JobStatus.CANCELED
    timings = canceled.timings
    assert timings is not None and timings.queue_wait is None and timings.inference is None
    assert timings.total == pytest.approx(canceled.finished_at - job.created_at, abs=1e-5)


def test_a_claim_starts_the_attempt_loading_and_asks_about_the_batch_of_batch_items_only(store: JobStore) -> None:
    asked: list[str] = []

    def canceled(batch_id: str) -> bool:
        asked.append(batch_id)
        return True

    job = new_job(store)
    claimed = store.claim(job.id, "a", batch_canceled=canceled)
    assert claimed is not None and claimed.progress.stage == "loading" and claimed.progress.step == 0
    assert asked == [], "an interactive job has no batch to look up"

    batches = BatchStore(store.client, store.prefix, retention_seconds=60)
    batches.create(BatchRecord(id="b1", tenant="default", kind="edit", mode="fast"))
    item = job_record(batch_id="b1", lane="batch")
    store.create(item)
    assert store.claim(item.id, "a", batch_canceled=canceled) is None
    assert asked == ["b1"] and store.get(item.id).status == JobStatus.CANCELED, "an item of a canceled batch"


def test_the_last_steps_progress_can_start_decoding(store: JobStore) -> None:
    job = new_job(store)
    claimed = store.claim(job.id, "a")
    assert store.set_progress(job.id, claimed.attempt, 1, 2)
    assert store.get(job.id).progress.stage == "denoising"
    assert store.set_progress(job.id, claimed.attempt, 2, 2, "decoding")
    assert store.get(job.id).progress.model_dump() == {"step": 2, "total": 2, "stage": "decoding"}
