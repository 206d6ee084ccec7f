"""A worker process's metrics: its own Prometheus exporter, state gauges, stage and denoise-step timings, and GPU
memory. The families are listed, with their labels, in `service/metrics.py` (`FAMILIES`).

A Celery worker is not an HTTP server, so each pool child (the process that holds the pipeline) serves, on its own
port from a thread, `/metrics` and the probes an orchestrator asks: `/healthz` (the process answers) and `/readyz`
(200 once the model is loaded and the worker takes jobs, 503 before). Without a CUDA device the GPU family is simply
absent, never zero.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import torch
from celery.utils.log import current_process_index
from prometheus_client import REGISTRY, Gauge, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.jobs.metrics import job_labels, observe_stage
from service.jobs.record import JobRecord, StageSeconds, WorkerStage
from service.logs import log_context
from worker.settings import WorkerSettings

logger = logging.getLogger(__name__)

WORKER_BUSY = Gauge("chronoedit_worker_busy", "1 while the worker process runs a job.", ["worker"])
WORKER_READY = Gauge("chronoedit_worker_ready", "1 while the worker process has its model loaded.", ["worker"])
MODEL_LOAD_SECONDS = Gauge("chronoedit_model_load_seconds", "Seconds the last model load took.", ["worker"])
DENOISE_STEP_SECONDS = Histogram(
    "chronoedit_denoise_step_seconds",
    "Seconds per denoising step (between consecutive step callbacks).",
    ["kind", "mode"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64),
)


class WorkerMetrics:
    """The gauges of one worker process, labelled with its registry name."""

    def __init__(self, worker: str) -> None:
        self.worker = worker

    def report(self, state: str, busy: bool) -> None:
        """Mirror what the worker announces in the registry."""
        WORKER_READY.labels(self.worker).set(1 if state == "ready" else 0)
        WORKER_BUSY.labels(self.worker).set(1 if busy else 0)

    def model_loaded(self, seconds: float) -> None:
        MODEL_LOAD_SECONDS.labels(self.worker).set(seconds)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, *_: object) -> None:
        """Probes and scrapes come every few seconds; they are not log lines."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def probes_app(ready: Callable[[], bool]) -> Callable[..., Iterable[bytes]]:
    """`/healthz`, `/readyz` and, on every other path, the Prometheus exposition."""
    metrics = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path not in ("/healthz", "/readyz"):
            return metrics(environ, start_response)
        ok = path == "/healthz" or ready()
        start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
        return [b"ok\n" if ok else b"not ready\n"]

    return app


def start_exporter(settings: WorkerSettings, device: str, ready: Callable[[], bool] = lambda: True) -> int:
    """Serve this process's `/metrics`, `/healthz` and `/readyz` from a thread; returns the port it listens on.

    The port is `metrics_port` plus the pool child's index (so several children of one worker never clash), or a
    free one when `metrics_port` is 0. GPU memory is collected only when the pipeline lives on a CUDA device.
    """
    port = settings.metrics_port + (current_process_index() or 0) if settings.metrics_port else 0
    try:
        server = make_server(
            settings.metrics_host, port, probes_app(ready), server_class=_ThreadingServer, handler_class=_QuietHandler
        )
    except OSError as exc:
        raise RuntimeError(
            f"the metrics exporter cannot listen on {settings.metrics_host}:{port} ({exc}); give each worker on a "
            "host its own CHRONOEDIT_METRICS_PORT, or 0 for a free port"
        ) from exc
    threading.Thread(target=server.serve_forever, name="exporter", daemon=True).start()
    if device.startswith("cuda"):
        REGISTRY.register(GpuMemoryCollector(torch.device(device)))
    actual = int(server.server_port)
    logger.info("metrics exporter listening on %s:%d", settings.metrics_host, actual, extra={"metrics_port": actual})
    return actual


def scrape_target(settings: WorkerSettings, port: int) -> str:
    """The `host:port` Prometheus scrapes: the bound address, or this host's name when bound to every interface."""
    bound = settings.metrics_host
    host = socket.getfqdn() if bound in _EVERY_INTERFACE else bound
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_EVERY_INTERFACE = frozenset({"", "0.0.0.0", "::"})  # noqa: S104 - compared against, not bound to


