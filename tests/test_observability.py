"""Observability end to end: a job through the real stack, then both `/metrics` endpoints read with Prometheus's own
text parser, and the JSON log lines of the API and the worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import FAMILIES, STAGES
from tests.stack import Stack, sample_image, wait_job

pytestmark = pytest.mark.stack

Families = dict[str, Any]


def scrape(url: str) -> Families:
    response = httpx.get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {family.name: family for family in text_string_to_metric_families(response.text)}


def value(families: Families, name: str, sample: str | None = None, **labels: str) -> float | None:
    """The value of the sample `sample` (default: the family name) whose labels include `labels`."""
    matches = [
        s.value
        for s in families[name].samples
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matches) <= 1, f"{name} {labels} matches several samples"
    return matches[0] if matches else None


def family_name(name: str) -> str:
    """The parser names counter families without `_total`."""
    return name.removesuffix("_total") if FAMILIES[name].type == "counter" else name


def scrape_worker_when_idle(url: str, worker: str, timeout: float = 30) -> Families:
    """The worker sets busy back to 0 after it finalised, counted and logged the job."""
    deadline = time.monotonic() + timeout
    while True:
        families = scrape(url)
        if value(families, "chronoedit_worker_busy", worker=worker) == 0 or time.monotonic() > deadline:
            return families
        time.sleep(0.2)


@pytest.fixture(scope="module")
def observed(make_stack) -> dict[str, Any]:
    """One fresh stack (so counts are exact), one job with a known request id."""
    stack = make_stack("observe")
    stack.start_api()
    stack.start_worker("observer")
    with stack.client() as client:
        response = client.post(
            "/v1/edits",
            files={"image": ("p.png", sample_image(), "image/png")},
            data={"prompt": "make it blue", "num_inference_steps": "3", "width": "64", "height": "48"},
            headers={"X-Request-ID": "req-observe-1"},
        )
        assert response.status_code == 202, response.text
        job = wait_job(client, response.json()["id"])
        assert job["status"] == "succeeded", job
    worker = scrape_worker_when_idle(stack.worker_metrics_url("observer"), "observer")
    api = scrape(f"{stack.base_url}/metrics")
    info = next(w for w in stack.registered_workers() if w["name"] == "observer")
    return {"stack": stack, "job": job, "worker": worker, "api": api, "info": info}


def test_every_family_is_exported_where_the_contract_says(observed: dict[str, Any]) -> None:
    on_gpu = observed["info"]["device"].startswith("cuda")
    for name, family in FAMILIES.items():
        for process in ("api", "worker"):
            families = observed[process]
            expected = process in family.exported_by and (on_gpu or not family.gpu_only)
            assert (family_name(name) in families) == expected, f"{name} on the {process}: expected {expected}"
            if expected:
                assert families[family_name(name)].type == family.type, name
                for sample in families[family_name(name)].samples:
                    assert set(family.labels) <= set(sample.labels), f"{name} sample {sample} lacks labels"


def test_job_counted_once_and_stages_add_up(observed: dict[str, Any]) -> None:
    worker, api = observed["worker"], observed["api"]
    labels = {"kind": "edit", "mode": "standard"}
    counted = {**labels, "lane": "interactive"}
    assert value(worker, "chronoedit_jobs", "chronoedit_jobs_total", status="succeeded", **counted) == 1
    assert value(api, "chronoedit_jobs", "chronoedit_jobs_total", status="succeeded", **counted) == 0
    for status in ("failed", "canceled"):
        assert value(worker, "chronoedit_jobs", "chronoedit_jobs_total", status=status, **counted) == 0

    stage = "chronoedit_job_stage_seconds"
    ran = [name for name in STAGES if name != "enhance"]  # no prompt enhancement asked for: no enhancer stage
    for name in ran:
        assert value(worker, stage, f"{stage}_count", stage=name, **labels) == 1, name
    assert not value(worker, stage, f"{stage}_count", stage="enhance", **labels), "a GPU worker never enhances"
    seconds = {name: value(worker, stage, f"{stage}_sum", stage=name, **labels) or 0.0 for name in ran}
    assert seconds["end_to_end"] >= seconds["inference"] > 0
    assert seconds["end_to_end"] >= sum(seconds[s] for s in ("input_load", "inference", "encode", "upload"))
    job = observed["job"]
    elapsed = datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["created_at"])
    assert seconds["end_to_end"] == pytest.approx(elapsed.total_seconds(), abs=0.01), "finished_at - created_at"

    step = "chronoedit_denoise_step_seconds"
    assert value(worker, step, f"{step}_count", **labels) == 2, "3 steps: the 2 intervals between callbacks"


def test_worker_gauges(observed: dict[str, Any]) -> None:
    worker = observed["worker"]
    assert value(worker, "chronoedit_worker_ready", worker="observer") == 1
    assert value(worker, "chronoedit_worker_busy", worker="observer") == 0
    assert (value(worker, "chronoedit_model_load_seconds", worker="observer") or 0) > 0
    assert "chronoedit_gpu_memory_bytes" not in worker, "a CPU worker exports no GPU memory, not even zeros"


def test_api_http_metrics_use_route_templates(observed: dict[str, Any]) -> None:
    api = observed["api"]
    requests = "chronoedit_http_requests"
    assert value(api, requests, f"{requests}_total", route="/v1/edits", method="POST", status="202") == 1
    polled = value(api, requests, f"{requests}_total", route="/v1/edits/{job_id}", method="GET", status="200")
    assert polled is not None and polled >= 1
    routes = {s.labels["route"] for s in api[requests].samples}
    assert observed["job"]["id"] not in json.dumps(sorted(routes)), "no raw paths with ids"
    latency = "chronoedit_http_request_seconds"
    assert value(api, latency, f"{latency}_count", route="/v1/edits", method="POST") == 1
    assert value(api, "chronoedit_queue_depth", queue="edits") == 0


def test_queue_depth_is_read_from_the_broker(make_stack) -> None:
    stack = make_stack("depth", CHRONOEDIT_READY_WORKER_REQUIRED="false")
    stack.start_api()  # no worker: messages stay in the queue
    with stack.client() as client:
        for _ in range(3):
            response = client.post(
                "/v1/edits",
                files={"image": ("p.png", sample_image(), "image/png")},
                data={"prompt": "x", "num_inference_steps": "1", "width": "32", "height": "32"},
            )
            assert response.status_code == 202, response.text
        unknown = client.get("/v1/edits/not-a-job-id")
        assert unknown.status_code == 404
        client.get("/no/such/route/12345")
    api = scrape(f"{stack.base_url}/metrics")
    assert value(api, "chronoedit_queue_depth", queue="edits") == 3
    requests = "chronoedit_http_requests"
    assert value(api, requests, f"{requests}_total", route="/v1/edits/{job_id}", method="GET", status="404") == 1
    assert value(api, requests, f"{requests}_total", route="unmatched", method="GET", status="404") == 1


def json_lines(text: str) -> list[dict[str, Any]]:
    """The JSON log lines. Everything that is logged, model libraries' and Celery's warnings included, is JSON; the
    only other lines are Celery's start-up banner, which it prints rather than logs."""
    lines = [line for line in text.splitlines() if line.strip()]
    other = [line for line in lines if not line.startswith("{")]
    assert not [line for line in other if LOG_LIKE.search(line)], other
    return [json.loads(line) for line in lines if line.startswith("{")]


