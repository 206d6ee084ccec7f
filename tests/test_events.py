"""What the job store's transitions set off, against a real Redis: pub/sub messages on every change, webhook
deliveries only for subscribed events (progress throttled), the indexes, and nothing for changes that did not
commit."""

from __future__ import annotations

import json
import time
import uuid

import pytest
import redis

from service.jobs.record import JobRecord, StoredFile
from service.jobs.store import JobStore
from tests.records import job_record


@pytest.fixture
def store(redis_server: str) -> JobStore:
    client = redis.Redis.from_url(f"{redis_server}/63")
    return JobStore(client, prefix=f"events-{uuid.uuid4().hex[:8]}", lease_seconds=0.5, max_attempts=2)


def create(store: JobStore, **fields: object) -> JobRecord:
    job = job_record(steps=5, **fields)
    store.create(job)
    return job


def deliveries(store: JobStore, job_id: str) -> list[str]:
    values = store.client.hgetall(store.keys.deliveries(job_id)).values()
    return [d["event"] for d in sorted((json.loads(v) for v in values), key=lambda d: d["created_at"])]


def output() -> dict[str, StoredFile]:
    return {"image": StoredFile(key="o", content_type="image/png", width=16, height=16, bytes=1)}


def test_subscribed_events_become_deliveries_with_progress_throttled(store: JobStore) -> None:
    events = ["queued", "started", "progress", "succeeded"]
    job = create(store, webhook="https://example.com/hook", webhook_events=events, tenant="t1")
    claimed = store.claim(job.id, "w")
    for step in range(1, 6):
        assert store.set_progress(job.id, claimed.attempt, step, 5)
    assert store.renew(job.id, claimed.attempt)
    assert store.succeed(job.id, claimed.attempt, output())
    assert deliveries(store, job.id) == ["queued", "started", "progress", "succeeded"], "5 steps within 2 s: 1"
    assert store.client.zcard(store.keys.webhooks_due) == 4
    assert store.client.zrange(store.keys.tenant_jobs("t1"), 0, -1) == [job.id.encode()]
    assert store.client.zscore(store.keys.finished, job.id) is not None
    assert store.client.llen(store.keys.durations("all")) == 1


def test_default_subscription_is_terminal_events_and_no_webhook_means_none(store: JobStore) -> None:
    hooked = create(store, webhook="https://example.com/hook")
    plain = create(store)
    for job in (hooked, plain):
        claimed = store.claim(job.id, "w")
        store.set_progress(job.id, claimed.attempt, 1, 5)
        store.fail(job.id, claimed.attempt, "boom", "it broke")
    assert deliveries(store, hooked.id) == ["failed"]
    assert deliveries(store, plain.id) == []


def test_every_committed_change_is_published_and_nothing_else(store: JobStore) -> None:
    job = create(store)
    pubsub = store.client.pubsub()
    pubsub.subscribe(store.keys.channel(job.id))
    assert pubsub.get_message(timeout=1)["type"] == "subscribe"
    first = store.claim(job.id, "a")
    store.renew(job.id, first.attempt)  # a lease renewal tells nobody
    time.sleep(0.6)
    second = store.claim(job.id, "b")  # a re-claim under an expired lease is a new start
    assert not store.set_progress(job.id, first.attempt, 1, 5), "a stale attempt's change does not commit"
    store.set_progress(job.id, second.attempt, 1, 5)
    store.succeed(job.id, second.attempt, output())
    messages = []
    while (message := pubsub.get_message(timeout=0.5)) is not None:
        messages.append(json.loads(message["data"]))
    assert [m["event"] for m in messages] == ["started", "started", "progress", "succeeded"]
    assert messages[-1]["job"]["status"] == "succeeded" and messages[1]["job"]["attempt"] == 2
    assert store.client.zscore(store.keys.queued, job.id) is None