@contextmanager
def timed_stage(job: JobRecord, stage: WorkerStage, stages: StageSeconds) -> Iterator[None]:
    """Time the block as `stage` of `job`: a histogram observation, a log line, and `stages[stage]` (which the job
    record's `timings` keep when the attempt finishes). A stage that raises is not observed."""
    started = time.perf_counter()
    with log_context(stage=stage):
        yield
        seconds = time.perf_counter() - started
        stages[stage] = seconds
        observe_stage(job, stage, seconds)
        logger.info("stage %s done in %.3f s", stage, seconds, extra={"duration_s": round(seconds, 6)})


def job_claimed(job: JobRecord, device: str) -> None:
    """A new attempt started: its queue wait (first attempt only: a retry's wait includes the lost attempt, which
    `end_to_end` shows) and, on a GPU, a fresh peak-memory figure for this job."""
    waited = (job.started_at or time.time()) - job.created_at
    if job.attempt == 1:
        observe_stage(job, "queue_wait", waited)
    logger.info("job claimed", extra={"queue_wait_s": round(waited, 6)})
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(torch.device(device))


class StepTimer:
    """A denoising-step callback that observes the seconds between consecutive steps.

    The first callback only starts the clock: the time before it also covers prompt and image encoding.
    """

    def __init__(self, job: JobRecord) -> None:
        self.labels = job_labels(job)
        self.last: float | None = None

    def __call__(self, step: int, total: int) -> None:
        now = time.perf_counter()
        if self.last is not None:
            DENOISE_STEP_SECONDS.labels(*self.labels).observe(now - self.last)
        self.last = now


class GpuMemoryCollector(Collector):
    """`chronoedit_gpu_memory_bytes{gpu,kind}` read at scrape time for the worker's CUDA device.

    `allocated`, `reserved` and `peak` (max allocated since the current job started) are this process's figures from
    torch's caching allocator; `used_by_all` and `total` are the whole device's, from NVML when `pynvml` is
    importable (what nvidia-smi shows), else from `cudaMemGetInfo`. `gpu` is the device index as torch numbers it
    (after CUDA_VISIBLE_DEVICES); Prometheus's `instance` label tells the worker processes apart.
    """

    def __init__(self, device: torch.device) -> None:
        self.index = device.index if device.index is not None else torch.cuda.current_device()
        self.nvml = _nvml_handle(self.index)

    def describe(self) -> Iterator[GaugeMetricFamily]:
        """The family without values, so registering the collector does not touch the device."""
        yield self._family()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            figures = self.read()
        except RuntimeError:  # a CUDA error must not take the worker's other metrics down with it
            logger.warning("reading GPU memory failed", exc_info=True)
            return
        family = self._family()
        for kind, value in figures.items():
            family.add_metric([str(self.index), kind], value)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "chronoedit_gpu_memory_bytes", "GPU memory by kind (see worker/metrics.py).", labels=["gpu", "kind"]
        )

    def read(self) -> dict[str, int]:
        figures = {
            "allocated": torch.cuda.memory_allocated(self.index),
            "reserved": torch.cuda.memory_reserved(self.index),
            "peak": torch.cuda.max_memory_allocated(self.index),
        }
        used, total = self._device_wide()
        return {**figures, "used_by_all": used, "total": total}

    def _device_wide(self) -> tuple[int, int]:
        """(used by every process, total) bytes of the whole device."""
        if self.nvml is not None:
            import pynvml

            try:
                info = pynvml.nvmlDeviceGetMemoryInfo(self.nvml)
                return int(info.used), int(info.total)
            except pynvml.NVMLError:
                logger.debug("NVML memory query failed; using cudaMemGetInfo", exc_info=True)
        free, total = torch.cuda.mem_get_info(self.index)
        return total - free, total


def _nvml_handle(index: int) -> object | None:
    """NVML's handle for torch's device `index` (matched by UUID, so CUDA_VISIBLE_DEVICES is respected), or None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        uuid = str(torch.cuda.get_device_properties(index).uuid)
        return pynvml.nvmlDeviceGetHandleByUUID(uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}")
    except (pynvml.NVMLError, AttributeError, RuntimeError):  # no driver library, no UUID, no such device
        logger.info("NVML unavailable; device-wide GPU memory comes from cudaMemGetInfo", exc_info=True)
        return None


def gpu_memory_info(device: str) -> dict[str, int]:
    """Free and total memory of this worker's GPU, for `GET /v1/models`; nothing on a CPU worker."""
    if not device.startswith("cuda"):
        return {}
    free, total = torch.cuda.mem_get_info(torch.device(device))
    return {"gpu_free_bytes": int(free), "gpu_total_bytes": int(total)}
