"""The enhancer worker (`chronoedit enhancer-worker`): a Celery worker on the `enhance` queue, separate from the GPU
edit workers so that no edit worker ever holds both models, and an edit job waits for its prompt in this queue rather
than by blocking a GPU worker.

The backend comes from the command line (`run(make_backend)`), so this module stays torch-free: a local Qwen-VL
model is loaded in the pool child (one process, one model, CUDA touched only in the child, as the GPU workers do);
a remote endpoint is called from a thread pool, many requests in flight. The worker announces itself in the worker
registry with `role: enhancer` (the API's `/readyz` and `GET /v1/models` count edit workers only) and serves its
own Prometheus metrics.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

from celery.exceptions import Reject
from celery.signals import setup_logging, worker_init, worker_process_init, worker_process_shutdown, worker_shutdown
from prometheus_client import Gauge, start_http_server

from service.enhance.prompts import PromptEnhancer
from service.enhance.service import EnhanceService
from service.enhance.settings import EnhancerSettings
from service.jobs.metrics import init_job_series
from service.jobs.queue import ENHANCE_JOB_TASK, ENHANCE_PROMPT_TASK, ENHANCE_QUEUE, make_celery
from service.jobs.registry import ENHANCER_ROLE, WorkerRegistry
from service.logs import configure_logging, log_context

logger = logging.getLogger(__name__)

BackendFactory = Callable[[EnhancerSettings], PromptEnhancer]

ENHANCER_READY = Gauge("chronoedit_enhancer_ready", "1 while the enhancer worker has its backend ready.", ["worker"])

settings = EnhancerSettings()
app = make_celery(settings, name="chronoedit-enhancer")
app.conf.update(task_default_queue=ENHANCE_QUEUE, worker_proc_alive_timeout=settings.proc_alive_timeout_seconds)


class EnhancerRuntime:
    """One enhancer process: its backend, the service around it, metrics, and its registration heartbeat."""

    def __init__(self, settings: EnhancerSettings, make_backend: BackendFactory) -> None:
        self.settings = settings
        self.make_backend = make_backend
        self.service: EnhanceService | None = None
        self.registry: WorkerRegistry | None = None
        self.state = "starting"
        self.metrics_port: int | None = None
        self._stop = threading.Event()

    def start(self) -> None:
        """Serve metrics, load the backend, announce readiness. Raises when the backend cannot be made."""
        init_job_series()
        server, _ = start_http_server(self.settings.metrics_port, addr=self.settings.metrics_host)
        self.metrics_port = int(server.server_port)
        backend = self.make_backend(self.settings)
        self.service = EnhanceService(self.settings, backend)
        self.registry = self.service.jobs.registry
        self.state = "ready"
        self._announce()
        threading.Thread(target=self._heartbeat, name="heartbeat", daemon=True).start()
        logger.info("enhancer %s ready with %s", self.settings.worker_name, backend.name)

    def info(self) -> dict[str, Any]:
        host = self.settings.metrics_host
        host = socket.getfqdn() if host in ("", "0.0.0.0", "::") else host  # noqa: S104 - compared, not bound
        return {
            "name": self.settings.worker_name,
            "role": ENHANCER_ROLE,
            "pid": os.getpid(),
            "state": self.state,
            "ready": self.state == "ready",
            "queues": [ENHANCE_QUEUE],
            "enhancer": self.service.backend.name if self.service else None,
            "metrics_port": self.metrics_port,
            "metrics_target": f"{host}:{self.metrics_port}" if self.metrics_port else None,
        }

    def _announce(self) -> None:
        ENHANCER_READY.labels(self.settings.worker_name).set(1 if self.state == "ready" else 0)
        if self.registry is not None:
            self.registry.announce(
                self.settings.worker_name, self.info(), ttl_seconds=3 * self.settings.heartbeat_seconds
            )

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.settings.heartbeat_seconds):
            try:
                self._announce()
            except Exception:  # the heartbeat outlives Redis hiccups
                logger.warning("heartbeat failed; retrying", exc_info=True)

    def stop(self) -> None:
        self._stop.set()
        if self.registry is not None:
            self.registry.withdraw(self.settings.worker_name)


class _Process:
    """Set once per process: how to make the backend, whether it lives in a pool child, and the runtime."""

    make_backend: BackendFactory | None = None
    in_child = False
    runtime: EnhancerRuntime | None = None


@setup_logging.connect
def _configure_logging(**_: Any) -> None:
    configure_logging(settings.log_format, settings.log_level, static={"worker": settings.worker_name})


def _start(parent: int) -> None:
    assert _Process.make_backend is not None, "run() sets the backend factory"
    runtime = EnhancerRuntime(settings, _Process.make_backend)
    try:
        runtime.start()
    except Exception:
        logger.exception("enhancer %s could not start its backend; stopping", settings.worker_name)
        os.kill(parent, signal.SIGTERM)  # an enhancer without a backend must not take messages
        raise
    _Process.runtime = runtime


@worker_process_init.connect
def _start_in_child(**_: Any) -> None:
    if _Process.in_child:
        _start(os.getppid())


@worker_init.connect
def _start_in_main(**_: Any) -> None:
    if not _Process.in_child and _Process.make_backend is not None:
        _start(os.getpid())


@worker_process_shutdown.connect
@worker_shutdown.connect
def _withdraw(**_: Any) -> None:
    if _Process.runtime is not None:
        _Process.runtime.stop()


def _service() -> EnhanceService:
    runtime = _Process.runtime
    if runtime is None or runtime.service is None:  # only while shutting down after a failed start
        raise Reject("this enhancer has no backend", requeue=True)
    return runtime.service


@app.task(name=ENHANCE_JOB_TASK, ignore_result=True)
def enhance_job(job_id: str) -> None:
    with log_context(job_id=job_id):
        _service().enhance_job(job_id)


@app.task(name=ENHANCE_PROMPT_TASK, ignore_result=True)
def enhance_prompt(request_id: str) -> None:
    _service().enhance_prompt(request_id)


def run(make_backend: BackendFactory, in_child: bool) -> None:
    """Run the enhancer worker in this process. `in_child`: the backend holds a model, loaded in one prefork child;
    otherwise (a remote endpoint) threads share one client."""
    _Process.make_backend, _Process.in_child = make_backend, in_child
    pool = ["--pool=prefork", "--concurrency=1"] if in_child else ["--pool=threads"]
    if not in_child:
        pool.append(f"--concurrency={settings.enhancer_concurrency}")
    app.worker_main(
        [
            "worker",
            *pool,
            f"--queues={ENHANCE_QUEUE}",
            f"--hostname={settings.worker_name}@%h",
            "--without-gossip",
            "--without-mingle",
            "--loglevel=INFO",
        ]
    )
