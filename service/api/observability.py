"""The API's own observability: HTTP request metrics and access logs (one middleware), the broker's queue depth read
at scrape time, and the `/metrics` response."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator

import redis
from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from service.jobs.lanes import BatchLane
from service.jobs.queue import queue_lengths
from service.jobs.system import JobSystem
from service.logs import log_context

logger = logging.getLogger("service.access")

HTTP_REQUESTS = Counter(
    "chronoedit_http_requests", "HTTP requests by route template, method and status.", ["route", "method", "status"]
)
HTTP_SECONDS = Histogram(
    "chronoedit_http_request_seconds", "Seconds to answer an HTTP request, by route template.", ["route", "method"]
)

UNMATCHED_ROUTE = "unmatched"
"""The route label of requests no route matched (404s from scanners must not create a series per path)."""
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_QUIET_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
"""Probed every few seconds (a 503 from /readyz is an answer, not an error): logged at debug level unless they
crash."""


def route_label(request: Request) -> str:
    """The matched route's template (`/v1/edits/{job_id}`), never the raw path."""
    route = request.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


async def observe_requests(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    """Count and time every request by route template, and log one access line with the request id."""
    started = time.perf_counter()
    method = request.method if request.method in _METHODS else "OTHER"
    status = 500  # what the client gets if the app raises past its error handlers
    with log_context(request_id=getattr(request.state, "request_id", None)):
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            seconds = time.perf_counter() - started
            route = route_label(request)
            HTTP_REQUESTS.labels(route, method, str(status)).inc()
            HTTP_SECONDS.labels(route, method).observe(seconds)
            level = logging.DEBUG if route in _QUIET_ROUTES and status != 500 else logging.INFO
            extra = {"route": route, "method": method, "status": status, "duration_s": round(seconds, 6)}
            logger.log(level, "%s %s %d", method, request.url.path, status, extra=extra)


class QueueDepthCollector(Collector):
    """`chronoedit_queue_depth{queue}`: messages waiting in each Celery queue, read from Redis at scrape time.

    Queues: the configured ones plus every queue a registered worker consumes. If Redis does not answer, the family
    is left out of that scrape (Prometheus then shows a gap, not a false zero).
    """

    def __init__(self, client: redis.Redis, queues: Callable[[], Iterable[str]]) -> None:
        self.client = client
        self.queues = queues

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            depths = self.depths(sorted(set(self.queues())))
        except redis.RedisError as exc:
            logger.warning("queue depth unavailable: %s", exc)
            return
        family = GaugeMetricFamily("chronoedit_queue_depth", "Messages waiting in a Celery queue.", labels=["queue"])
        for queue, depth in depths.items():
            family.add_metric([queue], depth)
        yield family

    def depths(self, queues: list[str]) -> dict[str, int]:
        return queue_lengths(self.client, queues)


class BatchLaneCollector(Collector):
    """`chronoedit_batch_items_pending`: batch items waiting in the lane (every tenant), read at scrape time."""

    def __init__(self, lane: BatchLane) -> None:
        self.lane = lane

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            pending = self.lane.pending()
        except redis.RedisError as exc:
            logger.warning("batch lane depth unavailable: %s", exc)
            return
        yield GaugeMetricFamily("chronoedit_batch_items_pending", "Batch items waiting in the batch lane.", pending)


def metrics_response(*registries: CollectorRegistry) -> Response:
    """The text exposition of the process-wide registry followed by `registries` (families never repeat)."""
    body = b"".join(generate_latest(registry) for registry in (REGISTRY, *registries))
    return Response(body, media_type=CONTENT_TYPE_LATEST)


def scrape_time_registry(jobs: JobSystem, configured: Iterable[str]) -> CollectorRegistry:
    """A registry of the app's scrape-time families: queue depth of `configured` queues and of every queue a
    registered worker consumes, and the batch lane's waiting items."""

    def queues() -> list[str]:
        announced = [queue for worker in jobs.registry.workers() for queue in worker.get("queues") or []]
        return [*configured, *announced]

    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueDepthCollector(jobs.redis, queues))
    registry.register(BatchLaneCollector(jobs.lane))
    return registry
