"""The Prometheus contract: every metric family the service exports, and the families the API and workers share.

Names and labels are stable because dashboards and alert rules depend on them (`deploy/prometheus`,
`deploy/grafana`; tests check those only use names listed in `FAMILIES`). Labels stay low-cardinality: never job or
tenant ids, and HTTP routes as templates.

Where each family is exported: the API serves `/metrics`; each worker process runs its own exporter
(`worker/metrics.py`). Jobs are counted by whichever process makes the terminal transition (`JobStore.update`
calls `record_terminal`, `service/jobs/metrics.py`), so `sum(chronoedit_jobs_total)` over all targets counts each
job exactly once.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, get_args

from prometheus_client import Counter, Histogram

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Family:
    """One exported family: its Prometheus type, labels, and which processes export it."""

    type: Literal["counter", "gauge", "histogram"]
    labels: tuple[str, ...]
    exported_by: frozenset[Process]
    gpu_only: bool = False


Process = Literal["api", "worker", "enhancer"]
"""`worker`: a GPU edit worker; `enhancer`: a prompt enhancer worker (`chronoedit enhancer-worker`)."""
_BOTH: frozenset[Process] = frozenset({"api", "worker"})
_API: frozenset[Process] = frozenset({"api"})
_WORKER: frozenset[Process] = frozenset({"worker"})

FAMILIES: dict[str, Family] = {
    "chronoedit_jobs_total": Family("counter", ("kind", "mode", "lane", "status"), _BOTH),
    "chronoedit_job_stage_seconds": Family(
        "histogram", ("kind", "mode", "lane", "stage"), frozenset({*_BOTH, "enhancer"})
    ),
    "chronoedit_denoise_step_seconds": Family("histogram", ("kind", "mode"), _WORKER),
    "chronoedit_queue_depth": Family("gauge", ("queue",), _API),
    "chronoedit_batch_items_pending": Family("gauge", (), _API),
    "chronoedit_result_cache_lookups_total": Family("counter", ("outcome",), _WORKER),
    "chronoedit_worker_busy": Family("gauge", ("worker",), _WORKER),
    "chronoedit_worker_ready": Family("gauge", ("worker",), _WORKER),
    "chronoedit_model_load_seconds": Family("gauge", ("worker",), _WORKER),
    "chronoedit_gpu_memory_bytes": Family("gauge", ("gpu", "kind"), _WORKER, gpu_only=True),
    "chronoedit_webhook_deliveries_total": Family("counter", ("outcome",), _BOTH),
    "chronoedit_prompt_enhancements_total": Family("counter", ("outcome",), frozenset({"enhancer"})),
    "chronoedit_enhancer_ready": Family("gauge", ("worker",), frozenset({"enhancer"})),
    "chronoedit_http_requests_total": Family("counter", ("route", "method", "status"), _API),
    "chronoedit_http_request_seconds": Family("histogram", ("route", "method"), _API),
}
"""The contract. Counter names carry `_total` here, as they appear in the exposition."""

Stage = Literal["enhance", "queue_wait", "input_load", "inference", "encode", "upload", "end_to_end"]
"""`enhance`: the prompt enhancer's work on a job (enhancer workers; only jobs that asked for it)."""
STAGES: tuple[Stage, ...] = get_args(Stage)

STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200, 1800)
"""0.05 s to 30 min: a tiny-model CPU job's encode step up to a slow 14B job's end to end."""

WebhookOutcome = Literal["success", "http_error", "network_error", "refused"]
"""Per delivery attempt: a 2xx answer; another status; no answer (connect error, timeout); target refused by policy."""

JOBS = Counter(
    "chronoedit_jobs",
    "Jobs that reached a terminal state, counted once by the process that made the transition; lane: interactive "
    "or batch.",
    ["kind", "mode", "lane", "status"],
)
JOB_STAGE_SECONDS = Histogram(
    "chronoedit_job_stage_seconds",
    "Seconds spent per job stage. enhance: prompt enhancement; queue_wait: created to first claim (enhancement "
    "included); end_to_end: created to succeeded.",
    ["kind", "mode", "lane", "stage"],
    buckets=STAGE_BUCKETS,
)
WEBHOOK_DELIVERIES = Counter("chronoedit_webhook_deliveries", "Webhook delivery attempts by outcome.", ["outcome"])


def file_sd_targets(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Prometheus `file_sd_configs` content for the registered workers that publish a metrics endpoint (every rank
    of a worker group has one)."""
    processes = [process for worker in workers for process in [worker, *(worker.get("ranks") or [])]]
    targets = sorted({str(process["metrics_target"]) for process in processes if process.get("metrics_target")})
    return [{"targets": targets, "labels": {}}] if targets else []


def record_webhook_delivery(outcome: WebhookOutcome) -> None:
    """Count one webhook delivery attempt. Raises ValueError for an outcome outside `WebhookOutcome` (labels stay
    bounded)."""
    if outcome not in get_args(WebhookOutcome):
        raise ValueError(f"unknown webhook outcome {outcome!r}; expected one of {get_args(WebhookOutcome)}")
    WEBHOOK_DELIVERIES.labels(outcome).inc()
