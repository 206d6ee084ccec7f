"""A job's metrics over the families of `service/metrics.py`: its label values, stage timings, and the count of jobs
that reached a terminal state, made once by whichever process made the transition."""

from __future__ import annotations

from typing import get_args

from service.jobs.record import JobRecord, JobStatus
from service.metrics import JOB_STAGE_SECONDS, JOBS, WEBHOOK_DELIVERIES, Stage, WebhookOutcome

KNOWN_KINDS_MODES = (("edit", "standard"),)
"""Label combinations created at zero on start, so `rate()` sees a job's first increment. Add lanes here."""


def job_labels(job: JobRecord) -> tuple[str, str]:
    """(kind, mode) of a job. Every job is a standard edit until the record grows a `mode` (fast, reasoning lanes);
    this is the one place that then changes."""
    return job.kind, str(getattr(job, "mode", "standard"))


def init_job_series() -> None:
    """Create the known label combinations at zero (a series that appears at 1 hides its first increment)."""
    for kind, mode in KNOWN_KINDS_MODES:
        for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
            JOBS.labels(kind, mode, status.value)
    for outcome in get_args(WebhookOutcome):
        WEBHOOK_DELIVERIES.labels(outcome)


def observe_stage(job: JobRecord, stage: Stage, seconds: float) -> None:
    """Record one stage duration of `job`."""
    JOB_STAGE_SECONDS.labels(*job_labels(job), stage).observe(max(seconds, 0.0))


def record_terminal(before: JobRecord, after: JobRecord) -> None:
    """Count a job that just reached a terminal state, once; a success also records its end-to-end time.

    Called by `JobStore.update` after its transaction committed, so a retried or lost transaction never counts.
    """
    if before.status.is_terminal() or not after.status.is_terminal():
        return
    kind, mode = job_labels(after)
    JOBS.labels(kind, mode, after.status.value).inc()
    if after.status == JobStatus.SUCCEEDED and after.finished_at is not None:
        observe_stage(after, "end_to_end", after.finished_at - after.created_at)
