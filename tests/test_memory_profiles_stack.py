"""Memory profiles through the real stack: what `GET /v1/models` says of each worker, and what a job's `ran_with`
records, with workers started under `CHRONOEDIT_MEMORY_PROFILE` (CPU, the tiny model)."""

from __future__ import annotations

import base64
import io
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

BODY = {
    "image_base64": base64.b64encode(sample_image(64, 48, seed=9)).decode(),
    "prompt": "The user wants to paint the box green.",
    "seed": 21,
    "num_inference_steps": 3,
    "width": 64,
    "height": 48,
}


@pytest.fixture(scope="module")
def profiles(make_stack) -> Stack:
    """An `offload` worker serving edits and an `fp8-resident` one serving temporal reasoning, side by side."""
    stack = make_stack("profiles")
    stack.start_api()
    workers = {
        "offload": stack.start_worker(
            "offload", wait_ready=False, env={"CHRONOEDIT_MEMORY_PROFILE": "offload", "CHRONOEDIT_QUEUES": '["edits"]'}
        ),
        "fp8": stack.start_worker(
            "fp8",
            wait_ready=False,
            env={"CHRONOEDIT_MEMORY_PROFILE": "fp8-resident", "CHRONOEDIT_QUEUES": '["reasoning"]'},
        ),
    }
    deadline = time.monotonic() + 180
    while not all(name in ready_workers(stack) for name in workers):  # both load at once: wait for each by name
        assert time.monotonic() < deadline, "workers not ready"
        for name, worker in workers.items():
            assert worker.alive(), f"worker {name} died; log:\n{stack.log(name)}"
        time.sleep(0.3)
    return stack


def ready_workers(stack: Stack) -> set[str]:
    return {w["name"] for w in stack.registered_workers() if w.get("ready")}


def models(client: httpx.Client) -> dict[str, dict]:
    return {worker["name"]: worker for worker in client.get("/v1/models").json()["data"]}


def image_of(job: dict) -> np.ndarray:
    png = httpx.get(job["outputs"]["image"]["url"], timeout=30).content
    return np.asarray(Image.open(io.BytesIO(png))).astype(int)


def test_models_say_which_profile_and_whether_edits_are_exact(profiles: Stack, client: httpx.Client) -> None:
    with profiles.client() as http:
        listed = models(http)
    assert {name: (w["memory_profile"], w["exact"]) for name, w in listed.items()} == {
        "offload": ("offload", True),
        "fp8": ("fp8-resident", False),
    }
    assert all(w["max_area"] is None and w["max_reasoning_area"] is None for w in listed.values()), "no cap on CPU"
    (shared,) = models(client).values()
    assert (shared["memory_profile"], shared["exact"]) == ("resident", True), "`auto` off the GPU"


def test_offload_edit_equals_the_resident_one_for_the_same_seed(profiles: Stack, client: httpx.Client) -> None:
    resident = wait_job(client, client.post("/v1/edits", json=BODY).json()["id"])
    with profiles.client() as http:
        offloaded = wait_job(http, http.post("/v1/edits", json=BODY).json()["id"])
    assert resident["status"] == offloaded["status"] == "succeeded", (resident, offloaded)
    assert resident["ran_with"]["memory_profile"] == "resident"
    ran_with = offloaded["ran_with"]
    assert (ran_with["memory_profile"], ran_with["dtype"], ran_with["vae_tiling"]) == ("offload", "float32", [])
    assert np.array_equal(image_of(offloaded), image_of(resident))


def test_every_job_on_an_fp8_profile_runs_fp8_and_says_so(profiles: Stack) -> None:
    reasoning = {**BODY, "temporal_reasoning": True, "num_inference_steps": 2}
    with profiles.client() as http:
        jobs = [http.post("/v1/edits", json={**reasoning, "fp8": fp8}).json()["id"] for fp8 in (False, True)]
        done = [wait_job(http, job_id) for job_id in jobs]
    for job in done:
        assert job["status"] == "succeeded", job
        assert (job["ran_with"]["memory_profile"], job["ran_with"]["dtype"]) == ("fp8-resident", "float8_e4m3fn")
    assert np.array_equal(image_of(done[0]), image_of(done[1])), "asking for fp8 changes nothing: it was FP8 already"