LOG_LIKE = re.compile(r"Traceback|Warning|WARNING|ERROR|INFO|\[transformers\]|^\d{4}-\d\d-\d\d")


def test_logs_are_json_lines_with_ids_and_durations(observed: dict[str, Any]) -> None:
    stack, job_id = observed["stack"], observed["job"]["id"]
    worker_lines = json_lines((stack.logs / f"{stack.name}-observer.log").read_text())
    api_lines = json_lines((stack.logs / f"{stack.name}-api.log").read_text())
    assert worker_lines and api_lines

    ours = [line for line in worker_lines if line.get("job_id") == job_id]
    assert ours and all(line["request_id"] == "req-observe-1" and line["worker"] == "observer" for line in ours)
    stages = {line["stage"]: line["duration_s"] for line in ours if line.get("message", "").startswith("stage ")}
    assert set(stages) == set(STAGES) - {"enhance", "queue_wait", "end_to_end"}
    assert all(seconds >= 0 for seconds in stages.values())
    assert any(line["message"] == "job claimed" and line["queue_wait_s"] >= 0 for line in ours)
    assert any(line["message"] == "job succeeded" and line["end_to_end_s"] >= stages["inference"] for line in ours)

    submit = [line for line in api_lines if line.get("route") == "/v1/edits" and line.get("method") == "POST"]
    assert len(submit) == 1 and submit[0]["request_id"] == "req-observe-1" and submit[0]["status"] == 202
    assert submit[0]["duration_s"] > 0
    assert any(line.get("job_id") == job_id and line.get("request_id") == "req-observe-1" for line in api_lines)


def test_metrics_targets_lists_the_worker_exporters(observed: dict[str, Any]) -> None:
    """`chronoedit metrics-targets` turns the registry into Prometheus file_sd targets that answer scrapes."""
    stack: Stack = observed["stack"]
    command = [sys.executable, "-m", "service.cli", "metrics-targets"]
    result = subprocess.run(command, env={**os.environ, **stack.env}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    groups = json.loads(result.stdout)
    assert [len(group["targets"]) for group in groups] == [1]
    port = observed["info"]["metrics_port"]
    target = groups[0]["targets"][0]
    assert target == f"127.0.0.1:{port}"
    assert "chronoedit_worker_ready" in scrape(f"http://{target}/metrics")
