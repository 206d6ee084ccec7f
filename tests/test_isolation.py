"""Tenants are walled off from each other's batches, uploads and deliveries as from their jobs, and the secrets a
client holds (its API key, its webhook secret) never leave the places they belong: not in logs, error bodies, job
records or metrics."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import pytest

from tests.receiver import Receiver, start_receiver
from tests.stack import ApiKeyInfo, Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

SMALL = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def images() -> Receiver:
    receiver, _ = start_receiver()
    receiver.files["/a.png"] = sample_image(40, 32)
    return receiver


def upload(client: httpx.Client, key: ApiKeyInfo) -> str:
    created = client.post("/v1/uploads", headers=key.headers).json()
    assert client.put(created["upload_url"], content=sample_image(40, 32)).status_code == 200
    return str(created["input_key"])


def test_another_tenant_cannot_reach_batches_uploads_or_deliveries(stack: Stack, images: Receiver) -> None:
    alice, bob = stack.create_key("iso-alice"), stack.create_key("iso-bob")
    with stack.client() as client:
        item = {"image_url": f"{images.base_url}/a.png", "reference": "a"}
        batch = client.post("/v1/batches", json={**SMALL, "open": True, "items": [item]}, headers=alice.headers).json()
        batch_id = batch["batch"]["id"]
        for method, path, body in [
            ("GET", f"/v1/batches/{batch_id}", None),
            ("GET", f"/v1/batches/{batch_id}/items", None),
            ("GET", f"/v1/batches/{batch_id}/manifest", None),
            ("POST", f"/v1/batches/{batch_id}/items", {"items": [{**item, "reference": "b"}]}),
            ("POST", f"/v1/batches/{batch_id}/close", None),
            ("POST", f"/v1/batches/{batch_id}/cancel", None),
        ]:
            answer = client.request(method, path, json=body, headers=bob.headers)
            assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", (method, path)
        assert batch_id not in [b["id"] for b in client.get("/v1/batches", headers=bob.headers).json()["data"]]
        assert client.get(f"/v1/batches/{batch_id}", headers=alice.headers).json()["status"] == "open", "untouched"

        alices_upload = upload(client, alice)
        stolen = client.post("/v1/edits", json={**SMALL, "input_key": alices_upload}, headers=bob.headers)
        assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "upload_not_found"
        appended = client.post(
            f"/v1/batches/{batch_id}/items", json={"items": [{"input_key": alices_upload}]}, headers=alice.headers
        )
        assert appended.json()["items"][0]["status"] == "accepted", "the owner may use it"

        job = client.post("/v1/edits", json={**SMALL, "input_key": upload(client, alice)}, headers=alice.headers)
        job_id = job.json()["id"]
        wait_job(client, job_id, headers=alice.headers)
        for path in (f"/v1/edits/{job_id}/deliveries", f"/v1/edits/{job_id}/deliveries/msg_x/retry"):
            method = "POST" if path.endswith("retry") else "GET"
            assert client.request(method, path, headers=bob.headers).status_code == 404, path
        client.post(f"/v1/batches/{batch_id}/cancel", headers=alice.headers)


def test_keys_and_webhook_secrets_never_leave_their_place(stack: Stack, logs_dir: Path) -> None:
    receiver, server = start_receiver()
    key = stack.create_key("secretive")
    try:
        with stack.client() as client:
            hook = {"webhook": f"{receiver.base_url}/hook", "webhook_events": ["succeeded"]}
            job = client.post("/v1/edits", json={**SMALL, "image_base64": _b64(), **hook}, headers=key.headers).json()
            done = wait_job(client, job["id"], headers=key.headers)
            receiver.wait_for("/hook", 1)
            bad_key = key.key[:-4] + "AAAA"
            refused = client.get("/v1/edits", headers={"Authorization": f"Bearer {bad_key}"})
            invalid = client.post("/v1/edits", json={**SMALL, "prompt": ""}, headers=key.headers)
            metrics = client.get("/metrics").text
            worker_metrics = httpx.get(stack.worker_metrics_url("worker-1")).text
        record = stack.redis().get(f"{stack.env['CHRONOEDIT_KEY_PREFIX']}:job:{job['id']}").decode()
    finally:
        server.shutdown()
    assert done["status"] == "succeeded" and refused.status_code == 401 and invalid.status_code == 422
    places = {
        "job record": record,
        "job view": str(done),
        "error bodies": refused.text + invalid.text,
        "API metrics": metrics,
        "worker metrics": worker_metrics,
        "webhook body": receiver.requests("/hook")[0].body.decode(),
        **{path.name: path.read_text(errors="replace") for path in logs_dir.glob(f"{stack.name}-*.log")},
    }
    for secret, what in ((key.key, "API key"), (bad_key, "a presented key"), (key.webhook_secret, "webhook secret")):
        for place, text in places.items():
            assert secret not in text, f"the {what} appears in {place}"
    assert key.webhook_secret.removeprefix("whsec_") not in str(places), "not even the bare secret"


def _b64() -> str:
    return base64.b64encode(sample_image(40, 32)).decode()
