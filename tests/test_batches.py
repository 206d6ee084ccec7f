"""Catalog batches through HTTP against real processes: Redis, moto S3, Celery workers running the tiny model, a real
HTTP server that serves the input images and receives webhooks."""

from __future__ import annotations

import csv
import io
import itertools
import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from tests.proxy import Proxy
from tests.receiver import Receiver, start_receiver
from tests.stack import DEFAULT_WEBHOOK_SECRET, Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

PARAMS = {"prompt": "put the product on a white background", "num_inference_steps": 2, "width": 32, "height": 32}


@pytest.fixture(scope="module")
def images() -> Iterator[Receiver]:
    receiver, server = start_receiver()
    for i in range(60):
        receiver.files[f"/img/{i}.png"] = sample_image(40, 32, seed=i)
    receiver.files["/not-an-image.png"] = b"this is text, not a PNG"
    yield receiver
    server.shutdown()


@pytest.fixture(scope="module")
def two_workers(make_stack) -> Stack:
    stack = make_stack("batches", CHRONOEDIT_MAX_BATCH_ITEMS="60")
    stack.start_api()
    stack.start_webhook_worker()
    stack.start_worker("b1")
    stack.start_worker("b2")
    return stack


@pytest.fixture(scope="module")
def one_worker(make_stack) -> Stack:
    """One worker, so the order in which it takes items shows the lanes' priority and fairness."""
    stack = make_stack("lanes")
    stack.start_api()
    stack.start_worker("l1")
    return stack


def item(images: Receiver, i: int, **fields: Any) -> dict[str, Any]:
    return {"image_url": f"{images.base_url}/img/{i}.png", "reference": f"sku-{i}", **fields}


def create(client: httpx.Client, items: list[dict], headers: dict | None = None, **fields: Any) -> dict:
    response = client.post("/v1/batches", json={**PARAMS, **fields, "items": items}, headers=headers or {})
    assert response.status_code == 201, response.text
    return response.json()


