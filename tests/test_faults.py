"""Nothing accepted is lost: a Redis restart, a storage outage, workers and the API stopped with SIGTERM, and a job
that outlives the broker's visibility timeout, each against real processes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.cli.processes import free_port, start_redis
from service.settings import CommonSettings
from service.storage import S3Storage
from tests.proxy import Proxy
from tests.receiver import start_receiver
from tests.stack import S3_ENV, sample_image, wait_job

pytestmark = pytest.mark.stack

SHORT = {"prompt": "make it red", "num_inference_steps": "2", "width": "32", "height": "32"}
LONG = {**SHORT, "num_inference_steps": "100", "width": "320", "height": "320"}
"""Several seconds on a CPU worker (over 3 s on an idle two-core machine): long enough to act while it runs."""
LONGER = {**LONG, "width": "640", "height": "640"}
"""Well over the 2 s visibility timeout of the test that needs a job to outlast it (about 15 s)."""


def submit(client: httpx.Client, fields: dict[str, str], **extra: str) -> dict[str, Any]:
    response = client.post(
        "/v1/edits", files={"image": ("p.png", sample_image(), "image/png")}, data={**fields, **extra}
    )
    assert response.status_code == 202, response.text
    return dict(response.json())


def wait_running(client: httpx.Client, job_id: str, step: int = 1) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        job = client.get(f"/v1/edits/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= step:
            return
        assert job["status"] in ("queued", "running"), job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never ran")


@pytest.fixture
def own_redis(tmp_path: Path, logs_dir: Path) -> Iterator[dict[str, Any]]:
    """A redis-server of this test's own (append-only persistence, as deployed), which it may stop and start."""
    port, data = free_port(), tmp_path / "redis"
    server = {"port": port, "data": data, "child": start_redis(port, data, log=logs_dir / "own-redis.log")}
    yield server
    server["child"].stop()


def test_queued_and_running_jobs_survive_a_redis_restart(make_stack, own_redis: dict[str, Any], logs_dir: Path) -> None:
    receiver, server = start_receiver()
    stack = make_stack(
        "redis-restart", CHRONOEDIT_REDIS_URL=f"redis://127.0.0.1:{own_redis['port']}/0", CHRONOEDIT_LEASE_SECONDS="15"
    )
    stack.start_api()
    stack.start_webhook_worker()
    stack.start_worker("r1")
    try:
        with stack.client() as client:
            running, queued = submit(client, LONG), submit(client, SHORT)
            wait_running(client, running["id"])
            own_redis["child"].stop()  # SIGTERM: Redis writes its append-only file and exits
            started = time.monotonic()
            during = client.get(f"/v1/edits/{running['id']}")
            assert during.status_code == 503 and during.json()["error"]["code"] == "store_unavailable"
            assert time.monotonic() - started < 15, "an outage is answered, not waited out"
            assert int(during.headers["Retry-After"]) > 0
            refused = client.post("/v1/edits", files={"image": ("p.png", sample_image(), "image/png")}, data=SHORT)
            assert refused.status_code == 503, refused.text
            time.sleep(2)
            own_redis["child"] = start_redis(own_redis["port"], own_redis["data"], log=logs_dir / "own-redis.log")
            for job in (running, queued):
                assert wait_job(client, job["id"], timeout=180)["status"] == "succeeded", job["id"]
            after = submit(client, SHORT, webhook=f"{receiver.base_url}/after", webhook_events='["succeeded"]')
            assert wait_job(client, after["id"])["status"] == "succeeded", "the worker reconnected"
            receiver.wait_for("/after", 1, timeout=60)  # the webhook worker reconnected too
            assert client.get("/readyz").status_code == 200
    finally:
        server.shutdown()


@pytest.fixture
def cuttable_s3(s3_endpoint: str) -> Iterator[Proxy]:
    host, port = s3_endpoint.removeprefix("http://").split(":")
    proxy = Proxy(target=(host, int(port))).start()
    yield proxy
    proxy.stop()


def test_a_storage_outage_fails_the_job_it_hits_and_nothing_else(make_stack, cuttable_s3: Proxy) -> None:
    stack = make_stack("s3-outage", CHRONOEDIT_S3_ENDPOINT_URL=cuttable_s3.url)
    stack.start_api()
    worker = stack.start_worker("s1")
    with stack.client() as client:
        job = submit(client, LONG)
        wait_running(client, job["id"])
        cuttable_s3.cut()
        failed = wait_job(client, job["id"], timeout=180)
        refused = client.post("/v1/edits", files={"image": ("p.png", sample_image(), "image/png")}, data=SHORT)
        cuttable_s3.restore()
        assert failed["status"] == "failed" and failed["error"]["code"] == "storage_unavailable", failed
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "storage_unavailable"
        assert worker.alive(), "the worker stays up"
        assert wait_job(client, submit(client, SHORT)["id"])["status"] == "succeeded", "and takes the next job"


