"""Waiting and watching through HTTP: `Prefer: wait=N`, server-sent events, queue position and ETA."""

from __future__ import annotations

import base64
import json
import time

import httpx
import pytest

from tests.stack import sample_image, wait_job

pytestmark = pytest.mark.stack

IMAGE = base64.b64encode(sample_image(40, 32)).decode()


def edit(steps: int = 1, size: int = 32) -> dict:
    return {"prompt": "x", "num_inference_steps": steps, "width": size, "height": size, "image_base64": IMAGE}


def test_prefer_wait_answers_when_the_job_is_done(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/v1/edits", json=edit(), headers={"Prefer": "wait=30"})
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "succeeded" and "image" in response.json()["outputs"]
    assert response.headers["preference-applied"] == "wait=30"
    assert time.monotonic() - started < 25


def test_prefer_wait_gives_up_after_n_seconds(client: httpx.Client) -> None:
    started = time.monotonic()
    response = client.post("/v1/edits", json=edit(steps=60, size=256), headers={"Prefer": "respond-async, wait=1"})
    elapsed = time.monotonic() - started
    assert response.status_code == 202 and response.json()["status"] in ("queued", "running")
    assert 1 <= elapsed < 6, elapsed
    capped = client.post("/v1/edits", json=edit(), headers={"Prefer": "wait=600"})
    assert capped.headers["preference-applied"] == "wait=60", "N is capped at 60"
    wait_job(client, response.json()["id"])


def read_events(client: httpx.Client, job_id: str) -> list[tuple[str, dict]]:
    events: list[tuple[str, dict]] = []
    with client.stream("GET", f"/v1/edits/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        event = ""
        for line in response.iter_lines():
            if line.startswith("event: "):
                event = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((event, json.loads(line.removeprefix("data: "))))
    return events  # the server closed the stream


def test_server_sent_events_stream_every_step_then_close(client: httpx.Client) -> None:
    job = client.post("/v1/edits", json=edit(steps=6, size=64)).json()
    events = read_events(client, job["id"])
    names = [name for name, _ in events]
    assert names[0] in ("queued", "started", "progress")
    assert names[-1] == "succeeded" and events[-1][1]["status"] == "succeeded"
    assert events[-1][1]["outputs"]["image"]["url"]
    progress = [data["progress"] for name, data in events if name == "progress"]
    steps = [p["step"] for p in progress]
    assert steps == sorted(steps) and steps[-1] == 6
    assert [p["stage"] for p in progress] == ["denoising"] * (len(progress) - 1) + ["decoding"], "the last starts it"
    started = [data["progress"]["stage"] for name, data in events if name == "started"]
    assert started == ([] if names[0] == "progress" else ["loading"]), "a claimed job loads its input first"
    if names[0] == "queued":
        assert steps == [1, 2, 3, 4, 5, 6], "one event per step"
    assert all(data["id"] == job["id"] for _, data in events)

    finished = read_events(client, job["id"])
    assert [name for name, _ in finished] == ["succeeded"], "a finished job: its state, then the stream closes"


def test_queued_job_shows_position_and_eta(client: httpx.Client) -> None:
    assert wait_job(client, client.post("/v1/edits", json=edit(steps=2)).json()["id"])["status"] == "succeeded"
    blocker = client.post("/v1/edits", json=edit(steps=80, size=256)).json()
    wait_job(client, blocker["id"], until=("running",))
    queued = [client.post("/v1/edits", json=edit(steps=2)).json() for _ in range(2)]
    assert [job["queue_position"] for job in queued] == [1, 2]
    first, second = queued
    assert first["eta_seconds"] is not None and first["eta_seconds"] > 0
    assert second["eta_seconds"] > first["eta_seconds"], "a job further back waits longer"
    for job in queued:
        done = wait_job(client, job["id"])
        assert done["queue_position"] is None and done["eta_seconds"] is None