def wait_batch(client: httpx.Client, batch_id: str, headers: dict | None = None, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = client.get(f"/v1/batches/{batch_id}", headers=headers or {}).json()
        if batch["completed_at"] is not None:
            return batch
        time.sleep(0.2)
    raise TimeoutError(f"batch {batch_id} unfinished: {batch}")


def all_items(client: httpx.Client, batch_id: str, headers: dict | None = None, limit: int = 20) -> list[dict]:
    items, cursor = [], None
    while True:
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        page = client.get(f"/v1/batches/{batch_id}/items", params=params, headers=headers or {}).json()
        items += page["data"]
        cursor = page["next_cursor"]
        if cursor is None:
            return items


def started(client: httpx.Client, job_id: str, headers: dict | None = None) -> datetime:
    return datetime.fromisoformat(client.get(f"/v1/edits/{job_id}", headers=headers or {}).json()["started_at"])


def test_fifty_items_on_two_workers_run_once_each(two_workers: Stack, images: Receiver) -> None:
    with two_workers.client() as client:
        submitted = create(client, [item(images, i, metadata={"row": str(i)}) for i in range(50)])
        assert (submitted["accepted"], submitted["rejected"], submitted["duplicates"]) == (50, 0, 0)
        batch = wait_batch(client, submitted["batch"]["id"])
        items = all_items(client, batch["id"])
    assert batch["status"] == "completed" and batch["progress"] == 1.0
    assert batch["counts"] == {
        "total": 50, "queued": 0, "running": 0, "succeeded": 50, "failed": 0, "canceled": 0, "cached": 0
    }  # fmt: skip
    assert [i["index"] for i in items] == list(range(50)), "request order, paged 20 at a time"
    assert [i["reference"] for i in items] == [f"sku-{i}" for i in range(50)]
    assert all(i["status"] == "succeeded" and i["metadata"] == {"row": str(i["index"])} for i in items)
    s3 = two_workers.s3()
    for entry in items:
        keys = [
            o["Key"]
            for o in s3.list_objects_v2(Bucket=two_workers.bucket, Prefix=f"jobs/{entry['job_id']}/")["Contents"]
        ]
        assert sorted(k.split("/")[2] for k in keys) == ["attempts", "input"], keys
        assert [k for k in keys if "/attempts/" in k] == [f"jobs/{entry['job_id']}/attempts/1/image.png"], "ran once"
    succeeded = {
        name: {
            json.loads(line).get("job_id")
            for line in two_workers.log(name, tail=None).splitlines()
            if '"job succeeded"' in line
        }
        for name in ("b1", "b2")
    }
    ran_by = {name: len(ids & {entry["job_id"] for entry in items}) for name, ids in succeeded.items()}
    assert ran_by["b1"] > 0 and ran_by["b2"] > 0 and sum(ran_by.values()) == 50, ran_by
    with two_workers.client() as client:
        job = client.get(f"/v1/edits/{items[7]['job_id']}").json()
    assert (job["batch_id"], job["reference"], job["attempt"]) == (batch["id"], "sku-7", 1)


def test_invalid_items_are_reported_one_by_one_and_the_rest_run(two_workers: Stack, images: Receiver) -> None:
    bad = [
        {"reference": "no-image"},
        {"image_url": f"{images.base_url}/not-an-image.png", "reference": "text"},
        {"input_key": "uploads/" + "0" * 32, "reference": "no-upload"},
        item(images, 3, width=17),
        item(images, 4, colour="red"),
        item(images, 5, kind="sketch"),
        "not an object",
    ]
    with two_workers.client() as client:
        submitted = create(client, [item(images, 1), *bad, item(images, 2)])
        batch = wait_batch(client, submitted["batch"]["id"])
    results = submitted["items"]
    assert [r["status"] for r in results] == ["accepted", *["rejected"] * len(bad), "accepted"]
    codes = [r["error"]["code"] for r in results[1:-1]]
    assert codes == [
        "missing_image", "invalid_image", "upload_not_found", "invalid_size", "invalid_parameter",
        "invalid_parameter", "invalid_parameter",
    ]  # fmt: skip
    assert results[4]["error"]["message"].startswith("width"), "the message names the field"
    assert batch["counts"]["total"] == 2 and batch["counts"]["succeeded"] == 2


def test_open_batch_takes_appends_once_per_reference(two_workers: Stack, images: Receiver) -> None:
    with two_workers.client() as client:
        batch_id = create(client, [item(images, 10), item(images, 11)], open=True)["batch"]["id"]
        append = {"items": [item(images, 11), item(images, 12), item(images, 13)]}
        headers = {"Idempotency-Key": "append-1"}
        first = client.post(f"/v1/batches/{batch_id}/items", json=append, headers=headers)
        replay = client.post(f"/v1/batches/{batch_id}/items", json=append, headers=headers)
        again = client.post(f"/v1/batches/{batch_id}/items", json=append).json()
        assert first.status_code == replay.status_code == 200
        assert replay.json() == first.json() and replay.headers["Idempotent-Replayed"] == "true"
        assert [r["status"] for r in first.json()["items"]] == ["duplicate", "accepted", "accepted"]
        assert [r["status"] for r in again["items"]] == ["duplicate"] * 3, "a retried append creates nothing"
        assert [r["job_id"] for r in again["items"]] == [r["job_id"] for r in first.json()["items"]][:1] + [
            r["job_id"] for r in first.json()["items"]
        ][1:]
        time.sleep(1)
        assert client.get(f"/v1/batches/{batch_id}").json()["status"] == "open", "open until closed"
        closed = client.post(f"/v1/batches/{batch_id}/close").json()
        assert closed["status"] in ("running", "completed")
        late = client.post(f"/v1/batches/{batch_id}/items", json={"items": [item(images, 14)]})
        assert late.status_code == 409 and late.json()["error"]["code"] == "batch_closed"
        batch = wait_batch(client, batch_id)
        assert batch["counts"]["total"] == batch["counts"]["succeeded"] == 4
        listed = client.get("/v1/batches", params={"limit": 100}).json()["data"]
        assert batch_id in [b["id"] for b in listed]
    ttl = two_workers.redis().ttl(f"{two_workers.env['CHRONOEDIT_KEY_PREFIX']}:batch:{batch_id}")
    assert 0 < ttl <= 7 * 24 * 3600, "a finished batch expires with the output retention"


def test_batch_completed_webhook_once_and_manifest(two_workers: Stack, images: Receiver) -> None:
    receiver, server = start_receiver()
    try:
        with two_workers.client() as client:
            webhook = f"{receiver.base_url}/hook"
            submitted = create(client, [item(images, i) for i in range(20, 24)], webhook=webhook)
            batch = wait_batch(client, submitted["batch"]["id"])
            jsonl = client.get(f"/v1/batches/{batch['id']}/manifest")
            as_csv = client.get(f"/v1/batches/{batch['id']}/manifest", headers={"Accept": "text/csv"})
        [delivery] = receiver.wait_for("/hook", 1)
        time.sleep(1.5)
        assert len(receiver.requests("/hook")) == 1, "one event per batch, none per item"
    finally:
        server.shutdown()
    payload = Webhook(DEFAULT_WEBHOOK_SECRET).verify(delivery.body, delivery.headers)
    assert payload["type"] == "batch.completed" and payload["data"]["id"] == batch["id"]
    assert payload["data"]["counts"]["succeeded"] == 4 and payload["data"]["status"] == "completed"
    rows = [json.loads(line) for line in jsonl.text.splitlines()]
    assert jsonl.headers["content-type"].startswith("application/x-ndjson")
    assert [r["reference"] for r in rows] == [f"sku-{i}" for i in range(20, 24)]
    assert all(r["status"] == "succeeded" and r["image_url"] for r in rows)
    assert httpx.get(rows[0]["image_url"]).content[:8] == b"\x89PNG\r\n\x1a\n"
    table = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert as_csv.headers["content-type"].startswith("text/csv")
    assert [r["job_id"] for r in table] == [r["job_id"] for r in rows]


def test_cancel_stops_what_has_not_finished(one_worker: Stack, images: Receiver) -> None:
    with one_worker.client() as client:
        submitted = create(client, [item(images, i) for i in range(12)], num_inference_steps=6, width=64, height=64)
        batch_id = submitted["batch"]["id"]
        while client.get(f"/v1/batches/{batch_id}").json()["counts"]["succeeded"] < 1:
            time.sleep(0.1)
        client.post(f"/v1/batches/{batch_id}/cancel")
        batch = wait_batch(client, batch_id)
        again = client.post(f"/v1/batches/{batch_id}/cancel").json()
    counts = batch["counts"]
    assert batch["status"] == again["status"] == "canceled"
    assert counts["canceled"] >= 8 and counts["succeeded"] >= 1 and counts["failed"] == 0
    assert counts["succeeded"] + counts["canceled"] == 12


def test_an_interactive_edit_goes_before_the_batch(one_worker: Stack, images: Receiver) -> None:
    with one_worker.client() as client:
        submitted = create(client, [item(images, i) for i in range(30, 40)], num_inference_steps=6, width=64, height=64)
        batch_id = submitted["batch"]["id"]
        while client.get(f"/v1/batches/{batch_id}").json()["counts"]["running"] < 1:
            time.sleep(0.05)
        edit = client.post("/v1/edits", json={**PARAMS, "image_url": f"{images.base_url}/img/0.png"}).json()
        done = wait_job(client, edit["id"])
        wait_batch(client, batch_id)
        later = [started(client, i["job_id"]) for i in all_items(client, batch_id)]
    interactive = datetime.fromisoformat(done["started_at"])
    submitted_at = datetime.fromisoformat(done["created_at"])
    behind = [at for at in later if at > submitted_at]
    assert len(behind) >= 7, "most of the batch was still waiting when the edit came"
    assert all(at > interactive for at in behind), "no waiting item started before the interactive edit"


def test_tenants_share_the_batch_lane_fairly(one_worker: Stack, images: Receiver) -> None:
    big = one_worker.create_key("catalog-a", "--max-concurrent", "2").headers
    small = one_worker.create_key("catalog-b").headers
    with one_worker.client() as client:
        a = create(client, [item(images, i) for i in range(40, 60)], headers=big, num_inference_steps=4)
        assert a["accepted"] == 20, "batch items do not count against the interactive concurrency quota"
        b = create(client, [item(images, i) for i in range(3)], headers=small, num_inference_steps=4)
        wait_batch(client, b["batch"]["id"], headers=small)
        wait_batch(client, a["batch"]["id"], headers=big)
        a_starts = sorted(started(client, r["job_id"], big) for r in a["items"])
        b_starts = sorted(started(client, r["job_id"], small) for r in b["items"])
        b_created = datetime.fromisoformat(b["batch"]["created_at"])
    a_between = [at for at in a_starts if b_created < at < b_starts[-1]]
    assert len(a_between) <= 3, f"tenant b waited for {len(a_between)} of tenant a's items, not a's whole batch"
    assert a_starts[-1] > b_starts[-1]


def test_result_cache_reuses_outputs_per_tenant_and_weights(
    make_stack, images: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from chronoedit_core.tiny import write_tiny_model

    other = write_tiny_model(tmp_path_factory.mktemp("other-loras"), seed=1)
    stack = make_stack("cache")
    stack.start_api()
    worker = stack.start_worker("c1")
    tenant_b = stack.create_key("tenant-b").headers
    items = [item(images, i) for i in range(3)]
    upscale = {"kind": "upscale", "mode": "fast", "prompt": "", "scale": 2, "seed": 11, "width": None, "height": None}
    upscale["num_inference_steps"] = 2
    with stack.client() as client:
        first = wait_batch(client, create(client, items, **upscale)["batch"]["id"])
        second = wait_batch(client, create(client, items, **upscale)["batch"]["id"])
        other_tenant = wait_batch(client, create(client, items, headers=tenant_b, **upscale)["batch"]["id"], tenant_b)
        no_seed = wait_batch(client, create(client, items, **{**upscale, "seed": None})["batch"]["id"])
        runs, reuses = all_items(client, first["id"]), all_items(client, second["id"])
        single = client.post("/v1/edits", json={**upscale, "image_url": items[0]["image_url"], "cache": True}).json()
        single = wait_job(client, single["id"])
        uncached = wait_job(
            client, client.post("/v1/edits", json={**upscale, "image_url": items[0]["image_url"]}).json()["id"]
        )
        same_pixels = [httpx.get(r["outputs"]["image"]["url"]).content for r in (runs[0], reuses[0])]
        metrics = httpx.get(stack.worker_metrics_url("c1")).text
    assert first["counts"]["cached"] == 0 and second["counts"]["cached"] == 3
    assert [r["cached_from"] for r in reuses] == [r["job_id"] for r in runs]
    assert same_pixels[0] == same_pixels[1]
    assert other_tenant["counts"]["cached"] == 0, "never across tenants"
    assert no_seed["counts"]["cached"] == 0, "a drawn seed is never reused"
    assert single["cached"] and single["cached_from"] == runs[0]["job_id"]
    assert not uncached["cached"], "single edits use the cache only when they ask"
    assert 'chronoedit_result_cache_lookups_total{outcome="hit"} 4.0' in metrics

    worker.stop()  # a worker with other adapter weights: their digests change, so nothing is reused
    loras = {name: str(other / "loras" / f"{name}.safetensors") for name in ("distill", "upscaler", "paintbrush")}
    stack.start_worker("c2", env={"CHRONOEDIT_LORAS": json.dumps(loras)})
    with stack.client() as client:
        new_weights = wait_batch(client, create(client, items, **upscale)["batch"]["id"])
        again = wait_batch(client, create(client, items, **upscale)["batch"]["id"])
    assert new_weights["counts"]["cached"] == 0 and again["counts"]["cached"] == 3


def test_limits_of_a_batch_request(make_stack, images: Receiver) -> None:
    stack = make_stack("batch-limits", CHRONOEDIT_MAX_BATCH_ITEMS="4", CHRONOEDIT_MAX_QUEUED_BATCH_ITEMS="5")
    stack.start_api()  # no worker: items stay queued
    with stack.client() as client:
        too_many = client.post("/v1/batches", json={**PARAMS, "items": [item(images, i) for i in range(5)]})
        assert too_many.status_code == 422 and too_many.json()["error"]["code"] == "too_many_items"
        assert create(client, [item(images, i) for i in range(4)])["accepted"] == 4
        full = client.post("/v1/batches", json={**PARAMS, "items": [item(images, 4), item(images, 5)]})
        assert full.status_code == 429 and full.json()["error"]["code"] == "batch_limit"
        assert int(full.headers["Retry-After"]) > 0
        empty = client.post("/v1/batches", json=PARAMS)
        assert empty.status_code == 422
        metrics = client.get("/metrics").text
    assert "chronoedit_batch_items_pending 4.0" in metrics


def test_an_items_upload_overlaps_the_next_items_model_run(make_stack, images: Receiver) -> None:
    """The worker encodes and uploads a batch item's outputs on its finisher thread while the next item runs: with
    storage behind a slow link (every request held 0.4 s), each item starts before the one before it is finished."""
    stack = make_stack("finisher")
    stack.start_api()
    host, port = stack.env["CHRONOEDIT_S3_ENDPOINT_URL"].removeprefix("http://").split(":")
    proxy = Proxy(target=(host, int(port)), delay_s=0.4).start()
    try:
        stack.start_worker("f1", env={"CHRONOEDIT_S3_ENDPOINT_URL": proxy.url})
        with stack.client() as client:
            submitted = create(client, [item(images, i) for i in range(3)])
            wait_batch(client, submitted["batch"]["id"])
            jobs = [client.get(f"/v1/edits/{i['job_id']}").json() for i in all_items(client, submitted["batch"]["id"])]
    finally:
        proxy.stop()
    assert all(job["status"] == "succeeded" for job in jobs), jobs
    assert all(job["timings"]["upload"] >= 0.4 for job in jobs), "the uploads went over the slow link"
    jobs.sort(key=lambda job: job["started_at"])
    for earlier, later in itertools.pairwise(jobs):
        assert datetime.fromisoformat(later["started_at"]) < datetime.fromisoformat(earlier["finished_at"]), (
            earlier["timings"],
            later["timings"],
        )


def test_a_storage_outage_while_an_item_finishes_fails_that_item_and_the_worker_goes_on(
    make_stack, images: Receiver
) -> None:
    """The finisher thread's failures end the job as the worker's own would: storage cut while an item's outputs
    upload leaves that item `failed` with `storage_unavailable`, and the worker runs the next item."""
    stack = make_stack("finisher-outage")
    stack.start_api()
    host, port = stack.env["CHRONOEDIT_S3_ENDPOINT_URL"].removeprefix("http://").split(":")
    proxy = Proxy(target=(host, int(port)), delay_s=0.5).start()
    try:
        worker = stack.start_worker("o1", env={"CHRONOEDIT_S3_ENDPOINT_URL": proxy.url})
        with stack.client() as client:
            first = create(client, [item(images, 0)], outputs=["image", "video"])
            job_id = all_items(client, first["batch"]["id"])[0]["job_id"]
            deadline = time.monotonic() + 120
            while client.get(f"/v1/edits/{job_id}").json()["progress"]["stage"] != "uploading":
                assert time.monotonic() < deadline, "the item never reached its upload"
                time.sleep(0.02)
            proxy.cut()
            failed = wait_job(client, job_id, timeout=180)
            proxy.restore()
            assert (failed["status"], failed["error"]["code"]) == ("failed", "storage_unavailable"), failed
            assert worker.alive(), "the worker stays up"
            second = create(client, [item(images, 1)])
            assert wait_batch(client, second["batch"]["id"])["counts"]["succeeded"] == 1, "and runs the next item"
    finally:
        proxy.stop()