def test_a_brief_storage_outage_is_retried(cuttable_s3: Proxy) -> None:
    settings = CommonSettings(
        storage_backend="s3",
        s3_endpoint_url=cuttable_s3.url,
        s3_bucket="bucket-retried",
        s3_access_key_id=S3_ENV["CHRONOEDIT_S3_ACCESS_KEY_ID"],
        s3_secret_access_key=S3_ENV["CHRONOEDIT_S3_SECRET_ACCESS_KEY"],
    )
    storage = S3Storage(settings)
    storage.ensure_bucket()
    cuttable_s3.cut()
    threading.Timer(1.5, cuttable_s3.restore).start()
    storage.put("retried/object", b"payload", "application/octet-stream")  # fails at first, retried with backoff
    assert storage.get("retried/object") == b"payload"


def test_sigterm_lets_a_worker_finish_its_job_and_take_no_other(make_stack) -> None:
    stack = make_stack("drain")
    stack.start_api()
    first = stack.start_worker("d1")
    with stack.client() as client:
        running, waiting = submit(client, LONG), submit(client, SHORT)
        wait_running(client, running["id"])
        os.kill(first.pid, signal.SIGTERM)  # what Docker and Kubernetes send: to the main process alone
        assert wait_job(client, running["id"], timeout=120)["status"] == "succeeded", "the running job finishes"
        first.process.wait(timeout=60)
        assert client.get(f"/v1/edits/{waiting['id']}").json()["status"] == "queued", "no new job was taken"
        stack.start_worker("d2")
        assert wait_job(client, waiting["id"])["status"] == "succeeded", "the next worker takes it"


def test_sigterm_lets_the_api_answer_requests_in_flight(make_stack) -> None:
    stack = make_stack("api-drain")
    stack.start_api()
    stack.start_worker("a1")
    answers: list[httpx.Response] = []

    def waiting_submit() -> None:
        with stack.client() as client:
            image = {"image": ("p.png", sample_image(), "image/png")}
            answers.append(client.post("/v1/edits", files=image, data=LONG, headers={"Prefer": "wait=4"}))

    request = threading.Thread(target=waiting_submit)
    request.start()
    time.sleep(1.0)
    assert stack.api is not None
    os.kill(stack.api.pid, signal.SIGTERM)
    request.join(timeout=30)
    assert answers and answers[0].status_code in (200, 202), "the request in flight got its answer"
    # uvicorn drains, then re-raises the signal it handled, so a clean stop reads as "ended by SIGTERM"
    assert stack.api.process.wait(timeout=30) in (0, -signal.SIGTERM)
    assert "Finished server process" in stack.log("api")


def test_a_job_longer_than_the_visibility_timeout_runs_once(make_stack) -> None:
    stack = make_stack("visibility", CHRONOEDIT_VISIBILITY_TIMEOUT_SECONDS="2")
    stack.start_api()
    stack.start_worker("v1")
    stack.start_worker("v2")
    with stack.client() as client:
        job = wait_job(client, submit(client, LONGER)["id"], timeout=180)
    assert job["status"] == "succeeded" and job["attempt"] == 1, job
    assert job["timings"]["inference"] > 4, "the job must outlast the visibility timeout with room to spare"

    def dropped() -> list[str]:
        return [
            line
            for name in ("v1", "v2")
            for line in stack.log(name, tail=None).splitlines()
            if "not claimable" in line and job["id"] in line
        ]

    # the copy redelivered while the job ran may wait in the running worker's prefetch until its job is done
    deadline = time.monotonic() + 30
    while not dropped() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert dropped(), "the broker did deliver the message again while the job ran"
    claims = [
        line
        for name in ("v1", "v2")
        for line in stack.log(name, tail=None).splitlines()
        if '"job claimed"' in line and json.loads(line).get("job_id") == job["id"]
    ]
    assert len(claims) == 1, "redelivered after the visibility timeout, the message was dropped by the claim"
    listed = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job['id']}/attempts/")
    assert {o["Key"].split("/")[3] for o in listed["Contents"]} == {"1"}, "one set of outputs"
