"""Everything kept about finished work goes away with its files: after the retention, Redis holds no job, delivery
or batch record, idempotency records carry their expiry, and what is left without one is a small set of bounded
indexes whatever the number of jobs that passed through."""

from __future__ import annotations

import base64
import time

import pytest

from tests.receiver import start_receiver
from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

RECORDS = ("job", "deliveries", "batch", "events")
"""Key kinds (`<prefix>:<kind>:<id>...`) that hold one record per job or batch."""


def keys_without_expiry(stack: Stack) -> dict[str, int]:
    """Keys of the stack's database that never expire, with their sizes (a bounded index stays small)."""
    client = stack.redis()
    sizes: dict[str, int] = {}
    for raw in client.scan_iter(count=500):
        key = raw.decode(errors="replace")
        if client.ttl(raw) == -1:
            kind = client.type(raw).decode()
            length = {"zset": client.zcard, "hash": client.hlen, "list": client.llen, "set": client.scard}.get(kind)
            sizes[key] = int(length(raw)) if length else 1
    return sizes


def test_finished_work_leaves_nothing_unbounded_behind(make_stack) -> None:
    receiver, server = start_receiver()
    receiver.files["/a.png"] = sample_image(40, 32)
    stack = make_stack("lifecycle", CHRONOEDIT_OUTPUT_RETENTION_SECONDS="3")
    stack.start_api()
    stack.start_webhook_worker()
    stack.start_worker("l1")
    image = base64.b64encode(sample_image(40, 32)).decode()
    edit = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32, "image_base64": image}
    hook = {"webhook": f"{receiver.base_url}/hook", "webhook_events": ["succeeded"]}
    try:
        with stack.client() as client:
            jobs = [
                client.post("/v1/edits", json={**edit, **hook}, headers={"Idempotency-Key": f"k{i}"}).json()["id"]
                for i in range(12)
            ]
            items = [{"image_url": f"{receiver.base_url}/a.png", "reference": str(i)} for i in range(4)]
            shared = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32}
            created = client.post("/v1/batches", json={**shared, "webhook": hook["webhook"], "items": items})
            assert created.status_code == 201, created.text
            batch = created.json()
            for job_id in jobs:
                assert wait_job(client, job_id)["status"] == "succeeded"
            deadline = time.monotonic() + 60
            while (state := client.get(f"/v1/batches/{batch['batch']['id']}").json())["status"] != "completed":
                assert time.monotonic() < deadline, state
                time.sleep(0.5)
            receiver.wait_for("/hook", 13, timeout=60)
            jobs += [item["job_id"] for item in batch["items"]]
            deadline = time.monotonic() + 60
            while any(client.get(f"/v1/edits/{j}").status_code != 404 for j in jobs):
                assert time.monotonic() < deadline, "retention did not remove the jobs"
                time.sleep(0.5)
            batch_gone = client.get(f"/v1/batches/{batch['batch']['id']}").status_code
    finally:
        server.shutdown()
    remaining = keys_without_expiry(stack)
    records = [key for key in remaining if key.count(":") >= 2 and key.split(":")[1] in RECORDS]
    assert records == [], f"records without an expiry: {records}"
    assert batch_gone in (200, 404), "a finished batch is kept until its own expiry, then goes"
    prefix = stack.env["CHRONOEDIT_KEY_PREFIX"]
    assert not [k for k in remaining if k.startswith(f"{prefix}:idem:")], "idempotency records expire"
    assert len(remaining) <= 30 and max(remaining.values(), default=0) <= 30, remaining
