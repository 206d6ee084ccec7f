"""Worker groups through the real queue: `chronoedit worker --gpus 2` on CPU (torchrun, two gloo ranks, guidance
split) serves jobs submitted through the API, with the single-process runner's pixels; cancellation stops every
rank; a rank that dies or hangs takes the group down and the job is retried, never left `running`."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from chronoedit_core.loading import Placement, load_pipeline
from chronoedit_core.runner import EditRunner
from service.jobs.record import EditParams
from tests.stack import Stack, sample_image, wait_job
from worker.runtime import edit_request

pytestmark = pytest.mark.stack

BOTH_QUEUES = {"CHRONOEDIT_GROUP_QUEUES": '["edits", "reasoning"]'}
SMALL = {"width": 64, "height": 48}
SLOW_JOB = {"prompt": "x", "num_inference_steps": 40, "width": 192, "height": 144, "seed": 7}


@pytest.fixture(scope="module")
def group(make_stack) -> Iterator[Stack]:
    """A stack served by one worker group of two CPU ranks (default layout: guidance split)."""
    stack = make_stack("group", **BOTH_QUEUES)
    stack.start_api()
    stack.start_worker_group("group-1")
    yield stack
    stack.stop()  # now, not at the end of the session: its processes would slow the tests after these


@pytest.fixture
def stopping() -> Iterator[list[Stack]]:
    """Stacks to stop when the test ends."""
    stacks: list[Stack] = []
    yield stacks
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="module")
def single_process(tiny_model: Path) -> EditRunner:
    return EditRunner(load_pipeline(tiny_model, Placement.resolve("cpu")))


def submit(client: httpx.Client, image: bytes, **fields: object) -> str:
    response = client.post("/v1/edits", json={"image_base64": _b64(image), **fields})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


def follower_edits(stack: Stack, name: str) -> int:
    """How many edits rank 1 of the group has run its part of (it logs each)."""
    return (stack.logs / f"{stack.name}-{name}.log").read_text(errors="replace").count("rank 1: edit done")


def served_png(job: dict) -> np.ndarray:
    response = httpx.get(job["outputs"]["image"]["url"], timeout=30)
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB")).astype(int)


def single_process_png(runner: EditRunner, image: bytes, job: dict) -> np.ndarray:
    """What one process renders for the job's resolved parameters (the worker's own resize included), with the
    ranks' thread count: float32 sums on CPU depend on it (torchrun gives each rank OMP_NUM_THREADS, 1 by default),
    and the tiny random model amplifies a last-bit difference to a few pixels off by up to 22/255."""
    params = EditParams.model_validate(job["params"])
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    try:
        frames = runner.run(edit_request(params), Image.open(io.BytesIO(image)).convert("RGB")).frames
    finally:
        torch.set_num_threads(threads)
    return np.asarray(frames[-1]).astype(int)


@pytest.mark.parametrize(
    "fields",
    [
        {"negative_prompt": "blurry", "guidance_scale": 4.0},
        {"temporal_reasoning": True, "reasoning_steps": 3},
        {"step_cache": 0.3},
    ],
    ids=["standard_edit", "temporal_reasoning", "step_cache"],
)
def test_group_renders_what_one_process_renders(group: Stack, single_process: EditRunner, fields: dict) -> None:
    """Guidance split over two ranks: the served PNG is the single-process runner's for the same seed, pixel for
    pixel (the exact runner's bound on CPU is 2/255; the split adds nothing to it: each rank runs one pass with the
    same operations, and both combine the two in the stock order)."""
    image = sample_image(80, 60, seed=5)
    edits_before = follower_edits(group, "group-1")
    with group.client() as client:
        body = {"prompt": "The user wants to make the box green.", "seed": 99, "width": 64, "height": 48}
        done = wait_job(client, submit(client, image, num_inference_steps=5, **body, **fields), timeout=180)
    assert done["status"] == "succeeded", done
    assert done["params"]["guidance_scale"] > 1, "the guided (standard) mode, so the passes are split"
    assert follower_edits(group, "group-1") == edits_before + 1, "rank 1 ran its half of every step"
    served, expected = served_png(done), single_process_png(single_process, image, done)
    assert np.array_equal(served, expected), f"max pixel difference {np.abs(served - expected).max()}"
    assert served.std() > 1, "the output is not a flat image"


def test_models_shows_the_group_its_gpus_and_layout(group: Stack) -> None:
    with group.client() as client:
        (entry,) = client.get("/v1/models").json()["data"]
    assert entry["name"] == "group-1" and set(entry["queues"]) == {"edits", "reasoning"}
    assert entry["gpus"] == 2
    assert entry["layout"] == {"guidance": 2, "ulysses": 1, "ring": 1}
    assert [(rank["rank"], rank["device"]) for rank in entry["ranks"]] == [(0, "cpu"), (1, "cpu")]
    (registered,) = group.registered_workers()
    assert len({rank["pid"] for rank in registered["ranks"]}) == 2
    # Each rank serves its own /metrics (GPU memory per rank on GPUs), and Prometheus discovery lists them all.
    command = [sys.executable, "-m", "service.cli", "metrics-targets"]
    listed = subprocess.run(command, env={**os.environ, **group.env}, capture_output=True, text=True, timeout=60)
    (targets,) = [entry["targets"] for entry in json.loads(listed.stdout)]
    assert set(targets) == {rank["metrics_target"] for rank in registered["ranks"]}
    assert all(httpx.get(f"http://{target}/metrics").status_code == 200 for target in targets)


def test_cancel_stops_every_rank_and_the_group_carries_on(group: Stack, single_process: EditRunner) -> None:
    with group.client() as client:
        job_id = submit(client, sample_image(), **{**SLOW_JOB, "num_inference_steps": 100})
        wait_step(client, job_id, 2)
        assert client.post(f"/v1/edits/{job_id}/cancel").status_code == 200
        done = wait_job(client, job_id, timeout=60)
        assert done["status"] == "canceled" and 2 <= done["progress"]["step"] < 100
        # Had one rank gone on (or stopped a step apart), the next job's collectives would mismatch and hang.
        image = sample_image(48, 32, seed=2)
        after = wait_job(client, submit(client, image, prompt="x", seed=3, num_inference_steps=3, **SMALL), timeout=120)
    assert after["status"] == "succeeded", after
    assert np.array_equal(served_png(after), single_process_png(single_process, image, after))


def test_a_job_every_rank_refuses_fails_and_the_group_carries_on(group: Stack) -> None:
    with group.client() as client:
        refused = wait_job(client, submit(client, sample_image(), prompt="x", fp8=True, num_inference_steps=2, **SMALL))
        assert refused["status"] == "failed" and refused["error"]["code"] == "fp8_unavailable"
        after = wait_job(
            client, submit(client, sample_image(), prompt="x", num_inference_steps=2, **SMALL), timeout=120
        )
    assert after["status"] == "succeeded", after


def wait_step(client: httpx.Client, job_id: str, step: int, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/edits/{job_id}").json()
        if job["status"] == "running" and job["progress"]["step"] >= step:
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id} never reached step {step}: {job}")


def follower_pid(stack: Stack, name: str) -> int:
    (entry,) = [worker for worker in stack.registered_workers() if worker["name"] == name]
    (pid,) = [rank["pid"] for rank in entry["ranks"] if rank["rank"] == 1]
    return int(pid)


def committed_attempts(stack: Stack, job_id: str) -> set[str]:
    listing = stack.s3().list_objects_v2(Bucket=stack.bucket, Prefix=f"jobs/{job_id}/attempts/")
    return {item["Key"].split("/")[3] for item in listing.get("Contents", [])}


def test_killed_rank_takes_the_group_down_and_the_job_reruns(make_stack, stopping: list[Stack]) -> None:
    stack = make_stack("group-killed", CHRONOEDIT_LEASE_SECONDS="3", **BOTH_QUEUES)
    stopping.append(stack)
    stack.start_api()
    doomed = stack.start_worker_group("doomed")
    with stack.client() as client:
        job_id = submit(client, sample_image(), **SLOW_JOB)
        wait_step(client, job_id, 2)
        os.kill(follower_pid(stack, "doomed"), signal.SIGKILL)
        assert doomed.process.wait(timeout=60) != 0, "the group exits non-zero"
        stack.start_worker_group("rescuer")
        done = wait_job(client, job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2 and follower_edits(stack, "rescuer") == 1, "the next group ran it"
    assert committed_attempts(stack, job_id) == {"2"}


def test_hung_rank_times_out_and_the_job_reruns(make_stack, stopping: list[Stack]) -> None:
    """A rank that stops answering (SIGSTOP) makes rank 0's next collective time out: the group exits non-zero and
    the job is retried, instead of staying `running` under a lease rank 0 would renew for ever."""
    stack = make_stack(
        "group-hung", CHRONOEDIT_LEASE_SECONDS="3", CHRONOEDIT_COLLECTIVE_TIMEOUT_SECONDS="5", **BOTH_QUEUES
    )
    stopping.append(stack)
    stack.start_api()
    hung = stack.start_worker_group("hung")
    with stack.client() as client:
        job_id = submit(client, sample_image(), **SLOW_JOB)
        wait_step(client, job_id, 2)
        stuck = follower_pid(stack, "hung")
        os.kill(stuck, signal.SIGSTOP)
        try:
            wait_gone(stack, "hung", timeout=60)  # rank 0 gave up: it withdrew and exited
        finally:
            os.kill(stuck, signal.SIGCONT)  # the stalled rank resumes and finds rank 0 gone
        assert hung.process.wait(timeout=60) != 0
        stack.start_worker("rescuer")  # any worker of the queue may take the retry
        done = wait_job(client, job_id, timeout=180)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 2
    assert "collective" in stack.log("hung").lower() or "timed out" in stack.log("hung").lower()


def wait_gone(stack: Stack, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if name not in {worker["name"] for worker in stack.registered_workers()}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"{name} still registered after {timeout} s; log:\n{stack.log(name)}")


def test_replicas_are_independent_workers(make_stack, stopping: list[Stack]) -> None:
    """`--gpus 2 --replicas`: two single-GPU workers (one per GPU, each its own name), not a group."""
    stack = make_stack("replicas")
    stopping.append(stack)
    stack.start_api()
    env = {**stack.env, "CHRONOEDIT_WORKER_NAME": "box"}
    from service.cli.processes import Child, python_module

    replicas = Child(
        "box",
        python_module("service.cli", "worker", "--gpus", "2", "--replicas"),
        env,
        log=stack.logs / "replicas-box.log",
    )
    stack.workers.append(replicas)
    for name in ("box-gpu0", "box-gpu1"):
        stack.wait_worker_ready(name, replicas)
    entries = {worker["name"]: worker for worker in stack.registered_workers()}
    assert set(entries) == {"box-gpu0", "box-gpu1"}
    assert all("gpus" not in worker for worker in entries.values())
    with stack.client() as client:
        jobs = [submit(client, sample_image(), prompt="x", num_inference_steps=2, **SMALL) for _ in range(2)]
        assert all(wait_job(client, job_id, timeout=120)["status"] == "succeeded" for job_id in jobs)
    replicas.stop()
    assert replicas.process.returncode == 0, stack.log("box")
