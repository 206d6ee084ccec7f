"""The FastAPI application. Build it with `create_app(settings)`; clients open in the lifespan, nothing at import."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request, Response

from service.api.batch_intake import ITEM_BYTES
from service.api.body_limit import BodyLimit, largest_body
from service.api.errors import install_error_handlers
from service.api.observability import observe_requests, scrape_time_registry
from service.api.openapi import build_openapi
from service.api.routes import batches, edits, files, health, models, prompts, uploads, webhooks
from service.api.services import Services
from service.jobs.metrics import init_job_series
from service.jobs.reconciler import Reconciler
from service.jobs.system import JobSystem
from service.settings import ApiSettings

API_VERSION = "1.0.0"


def create_app(settings: ApiSettings | None = None, jobs: JobSystem | None = None) -> FastAPI:
    """The API application. Refuses (ValueError) settings that hold a placeholder secret outside dev mode."""
    settings = settings or ApiSettings()
    settings.require_real_secrets()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        system = jobs or JobSystem(settings)
        reconciler = Reconciler(system)
        reconciler.start(settings.reconcile_interval_seconds)
        app.state.metrics = scrape_time_registry(system, settings.metrics_queues)
        app.state.services = Services(settings, system)
        app.state.services.start()
        yield
        await app.state.services.close()
        reconciler.stop()
        system.close()

    app = FastAPI(
        title="ChronoEdit service",
        version=API_VERSION,
        description="Asynchronous image editing with NVIDIA ChronoEdit-14B.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    init_job_series()
    # Middleware added later wraps what was added before. The body limit is innermost: it raises into the route that
    # reads the body, where the error handlers answer it (the HTTP middlewares run `receive` in task groups).
    batch_bytes = settings.max_batch_items * ITEM_BYTES
    app.add_middleware(BodyLimit, limit=largest_body(settings.max_image_bytes, batch_bytes))
    app.middleware("http")(observe_requests)  # inside _request_id, so it sees the request id
    app.middleware("http")(_request_id)
    for routes in (edits, batches, prompts, files, health, uploads, models, webhooks):
        app.include_router(routes.router)
    webhooks.document_webhooks(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app


async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    incoming = request.headers.get("x-request-id", "")
    request.state.request_id = incoming if 0 < len(incoming) <= 128 else uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request.state.request_id
    return response
