"""`Idempotency-Key` through HTTP against the real stack: replays, reuse with another body, concurrent duplicates."""

from __future__ import annotations

import base64
import threading
import time
import uuid

import httpx
import pytest

from tests.stack import Stack, sample_image

pytestmark = pytest.mark.stack

IMAGE = base64.b64encode(sample_image(40, 32)).decode()


def body(**fields: object) -> dict:
    return {
        "prompt": "make it red",
        "num_inference_steps": 1,
        "width": 32,
        "height": 32,
        "image_base64": IMAGE,
        **fields,
    }


def tenant_jobs(stack: Stack, tenant: str = "default") -> int:
    return int(stack.redis().zcard(f"{stack.env['CHRONOEDIT_KEY_PREFIX']}:tenant:{tenant}:jobs"))


def test_same_key_same_request_replays_the_first_response(client: httpx.Client, stack: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = tenant_jobs(stack)
    first = client.post("/v1/edits", json=body(), headers=key)
    second = client.post("/v1/edits", json=body(), headers=key)
    assert first.status_code == second.status_code == 202
    assert second.json() == first.json(), "the first response, replayed"
    assert second.headers["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first.headers
    assert second.headers["location"] == first.headers["location"]
    assert tenant_jobs(stack) == before + 1

    multipart = client.post(
        "/v1/edits",
        files={"image": ("x.png", base64.b64decode(IMAGE), "image/png")},
        data={"prompt": "make it red", "num_inference_steps": "1", "width": "32", "height": "32"},
        headers=key,
    )
    assert multipart.json()["id"] == first.json()["id"], "the same request as a form is the same request"


def test_same_key_other_request_is_refused(client: httpx.Client, stack: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    assert client.post("/v1/edits", json=body(), headers=key).status_code == 202
    before = tenant_jobs(stack)
    other = client.post("/v1/edits", json=body(prompt="make it green"), headers=key)
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reuse"
    other_image = client.post(
        "/v1/edits", json=body(image_base64=base64.b64encode(sample_image(40, 32, seed=9)).decode()), headers=key
    )
    assert other_image.json()["error"]["code"] == "idempotency_key_reuse", "the image bytes are part of the request"
    assert tenant_jobs(stack) == before


def test_a_refused_request_does_not_use_up_the_key(client: httpx.Client) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    bad = client.post("/v1/edits", json=body(num_inference_steps=0), headers=key)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_parameter"
    assert client.post("/v1/edits", json=body(), headers=key).status_code == 202
    too_long = client.post("/v1/edits", json=body(), headers={"Idempotency-Key": "k" * 256})
    assert too_long.json()["error"]["code"] == "invalid_idempotency_key"


def test_concurrent_duplicates_create_one_job(stack: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    before = tenant_jobs(stack)
    barrier = threading.Barrier(8)
    responses: list[httpx.Response] = []

    def post() -> None:
        with stack.client() as client:
            barrier.wait()
            responses.append(client.post("/v1/edits", json=body(seed=7), headers=key))

    threads = [threading.Thread(target=post) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [r.status_code for r in responses] == [202] * 8, [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 7
    assert tenant_jobs(stack) == before + 1


def test_keys_are_scoped_by_tenant(client: httpx.Client, stack: Stack) -> None:
    key = {"Idempotency-Key": uuid.uuid4().hex}
    other = stack.create_key("idempotency-other-tenant")
    mine = client.post("/v1/edits", json=body(), headers=key).json()
    theirs = client.post("/v1/edits", json=body(), headers={**key, **other.headers}).json()
    assert mine["id"] != theirs["id"], "another tenant's key of the same name is another key"


def test_a_duplicate_of_a_request_still_running_waits_then_gets_409(make_stack) -> None:
    """The first request holds its key while `Prefer: wait` runs (no worker here: the job stays queued); a duplicate
    waits `CHRONOEDIT_IDEMPOTENCY_WAIT_SECONDS` for it, then answers 409 with Retry-After; later ones replay."""
    stack = make_stack("idem-wait", CHRONOEDIT_IDEMPOTENCY_WAIT_SECONDS="1", CHRONOEDIT_READY_WORKER_REQUIRED="false")
    stack.start_api()
    key = {"Idempotency-Key": uuid.uuid4().hex}
    request = body(seed=3)
    first: list[httpx.Response] = []

    def post_first() -> None:
        with stack.client() as client:
            first.append(client.post("/v1/edits", json=request, headers={**key, "Prefer": "wait=4"}))

    thread = threading.Thread(target=post_first)
    thread.start()
    with stack.client() as client:
        time.sleep(1.0)
        waiting = time.monotonic()
        duplicate = client.post("/v1/edits", json=request, headers={**key, "Prefer": "wait=4"})
        assert duplicate.status_code == 409, duplicate.text
        assert duplicate.json()["error"]["code"] == "idempotency_key_in_progress"
        assert duplicate.headers["retry-after"] == "1" and time.monotonic() - waiting >= 0.9
        thread.join()
        assert first[0].status_code == 202 and first[0].json()["status"] == "queued"
        replay = client.post("/v1/edits", json=request, headers={**key, "Prefer": "wait=4"})
        assert replay.status_code == 202 and replay.json()["id"] == first[0].json()["id"]
        assert replay.headers["idempotent-replayed"] == "true"
