"""Webhooks through the real stack: a Celery webhook worker delivers to a real HTTP receiver on loopback; signatures
are verified with the public `standardwebhooks` library."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator

import httpx
import pytest
from standardwebhooks import Webhook

from tests.receiver import Receiver, start_receiver
from tests.stack import DEFAULT_WEBHOOK_SECRET, ApiKeyInfo, Stack, sample_image, wait_job

pytestmark = pytest.mark.stack


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    yield receiver
    server.shutdown()


@pytest.fixture(scope="module")
def shop(stack: Stack) -> ApiKeyInfo:
    return stack.create_key("shop-webhooks")


def submit(client: httpx.Client, headers: dict[str, str] | None = None, **fields: object) -> dict:
    body = {
        "prompt": "make the box blue",
        "num_inference_steps": 2,
        "width": 32,
        "height": 32,
        "image_base64": base64.b64encode(sample_image(48, 32)).decode(),
        **fields,
    }
    response = client.post("/v1/edits", json=body, headers=headers or {})
    assert response.status_code == 202, response.text
    return response.json()


def wait_delivery(client: httpx.Client, job_id: str, headers: dict[str, str], settled: int = 1) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        deliveries = client.get(f"/v1/edits/{job_id}/deliveries", headers=headers).json()["data"]
        if len([d for d in deliveries if d["status"] != "pending"]) >= settled:
            return deliveries
        time.sleep(0.1)
    raise TimeoutError(f"deliveries of {job_id} still pending: {deliveries}")


def test_failing_receiver_gets_three_signed_attempts_with_one_id(
    client: httpx.Client, receiver: Receiver, shop: ApiKeyInfo
) -> None:
    receiver.scripts["/flaky"] = [500, 503, 200]
    job = submit(client, shop.headers, webhook=f"{receiver.base_url}/flaky")
    assert job["webhook_events"] == ["succeeded", "failed", "canceled"], "default: the terminal events"
    assert wait_job(client, job["id"], headers=shop.headers)["status"] == "succeeded"

    attempts = receiver.wait_for("/flaky", 3)
    time.sleep(1.0)
    assert len(receiver.requests("/flaky")) == 3, "no attempt after the 2xx"
    assert len({a.headers["webhook-id"] for a in attempts}) == 1, "one webhook-id across retries"
    assert {a.body for a in attempts} == {attempts[0].body}, "the same body every attempt"
    for attempt in attempts:
        payload = Webhook(shop.webhook_secret).verify(attempt.body, attempt.headers)
        assert attempt.headers["webhook-signature"].startswith("v1,")
        assert payload["type"] == "edit.succeeded"
        assert payload["data"]["id"] == job["id"] and payload["data"]["status"] == "succeeded"
        assert payload["data"]["outputs"]["image"]["url"].startswith("http")
    with pytest.raises(Exception, match="signature"):
        Webhook(DEFAULT_WEBHOOK_SECRET).verify(attempts[0].body, attempts[0].headers)

    [delivery] = wait_delivery(client, job["id"], shop.headers)
    assert delivery["id"] == attempts[0].headers["webhook-id"]
    assert delivery["status"] == "succeeded" and delivery["event"] == "succeeded"
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 503, 200]


def test_gone_stops_and_redirects_are_not_followed(client: httpx.Client, receiver: Receiver) -> None:
    receiver.scripts["/gone"] = [410]
    receiver.scripts["/moved"] = [302]
    gone = submit(client, webhook=f"{receiver.base_url}/gone")
    moved = submit(client, webhook=f"{receiver.base_url}/moved")
    [delivery] = wait_delivery(client, gone["id"], {})
    assert delivery["status"] == "gone" and [a["status_code"] for a in delivery["attempts"]] == [410]

    [delivery] = wait_delivery(client, moved["id"], {})
    assert delivery["status"] == "failed", "3xx is not success, and retries run out"
    assert [a["status_code"] for a in delivery["attempts"]] == [302] * 4, "first attempt + 3 scheduled retries"
    assert receiver.requests("/followed") == [], "the redirect was not followed"
    anonymous = receiver.requests("/gone")[0]
    assert Webhook(DEFAULT_WEBHOOK_SECRET).verify(anonymous.body, anonymous.headers)["data"]["id"] == gone["id"]

    retried = client.post(f"/v1/edits/{gone['id']}/deliveries/{delivery['id']}/retry")
    assert retried.status_code == 404, "the delivery belongs to the other job"
    gone_delivery = wait_delivery(client, gone["id"], {})[0]
    retried = client.post(f"/v1/edits/{gone['id']}/deliveries/{gone_delivery['id']}/retry")
    assert retried.status_code == 202 and retried.json()["status"] == "pending"
    again = receiver.wait_for("/gone", 2)
    assert again[1].headers["webhook-id"] == again[0].headers["webhook-id"], "a redelivery keeps the webhook-id"
    assert len(wait_delivery(client, gone["id"], {})[0]["attempts"]) == 2


def test_subscribed_events_in_order_with_progress_throttled(client: httpx.Client, receiver: Receiver) -> None:
    events = ["queued", "started", "progress", "succeeded"]
    job = submit(client, webhook=f"{receiver.base_url}/all", webhook_events=events, num_inference_steps=30)
    assert wait_job(client, job["id"])["status"] == "succeeded"
    deliveries = wait_delivery(client, job["id"], {}, settled=3)
    payloads = [json.loads(r.body) for r in receiver.wait_for("/all", len(deliveries))]
    # Deliveries run in parallel, so arrival order is not guaranteed (as with Stripe); the timestamps order them.
    types = [p["type"] for p in sorted(payloads, key=lambda p: p["timestamp"])]
    assert types[:2] == ["edit.queued", "edit.started"] and types[-1] == "edit.succeeded"
    progress = [t for t in types if t == "edit.progress"]
    assert 1 <= len(progress) < 30, f"throttled: {len(progress)} progress webhooks for 30 steps"


def test_webhook_urls_are_checked_at_submit(client: httpx.Client) -> None:
    cases = [
        ("https://10.0.0.7/hook", "webhook_url_forbidden"),
        ("https://169.254.169.254/latest", "webhook_url_forbidden"),
        ("https://127.0.0.2/hook", "webhook_url_forbidden"),  # loopback, but not the allow-listed 127.0.0.1
        ("http://example.com/hook", "webhook_url_forbidden"),  # https only for non-allow-listed hosts
        ("ftp://example.com/hook", "invalid_parameter"),
    ]
    image = base64.b64encode(sample_image(32, 32)).decode()
    for url, code in cases:
        response = client.post("/v1/edits", json={"prompt": "x", "image_base64": image, "webhook": url})
        assert response.status_code == 422 and response.json()["error"]["code"] == code, (url, response.text)
    response = client.post("/v1/edits", json={"prompt": "x", "image_base64": image, "webhook_events": ["queued"]})
    assert response.json()["error"]["code"] == "invalid_parameter"


def test_address_is_checked_again_at_delivery(make_stack, receiver: Receiver) -> None:
    """The API allows the loopback receiver, but this webhook worker's allow-list is empty: as if the name had been
    re-pointed at a private address after submit. Every attempt is refused before any request is sent."""
    stack = make_stack("guarded")
    stack.start_api()
    stack.env["CHRONOEDIT_WEBHOOK_ALLOW_HOSTS"] = "[]"
    stack.start_webhook_worker()
    stack.start_worker("guarded-worker")
    with stack.client() as client:
        job = submit(client, webhook=f"{receiver.base_url}/guarded")
        [delivery] = wait_delivery(client, job["id"], {})
    assert delivery["status"] == "failed"
    assert all(a["status_code"] is None and "refused" in a["error"] for a in delivery["attempts"])
    assert receiver.requests("/guarded") == []
