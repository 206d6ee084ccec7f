"""Managing jobs through HTTP: listing with cursor pagination and a status filter, deleting a finished job's files,
retention, and direct uploads (presigned S3 PUT; signed API URL in local mode)."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import httpx
import pytest

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

PNG = sample_image(40, 32)
EDIT = {"prompt": "x", "num_inference_steps": 1, "width": 32, "height": 32}


def test_list_newest_first_with_cursor_and_status_filter(client: httpx.Client, stack: Stack) -> None:
    key = stack.create_key("lister")
    image = base64.b64encode(PNG).decode()
    ids = [
        client.post("/v1/edits", json={**EDIT, "image_base64": image}, headers=key.headers).json()["id"]
        for _ in range(5)
    ]
    seen, cursor = [], None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/edits", params=params, headers=key.headers).json()
        assert page["object"] == "list" and len(page["data"]) <= 2
        seen += [job["id"] for job in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1], "newest first, each job once"
    for job_id in ids:
        wait_job(client, job_id, headers=key.headers)
    succeeded = client.get("/v1/edits", params={"status": "succeeded"}, headers=key.headers).json()["data"]
    assert [job["id"] for job in succeeded] == ids[::-1]
    assert client.get("/v1/edits", params={"status": "queued"}, headers=key.headers).json()["data"] == []
    bad = client.get("/v1/edits", params={"cursor": "not-a-cursor!"}, headers=key.headers)
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "invalid_cursor"
    assert client.get("/v1/edits", params={"status": "nope"}, headers=key.headers).status_code == 422


def test_delete_removes_a_finished_jobs_files(client: httpx.Client, stack: Stack) -> None:
    webhook = {"webhook": "http://127.0.0.1:9/unreachable", "webhook_events": '["succeeded"]'}
    job = client.post("/v1/edits", files={"image": ("x.png", PNG, "image/png")}, data={**EDIT, **webhook}).json()
    done = wait_job(client, job["id"])
    assert done["expires_at"] > done["finished_at"], "a finished job says when its files expire"
    url = done["outputs"]["image"]["url"]
    assert httpx.get(url).status_code == 200
    deleted = client.delete(f"/v1/edits/{job['id']}")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json()["outputs"] == {} and deleted.json()["files_deleted_at"] is not None
    assert deleted.json()["expires_at"] == done["expires_at"], "the tombstone goes at retention"
    listed = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job['id']}/")
    assert listed.get("KeyCount", 0) == 0, "inputs and outputs are gone from storage"
    assert httpx.get(url).status_code == 404
    assert client.get(f"/v1/edits/{job['id']}").json()["status"] == "succeeded", "the record stays"
    for sub in ("deliveries", "events"):
        gone = client.get(f"/v1/edits/{job['id']}/{sub}")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "not_found", sub
    prefix = stack.env["CHRONOEDIT_KEY_PREFIX"]
    assert not stack.redis().exists(f"{prefix}:deliveries:{job['id']}"), "pending deliveries are dropped"
    assert client.delete(f"/v1/edits/{job['id']}").status_code == 200, "deleting again answers the same"


def test_delete_refuses_an_unfinished_job(client: httpx.Client) -> None:
    data = {**EDIT, "num_inference_steps": 60, "width": 256, "height": 256}
    job = client.post("/v1/edits", files={"image": ("x.png", PNG, "image/png")}, data=data).json()
    refused = client.delete(f"/v1/edits/{job['id']}")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "job_not_finished"
    wait_job(client, job["id"])


def test_direct_upload_to_s3(client: httpx.Client, stack: Stack) -> None:
    upload = client.post("/v1/uploads", headers={"Idempotency-Key": "upload-1"})
    assert upload.status_code == 201
    body = upload.json()
    replay = client.post("/v1/uploads", headers={"Idempotency-Key": "upload-1"})
    assert replay.status_code == 201 and replay.json() == body, "uploads are idempotent too"
    assert body["method"] == "PUT" and body["upload_url"].startswith(stack.env["CHRONOEDIT_S3_ENDPOINT_URL"])
    not_yet = client.post("/v1/edits", json={**EDIT, "input_key": body["input_key"]})
    assert not_yet.status_code == 409 and not_yet.json()["error"]["code"] == "upload_incomplete"
    assert httpx.put(body["upload_url"], content=PNG).status_code == 200
    job = client.post("/v1/edits", json={**EDIT, "input_key": body["input_key"]})
    assert job.status_code == 202, job.text
    assert job.json()["input"]["width"] == 40
    assert wait_job(client, job.json()["id"])["status"] == "succeeded"

    other = stack.create_key("uploads-other")
    stolen = client.post("/v1/edits", json={**EDIT, "input_key": body["input_key"]}, headers=other.headers)
    assert stolen.status_code == 404 and stolen.json()["error"]["code"] == "upload_not_found"
    junk = client.post("/v1/uploads").json()
    assert httpx.put(junk["upload_url"], content=b"not an image").status_code == 200
    refused = client.post("/v1/edits", json={**EDIT, "input_key": junk["input_key"]})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_image"


@pytest.fixture(scope="module")
def local(make_stack, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    """Local storage, served by the API, and a retention of 3 s."""
    folder: Path = tmp_path_factory.mktemp("local-storage")
    stack = make_stack(
        "local",
        CHRONOEDIT_STORAGE_BACKEND="local",
        CHRONOEDIT_STORAGE_DIR=str(folder),
        CHRONOEDIT_URL_SIGNING_SECRET="local-storage-test-secret-7f3a",
        CHRONOEDIT_OUTPUT_RETENTION_SECONDS="3",
    )
    stack.start_api()
    stack.start_worker("local-worker")
    return stack


def test_local_upload_and_retention(local: Stack) -> None:
    folder = Path(local.env["CHRONOEDIT_STORAGE_DIR"])
    with local.client() as client:
        upload = client.post("/v1/uploads").json()
        assert upload["upload_url"].startswith("/v1/uploads/")
        tampered = client.put(upload["upload_url"].replace("signature=", "signature=0"), content=PNG)
        assert tampered.status_code == 403
        put = client.put(upload["upload_url"], content=PNG)
        assert put.status_code == 200 and put.json() == {"input_key": upload["input_key"], "bytes": len(PNG)}
        job = client.post("/v1/edits", json={**EDIT, "input_key": upload["input_key"]}).json()
        done = wait_job(client, job["id"])
        assert done["status"] == "succeeded"
        url = done["outputs"]["image"]["url"]
        assert client.get(url).status_code == 200

        deadline = time.monotonic() + 20
        while client.get(f"/v1/edits/{job['id']}").status_code != 404:
            assert time.monotonic() < deadline, "retention did not delete the job"
            time.sleep(0.3)
        assert client.get(url).status_code == 404
        assert job["id"] not in [j["id"] for j in client.get("/v1/edits", params={"limit": 100}).json()["data"]]
        prefix = local.env["CHRONOEDIT_KEY_PREFIX"]
        assert not local.redis().exists(f"{prefix}:job:{job['id']}", f"{prefix}:deliveries:{job['id']}")
        assert not (folder / "jobs" / job["id"]).exists() or not any((folder / "jobs" / job["id"]).rglob("*.*"))
        deadline = time.monotonic() + 20
        while (folder / upload["input_key"] / "image").exists():
            assert time.monotonic() < deadline, "the upload did not expire"
            time.sleep(0.3)
