"""Delivery semantics: a worker SIGKILLed mid-job leads to a re-run within bounded time and attempts, never a job
stuck `running` or two committed output sets."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

LEASE = {"CHRONOEDIT_LEASE_SECONDS": "3"}
SLOW_JOB = {"prompt": "x", "num_inference_steps": "60", "width": "256", "height": "192", "seed": "7"}


def submit_slow(client: httpx.Client) -> str:
    response = client.post("/v1/edits", files={"image": ("p.png", sample_image(), "image/png")}, data=SLOW_JOB)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_running(client: httpx.Client, job_id: str, min_step: int = 2, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/edits/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= min_step:
            return job
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never ran: {job}")


def committed_attempts(stack: Stack, job_id: str) -> set[str]:
    listing = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job_id}/attempts/")
    return {item["Key"].split("/")[3] for item in listing.get("Contents", [])}


def test_killed_worker_job_reruns_on_another_worker(make_stack) -> None:
    stack = make_stack("killed", **LEASE)
    stack.start_api()
    doomed = stack.start_worker("doomed")
    with stack.client() as client:
        job_id = submit_slow(client)
        running = wait_running(client, job_id)
        assert running["attempt"] == 1
        doomed.kill(signal.SIGKILL)  # the whole worker: parent and pool child, no chance to clean up
        killed_at = time.monotonic()
        stack.start_worker("rescuer")

        done = wait_job(client, job_id, timeout=120)
        assert done["status"] == "succeeded", done
        assert done["attempt"] == 2
        assert time.monotonic() - killed_at < 60, "re-run within lease + reconcile interval + worker start"
        assert all("/attempts/2/" in f["url"] for f in done["outputs"].values())
        assert committed_attempts(stack, job_id) == {"2"}, "only the finishing attempt wrote outputs"
        assert httpx.get(done["outputs"]["image"]["url"]).status_code == 200
        timings = done["timings"]
        final_attempt = sum(timings[name] for name in ("queue_wait", "input_load", "inference", "encode", "upload"))
        assert timings["total"] - final_attempt >= 3, "the lost attempt, to its lease's expiry, shows only in total"


def test_worker_lost_on_every_attempt_fails_the_job(make_stack) -> None:
    stack = make_stack("cap", CHRONOEDIT_MAX_ATTEMPTS="1", **LEASE)
    stack.start_api()
    worker = stack.start_worker("only")
    with stack.client() as client:
        job_id = submit_slow(client)
        wait_running(client, job_id)
        worker.kill(signal.SIGKILL)
        done = wait_job(client, job_id, timeout=60)
    assert done["status"] == "failed"
    assert done["error"]["code"] == "worker_lost"
    assert done["attempt"] == 1
    assert done["timings"]["queue_wait"] >= 0 and done["timings"]["inference"] is None, "no stage of it finished"


def test_killed_pool_child_is_replaced_and_job_reruns(make_stack) -> None:
    """Only the prefork child dies: Celery starts a new child (which loads the model again) and the job re-runs."""
    stack = make_stack("child", **LEASE)
    stack.start_api()
    stack.start_worker("parent")
    with stack.client() as client:
        job_id = submit_slow(client)
        wait_running(client, job_id)
        (child_pid,) = [w["pid"] for w in stack.registered_workers() if w["job_id"] == job_id]
        import os

        os.kill(child_pid, signal.SIGKILL)
        done = wait_job(client, job_id, timeout=120)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    assert committed_attempts(stack, job_id) == {"2"}


def test_lost_message_is_published_again(make_stack) -> None:
    """The broker lost a queued job's message (a Redis restart without persistence, say): the reconciler publishes
    it again and the job runs."""
    import redis

    stack = make_stack("lost", CHRONOEDIT_REPUBLISH_AFTER_SECONDS="2")
    stack.start_api()
    with stack.client() as client:
        response = client.post(
            "/v1/edits",
            files={"image": ("p.png", sample_image(), "image/png")},
            data={"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32"},
        )
        job_id = response.json()["id"]
        broker = redis.Redis.from_url(stack.env["CHRONOEDIT_REDIS_URL"])
        assert broker.delete("edits") == 1, "the message is gone"
        stack.start_worker("late")
        done = wait_job(client, job_id, timeout=60)
    assert done["status"] == "succeeded" and done["attempt"] == 1
