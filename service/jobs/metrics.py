"""A job's metrics over the families of `service/metrics.py`: its label values, stage timings, and the count of jobs
that reached a terminal state, made once by whichever process made the transition."""

from __future__ import annotations

import itertools
from typing import get_args

from service.jobs.record import JobRecord, JobStatus, Kind, Lane, Mode
from service.metrics import JOB_STAGE_SECONDS, JOBS, WEBHOOK_DELIVERIES, Stage, WebhookOutcome


def job_labels(job: JobRecord) -> tuple[str, str]:
    """(kind, mode) of a job, the labels of its stage timings."""
    return job.kind, job.params.mode


def init_job_series() -> None:
    """Create every kind, mode and lane at zero (a series that appears at 1 hides its first increment from `rate()`)."""
    for kind, mode in itertools.product(get_args(Kind), get_args(Mode)):
        for lane in get_args(Lane):
            for status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED):
                JOBS.labels(kind, mode, lane, status.value)
    for outcome in get_args(WebhookOutcome):
        WEBHOOK_DELIVERIES.labels(outcome)


def observe_stage(job: JobRecord, stage: Stage, seconds: float) -> None:
    """Record one stage duration of `job`."""
    JOB_STAGE_SECONDS.labels(*job_labels(job), job.lane, stage).observe(max(seconds, 0.0))


def record_terminal(before: JobRecord, after: JobRecord) -> None:
    """Count a job that just reached a terminal state, once; a success also records its end-to-end time.

    Called by `JobStore.update` after its transaction committed, so a retried or lost transaction never counts.
    """
    if before.status.is_terminal() or not after.status.is_terminal():
        return
    kind, mode = job_labels(after)
    JOBS.labels(kind, mode, after.lane, after.status.value).inc()
    if after.status == JobStatus.SUCCEEDED and after.finished_at is not None:
        observe_stage(after, "end_to_end", after.finished_at - after.created_at)
