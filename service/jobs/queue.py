"""The Celery side of the contract: one app factory used by the API (to publish) and the workers (to consume), the
task names and the queue each job goes to. Configuration follows DESIGN.md's reliability section.
"""

from __future__ import annotations

import redis
from celery import Celery

from chronoedit_core.presets import TURBO
from service.jobs.record import JobRecord
from service.settings import CommonSettings

RUN_EDIT_TASK = "chronoedit.run_edit"
RUN_BATCH_ITEM_TASK = "chronoedit.run_next_batch_item"
"""A batch-lane token: the worker that receives it runs the lane's next item (`service/jobs/lanes.py`)."""
EDITS_QUEUE = "edits"
REASONING_QUEUE = "reasoning"
"""Temporal-reasoning jobs (29 frames, about 5x the work of an edit) wait apart, for the workers meant for them."""
BATCH_QUEUE = "batch"
"""Batch items' tokens. Workers list it after their interactive queues and take those first."""
TURBO_QUEUE = "turbo"
"""`turbo` mode jobs, for the workers that hold a few-step distilled transformer (and nothing else)."""
ENHANCE_QUEUE = "enhance"
"""Prompt enhancement, consumed by the enhancer workers (`chronoedit enhancer-worker`), never by a GPU edit worker."""
ENHANCE_JOB_TASK = "chronoedit.enhance_job"
"""Enhance a job's prompt; its id is the argument. The enhancer publishes the job's edit message afterwards."""
ENHANCE_PROMPT_TASK = "chronoedit.enhance_prompt"
"""Enhance a prompt for `POST /v1/prompts/enhance`; the argument is the request id (`service/enhance/requests.py`)."""


# kombu's Redis transport keeps a queue's messages in a list named after the queue, plus one list per non-zero
# priority step named `<queue>\x06\x16<step>` (kombu.transport.redis: `sep`, `PRIORITY_STEPS`).
_PRIORITY_SEPARATOR = "\x06\x16"
_PRIORITY_STEPS = (3, 6, 9)


def make_celery(settings: CommonSettings, name: str = "chronoedit") -> Celery:
    app = Celery(name, broker=settings.redis_url)
    app.conf.update(
        task_acks_late=True,  # a job's message is acknowledged only after it ran
        task_reject_on_worker_lost=True,  # a killed child's message goes back to the queue; attempts bound the loop
        worker_prefetch_multiplier=1,  # one job at a time per GPU process, nothing held in reserve
        worker_cancel_long_running_tasks_on_connection_loss=False,  # measured: True loses jobs on a Redis restart
        task_ignore_result=True,  # the job record is the source of truth, not the result backend
        broker_transport_options={
            "visibility_timeout": settings.visibility_timeout_seconds,
            # Look for messages whose worker vanished (unacknowledged past the visibility timeout) every few seconds,
            # not kombu's default of about every 100 s, so they come back soon after their timeout.
            "unacked_restore_interval": max(1, min(10, settings.visibility_timeout_seconds // 2)),
            "unacked_restore_throttle": 1,
            # A worker polls its queues in the order it lists them, always from the first: interactive edits are
            # taken before batch items, whatever waits in the batch lane.
            "queue_order_strategy": "priority",
        },
        broker_connection_retry_on_startup=True,
        task_default_queue=EDITS_QUEUE,
        worker_hijack_root_logger=False,
        task_serializer="json",
        accept_content=["json"],
    )
    return app


def queue_for(job: JobRecord) -> str:
    """The queue a job is published to."""
    if job.awaits_enhancement():
        return ENHANCE_QUEUE
    if job.lane == "batch":
        return BATCH_QUEUE
    if job.params.mode == TURBO:
        return TURBO_QUEUE
    return REASONING_QUEUE if job.params.temporal_reasoning else EDITS_QUEUE


def publish(app: Celery, job: JobRecord) -> None:
    """Send the job's message: its id on an interactive queue, or a token on the batch queue (the worker that takes
    it asks the lane which item is next, so tenants share the lane fairly whatever the order of the tokens). A job
    awaiting prompt enhancement goes to the enhancers first; they publish its edit message once it is enhanced."""
    if job.awaits_enhancement():
        app.send_task(ENHANCE_JOB_TASK, args=[job.id], queue=ENHANCE_QUEUE)
    elif job.lane == "batch":
        publish_batch_token(app)
    else:
        app.send_task(RUN_EDIT_TASK, args=[job.id], queue=queue_for(job))


def publish_batch_token(app: Celery) -> None:
    """One token on the batch queue: the worker that takes it runs the lane's next item."""
    app.send_task(RUN_BATCH_ITEM_TASK, args=[], queue=BATCH_QUEUE)


def queue_lengths(client: redis.Redis, queues: list[str]) -> dict[str, int]:
    """Messages waiting in each queue (its list and its priority lists), read in one round trip."""
    with client.pipeline(transaction=False) as pipe:
        for queue in queues:
            pipe.llen(queue)
            for step in _PRIORITY_STEPS:
                pipe.llen(f"{queue}{_PRIORITY_SEPARATOR}{step}")
        sizes = pipe.execute()
    per_queue = 1 + len(_PRIORITY_STEPS)
    return {queue: sum(sizes[i * per_queue : (i + 1) * per_queue]) for i, queue in enumerate(queues)}
