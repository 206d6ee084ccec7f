"""The batch lane on a real Redis: round robin between tenants, the tenant served longest ago first, and no way back
to the front by draining and refilling."""

from __future__ import annotations

import time
import uuid
from collections import Counter

import pytest
import redis

from service.jobs.lanes import BatchLane, enter, leave
from tests.records import job_record


@pytest.fixture
def lane(redis_server: str) -> BatchLane:
    return BatchLane(redis.Redis.from_url(f"{redis_server}/60"), prefix=f"lane-{uuid.uuid4().hex[:8]}")


def add(lane: BatchLane, tenant: str, count: int = 1) -> list[str]:
    ids = []
    with lane.client.pipeline() as pipe:
        for _ in range(count):
            job = job_record(tenant=tenant, lane="batch")
            enter(pipe, lane.keys, job)
            ids.append(job.id)
        pipe.execute()
    return ids


def owner(ids: dict[str, str], job_id: str | None) -> str:
    assert job_id is not None
    return ids[job_id]


def test_tenants_take_turns_in_creation_order(lane: BatchLane) -> None:
    a, b = add(lane, "a", 4), add(lane, "b", 2)
    taken = [lane.take(time.time()) for _ in range(7)]
    assert taken == [a[0], b[0], a[1], b[1], a[2], a[3], None]
    assert lane.pending() == 0


def test_a_tenant_refilling_one_item_at_a_time_gets_no_more_than_its_turn(lane: BatchLane) -> None:
    ids = {job_id: "big" for job_id in add(lane, "big", 100)}
    ids.update({job_id: "small" for job_id in add(lane, "small")})
    served = Counter()
    for _ in range(40):
        job_id = lane.take(time.time())
        served[owner(ids, job_id)] += 1
        if ids[job_id] == "small":
            ids.update({new: "small" for new in add(lane, "small")})
    assert abs(served["big"] - served["small"]) <= 1, served


def test_a_new_tenant_goes_next_and_a_left_item_is_gone(lane: BatchLane) -> None:
    a = add(lane, "a", 3)
    assert lane.take(time.time()) == a[0]
    late = add(lane, "late")
    assert lane.take(time.time()) == late[0], "never served: ahead of a tenant served already"
    with lane.client.pipeline() as pipe:
        leave(pipe, lane.keys, job_record(id=a[1], tenant="a", lane="batch"))
        pipe.execute()
    assert [lane.take(time.time()), lane.take(time.time())] == [a[2], None]


def test_taken_items_not_claimed_are_found_and_put_back(lane: BatchLane) -> None:
    [job_id] = add(lane, "a")
    taken_at = time.time() - 100
    assert lane.take(taken_at) == job_id and lane.pending() == 0
    assert lane.stale_taken(time.time() - 50) == [job_id]
    lane.put_back(job_record(id=job_id, tenant="a", lane="batch"))
    assert lane.stale_taken(time.time()) == [] and lane.take(time.time()) == job_id
