"""Observability pieces on their own: jobs counted once per terminal state (real Redis), the webhook counter, the JSON
log formatter, the route label of HTTP metrics."""

from __future__ import annotations

import json
import logging
import sys
import time
import uuid

import pytest
import redis
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from service.api.app import create_app
from service.jobs.store import JobStore
from service.logs import JsonFormatter, PlainFormatter, bind_log_context, current_context, log_context
from service.metrics import record_webhook_delivery
from service.settings import ApiSettings
from tests.test_store import new_job, output

LABELS = {"kind": "edit", "mode": "standard", "lane": "interactive"}


@pytest.fixture
def store(redis_server: str) -> JobStore:
    client = redis.Redis.from_url(f"{redis_server}/63")
    return JobStore(client, prefix=f"metrics-{uuid.uuid4().hex[:8]}", lease_seconds=0.5, max_attempts=2)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_a_job_is_counted_once_by_the_transition_that_finished_it(store: JobStore) -> None:
    succeeded = sample("chronoedit_jobs_total", status="succeeded", **LABELS)
    failed = sample("chronoedit_jobs_total", status="failed", **LABELS)
    end_to_end = sample("chronoedit_job_stage_seconds_count", stage="end_to_end", **LABELS)

    job = new_job(store)
    claimed = store.claim(job.id, "w1")
    assert claimed is not None
    assert sample("chronoedit_jobs_total", status="succeeded", **LABELS) == succeeded, "running is not terminal"
    assert store.succeed(job.id, claimed.attempt, output())
    assert not store.succeed(job.id, claimed.attempt, output()), "a second finalise changes nothing"
    assert not store.fail(job.id, claimed.attempt, "internal_error", "late")
    assert sample("chronoedit_jobs_total", status="succeeded", **LABELS) == succeeded + 1
    assert sample("chronoedit_jobs_total", status="failed", **LABELS) == failed
    assert sample("chronoedit_job_stage_seconds_count", stage="end_to_end", **LABELS) == end_to_end + 1


def test_a_job_the_reconciler_fails_is_counted_as_failed(store: JobStore) -> None:
    failed = sample("chronoedit_jobs_total", status="failed", **LABELS)
    end_to_end = sample("chronoedit_job_stage_seconds_count", stage="end_to_end", **LABELS)
    job = new_job(store)
    for _ in range(store.max_attempts):
        assert store.claim(job.id, "w1") is not None
        time.sleep(store.lease_seconds + 0.1)
        store.requeue_if_expired(job.id)
    assert store.get(job.id).status == "failed"  # type: ignore[union-attr]
    assert sample("chronoedit_jobs_total", status="failed", **LABELS) == failed + 1
    assert sample("chronoedit_job_stage_seconds_count", stage="end_to_end", **LABELS) == end_to_end, "success only"


def test_webhook_deliveries_are_counted_by_bounded_outcome() -> None:
    before = sample("chronoedit_webhook_deliveries_total", outcome="http_error")
    record_webhook_delivery("http_error")
    assert sample("chronoedit_webhook_deliveries_total", outcome="http_error") == before + 1
    with pytest.raises(ValueError, match="unknown webhook outcome"):
        record_webhook_delivery("https://example.com/hook")  # type: ignore[arg-type]


def make_record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("service.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_json_formatter_writes_one_object_per_line_with_context() -> None:
    formatter = JsonFormatter(static={"worker": "gpu0"})
    with log_context(job_id="j1", request_id=None):
        bind_log_context(stage="upload")
        line = formatter.format(make_record("stage upload done", duration_s=0.25))
    assert current_context() == {}, "the context ends with its block"
    entry = json.loads(line)
    assert entry["message"] == "stage upload done" and entry["level"] == "info" and entry["logger"] == "service.test"
    assert entry["worker"] == "gpu0" and entry["job_id"] == "j1" and entry["stage"] == "upload"
    assert entry["duration_s"] == 0.25 and "request_id" not in entry
    assert entry["ts"].endswith("Z")

    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        record = make_record("failed")
        record.exc_info = sys.exc_info()
        line = formatter.format(record)
    assert "\n" not in line and "RuntimeError: boom" in json.loads(line)["exc"]


def test_plain_formatter_appends_context_fields() -> None:
    with log_context(job_id="j1"):
        line = PlainFormatter().format(make_record("job claimed", queue_wait_s=1.5))
    assert line.endswith("service.test: job claimed job_id=j1 queue_wait_s=1.5")


def test_http_metrics_label_routes_by_template_and_metrics_is_not_in_the_schema(redis_server: str) -> None:
    settings = ApiSettings(
        redis_url=f"{redis_server}/61", ready_worker_required=False, auth_required=False, dev_mode=True
    )
    route = "/v1/edits/{job_id}"
    before = sample("chronoedit_http_requests_total", route=route, method="GET", status="404")
    with TestClient(create_app(settings)) as client:
        for job_id in ("a1", "b2", "c3"):
            assert client.get(f"/v1/edits/{job_id}").status_code == 404
        metrics = client.get("/metrics")
        schema = client.get("/openapi.json").json()
    assert sample("chronoedit_http_requests_total", route=route, method="GET", status="404") == before + 3
    assert "/v1/edits/a1" not in metrics.text and 'route="/v1/edits/{job_id}"' in metrics.text
    assert "chronoedit_queue_depth" in metrics.text
    assert "/metrics" not in schema["paths"]
