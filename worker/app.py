"""The Celery app the GPU workers run (`celery -A worker.app worker`, or `chronoedit worker`).

The pipeline is loaded in each pool child at `worker_process_init`, so CUDA is touched only in the child (DESIGN.md).
This module does not import torch (nor anything that does): the pool child is forked from this process, and torch
refuses CUDA in a child forked from a process that initialised it, which a mere `torch.cuda.is_available()` in a
library's import would do. The runtime is imported in the child. The task is thin: it takes a job id and hands it to
the process's `WorkerRuntime`.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from celery.exceptions import Reject
from celery.signals import setup_logging, worker_process_init, worker_process_shutdown

from chronoedit_core.profiles import prefer_expandable_segments
from service.jobs.queue import RUN_BATCH_ITEM_TASK, RUN_EDIT_TASK, make_celery
from service.logs import log_context
from worker.logs import configure_worker_logging, route_model_library_logs
from worker.settings import WorkerSettings

if TYPE_CHECKING:
    from worker.runtime import WorkerRuntime

logger = logging.getLogger(__name__)

prefer_expandable_segments()  # before any pool child touches CUDA
settings = WorkerSettings()
app = make_celery(settings, name="chronoedit-worker")
app.conf.update(worker_proc_alive_timeout=settings.proc_alive_timeout_seconds, worker_concurrency=1)


class _Process:
    """The runtime of this pool child; set once at process start, never inside a task."""

    runtime: WorkerRuntime | None = None


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    """Connected, so Celery leaves logging to us: every line (Celery's own too) in CHRONOEDIT_LOG_FORMAT."""
    configure_worker_logging(settings, model_libraries=False)


@worker_process_init.connect
def _load_model(**_: Any) -> None:
    if _Process.runtime is not None:  # installed by `serve` (the solo pool sends this signal too)
        return
    route_model_library_logs()  # before the model libraries' import-time warnings
    from worker.runtime import WorkerRuntime  # torch: in the pool child only

    runtime = WorkerRuntime(settings)
    try:
        runtime.start()
    except Exception:
        logger.exception("worker %s could not load the model; stopping the worker", settings.worker_name)
        os.kill(os.getppid(), signal.SIGTERM)  # a worker without a model must not take jobs
        raise
    _Process.runtime = runtime


@worker_process_shutdown.connect
def _withdraw(**_: Any) -> None:
    if _Process.runtime is not None:
        _Process.runtime.stop()


def _runtime() -> WorkerRuntime:
    runtime = _Process.runtime
    if runtime is None:  # only if loading failed and the worker is shutting down: give the message back
        raise Reject("this worker process has no loaded pipeline", requeue=True)
    return runtime


def worker_argv(pool: str, queues: Sequence[str], name: str) -> list[str]:
    """`celery worker` arguments: one job at a time, no gossip or mingle (workers share nothing but Redis)."""
    return [
        "worker",
        f"--pool={pool}",
        "--concurrency=1",
        f"--queues={','.join(queues)}",
        f"--hostname={name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel=INFO",
    ]


def serve(runtime: WorkerRuntime) -> None:
    """Consume the runtime's queues in this very process with a runtime already started here (a worker group's rank
    0, which holds the process group): the solo pool runs every task in this process."""
    _Process.runtime = runtime
    app.worker_main(worker_argv("solo", runtime.settings.queues, runtime.settings.worker_name))


@app.task(name=RUN_EDIT_TASK, ignore_result=True)
def run_edit(job_id: str) -> None:
    runtime = _runtime()
    with log_context(job_id=job_id):
        runtime.execute(job_id)


@app.task(name=RUN_BATCH_ITEM_TASK, ignore_result=True)
def run_next_batch_item() -> None:
    """A batch-lane token: the lane decides which item runs (`service/jobs/lanes.py`)."""
    _runtime().execute_next_batch_item()
