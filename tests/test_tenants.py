"""API keys and tenants through HTTP: isolation both ways, 401s, revocation, rate limit and quota (429 with
Retry-After), queue position. Keys come from the admin command, `chronoedit keys create`."""

from __future__ import annotations

import base64
import subprocess
import time

import httpx
import pytest

from service.cli.processes import python_module
from tests.stack import ApiKeyInfo, Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

IMAGE = base64.b64encode(sample_image(40, 32)).decode()
EDIT = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32, "image_base64": IMAGE}


@pytest.fixture(scope="module")
def locked(make_stack) -> Stack:
    """A stack that requires keys and has no worker: jobs stay queued."""
    stack = make_stack("locked", CHRONOEDIT_AUTH_REQUIRED="true", CHRONOEDIT_READY_WORKER_REQUIRED="false")
    stack.start_api()
    return stack


def test_tenants_cannot_see_each_others_jobs(client: httpx.Client, stack: Stack) -> None:
    alice, bob = stack.create_key("alice"), stack.create_key("bob")
    jobs = {}
    for owner in (alice, bob):
        response = client.post("/v1/edits", json=EDIT, headers=owner.headers)
        assert response.status_code == 202
        jobs[owner.tenant] = response.json()["id"]
    wait_job(client, jobs["alice"], headers=alice.headers)
    wait_job(client, jobs["bob"], headers=bob.headers)
    for owner, other in ((alice, bob), (bob, alice)):
        theirs = jobs[other.tenant]
        assert client.get(f"/v1/edits/{jobs[owner.tenant]}", headers=owner.headers).status_code == 200
        for method, path in [
            ("GET", f"/v1/edits/{theirs}"),
            ("GET", f"/v1/edits/{theirs}/events"),
            ("GET", f"/v1/edits/{theirs}/deliveries"),
            ("DELETE", f"/v1/edits/{theirs}"),
        ]:
            response = client.request(method, path, headers=owner.headers)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", (method, path)
        listed = client.get("/v1/edits", headers=owner.headers).json()["data"]
        assert [job["id"] for job in listed] == [jobs[owner.tenant]]
    anonymous = client.get(f"/v1/edits/{jobs['alice']}")
    assert anonymous.status_code == 404, "the default tenant is a tenant too"


def test_keys_are_required_and_checked(locked: Stack) -> None:
    with locked.client() as client:
        missing = client.post("/v1/edits", json=EDIT)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
        assert missing.headers["www-authenticate"].startswith("Bearer")
        wrong = client.get("/v1/edits", headers={"Authorization": "Bearer ce_not-a-key"})
        assert wrong.status_code == 401
        assert client.get("/v1/edits", headers={"Authorization": "Basic abc"}).status_code == 401
        assert client.get("/healthz").status_code == 200, "health checks need no key"

        key = locked.create_key("carol")
        created = client.post("/v1/edits", json=EDIT, headers=key.headers)
        assert created.status_code == 202
        stored = locked.redis().get(f"{locked.env['CHRONOEDIT_KEY_PREFIX']}:apikey:{key.id}").decode()
        assert key.key not in stored and "key_hash" in stored, "only the hash is stored"

        revoke = python_module("service.cli", "keys", "revoke", key.id)
        subprocess.run(revoke, env={**locked.env}, check=True, capture_output=True, timeout=60)
        listing = subprocess.run(
            python_module("service.cli", "keys", "list"), env={**locked.env}, capture_output=True, text=True
        )
        assert f"{key.id}  tenant=carol  revoked" in listing.stdout
        assert client.get(f"/v1/edits/{created.json()['id']}", headers=key.headers).status_code == 401


def test_rate_limit_answers_429_with_retry_after(locked: Stack) -> None:
    key = locked.create_key("dave", "--rate-limit", "3")
    with locked.client() as client:
        codes = [client.get("/v1/edits", headers=key.headers).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        limited = client.get("/v1/edits", headers=key.headers)
        assert limited.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(limited.headers["retry-after"]) <= 60
        other = locked.create_key("dave")
        assert client.get("/v1/edits", headers=other.headers).status_code == 200, "the limit is per key"


def test_concurrent_job_quota_and_queue_position(locked: Stack) -> None:
    key: ApiKeyInfo = locked.create_key("erin", "--max-concurrent", "2")
    with locked.client() as client:
        first = client.post("/v1/edits", json=EDIT, headers=key.headers)
        second = client.post("/v1/edits", json=EDIT, headers=key.headers)
        assert first.status_code == second.status_code == 202
        third = client.post("/v1/edits", json=EDIT, headers=key.headers)
        assert third.status_code == 429 and third.json()["error"]["code"] == "concurrency_limit"
        assert int(third.headers["retry-after"]) > 0
        one, two = first.json(), second.json()
        assert two["queue_position"] == one["queue_position"] + 1
        assert one["eta_seconds"] is None, "no finished job to estimate from yet"
        again = client.get(f"/v1/edits/{one['id']}", headers=key.headers).json()
        assert again["queue_position"] == one["queue_position"]


def test_a_finished_job_frees_its_quota_slot(client: httpx.Client, stack: Stack) -> None:
    key = stack.create_key("frank", "--max-concurrent", "1")
    first = client.post("/v1/edits", json=EDIT, headers=key.headers).json()
    wait_job(client, first["id"], headers=key.headers)
    assert client.post("/v1/edits", json=EDIT, headers=key.headers).status_code == 202


def test_quota_slots_left_by_a_crashed_submission_are_reclaimed(locked: Stack) -> None:
    key = locked.create_key("grace", "--max-concurrent", "1")
    active = f"{locked.env['CHRONOEDIT_KEY_PREFIX']}:active:{key.id}"
    # What an API process that died between reserving a slot and creating the job leaves behind.
    locked.redis().zadd(active, {"0" * 32: time.time() - 3600})
    with locked.client() as client:
        assert client.post("/v1/edits", json=EDIT, headers=key.headers).status_code == 202
        other = locked.create_key("grace", "--max-concurrent", "2")
        locked.redis().zadd(f"{locked.env['CHRONOEDIT_KEY_PREFIX']}:active:{other.id}", {"1" * 32: time.time()})
        assert client.post("/v1/edits", json=EDIT, headers=other.headers).status_code == 202
        third = client.post("/v1/edits", json=EDIT, headers=other.headers)
        assert third.status_code == 429, "a young reservation is a submission in flight, not a leak"
