"""The Celery side of the contract: one app factory used by the API (to publish) and the workers (to consume), the
task names and the queue each job goes to. Configuration follows DESIGN.md's reliability section.
"""

from __future__ import annotations

from celery import Celery

from service.jobs.record import JobRecord
from service.settings import CommonSettings

RUN_EDIT_TASK = "chronoedit.run_edit"
EDITS_QUEUE = "edits"
REASONING_QUEUE = "reasoning"
"""Temporal-reasoning jobs (29 frames, about 5x the work of an edit) wait apart, for the workers meant for them."""


def make_celery(settings: CommonSettings, name: str = "chronoedit") -> Celery:
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,  # a job's message is acknowledged only after it ran
        task_reject_on_worker_lost=True,  # a killed child's message goes back to the queue; attempts bound the loop
        worker_prefetch_multiplier=1,  # one job at a time per GPU process, nothing held in reserve
        worker_cancel_long_running_tasks_on_connection_loss=False,  # measured: True loses jobs on a Redis restart
        task_ignore_result=True,  # the job record is the source of truth, not the result backend
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds},
        broker_connection_retry_on_startup=True,
        task_default_queue=EDITS_QUEUE,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def queue_for(job: JobRecord) -> str:
    """The queue a job is published to."""
    return REASONING_QUEUE if job.params.temporal_reasoning else EDITS_QUEUE


def publish(app: Celery, job: JobRecord) -> None:
    app.send_task(RUN_EDIT_TASK, args=[job.id], queue=queue_for(job))
