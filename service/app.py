"""The FastAPI application. Build it with `create_app(settings)`; clients open in the lifespan, nothing at import."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Header, Query, Request, Response
from fastapi.responses import JSONResponse

from service.contract import Contract
from service.deps import Caller, ContractDep
from service.errors import ApiError, install_error_handlers, not_found
from service.http_metrics import metrics_response, observe_requests, queue_depth_registry
from service.jobsystem import JobSystem
from service.metrics import init_job_series
from service.openapi import build_openapi
from service.routes_contract import SUBMIT_RESPONSES, IdempotencyKey, document_webhooks
from service.routes_contract import router as contract_router
from service.schemas import ErrorResponse, JobView, Readiness
from service.settings import ApiSettings
from service.storage import LocalStorage, ObjectNotFound
from service.submit import submit_edit

logger = logging.getLogger(__name__)

API_VERSION = "1.0.0"
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse},
    404: {"model": ErrorResponse},
    413: {"model": ErrorResponse},
    415: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
    401: {"model": ErrorResponse},
    409: {"model": ErrorResponse},
    429: {"model": ErrorResponse, "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
EDIT_REQUEST_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/EditCreate"}},
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["image", "prompt"],
                "properties": {
                    "image": {"type": "string", "format": "binary", "description": "The input image file."},
                    "prompt": {"type": "string"},
                    "outputs": {
                        "type": "array",
                        "items": {"type": "string", "enum": ["image", "video"]},
                        "description": "Repeated fields, or one JSON array string.",
                    },
                },
                "additionalProperties": {"type": "string", "description": "Any other `EditCreate` field."},
            }
        },
    },
}


def create_app(settings: ApiSettings | None = None, jobs: JobSystem | None = None) -> FastAPI:
    settings = settings or ApiSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        system = jobs or JobSystem(settings)
        system.start_reconciler(settings.reconcile_interval_seconds)
        app.state.jobs = system
        app.state.metrics = queue_depth_registry(system, settings.metrics_queues)
        app.state.contract = Contract(settings, system)
        app.state.contract.start()
        yield
        await app.state.contract.close()
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
    app.middleware("http")(observe_requests)  # inside _request_id, so it sees the request id
    app.middleware("http")(_request_id)
    _add_routes(app, settings)
    app.include_router(contract_router)
    document_webhooks(app)
    app.openapi = lambda: build_openapi(app)  # type: ignore[method-assign]
    return app


async def _request_id(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    incoming = request.headers.get("x-request-id", "")
    request.state.request_id = incoming if 0 < len(incoming) <= 128 else uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request.state.request_id
    return response


def get_jobs(request: Request) -> JobSystem:
    return request.app.state.jobs


Jobs = Annotated[JobSystem, Depends(get_jobs)]


def _add_routes(app: FastAPI, settings: ApiSettings) -> None:
    @app.post(
        "/v1/edits",
        status_code=202,
        response_model=JobView,
        responses={**ERRORS, **SUBMIT_RESPONSES},
        openapi_extra={"requestBody": EDIT_REQUEST_BODY},
        summary="Submit an edit",
        tags=["edits"],
    )
    async def create_edit(
        request: Request,
        caller: Caller,
        contract: ContractDep,
        idempotency_key: IdempotencyKey = None,
        prefer: Annotated[str | None, Header(description="`wait=N` (N <= 60): answer when done or after N s.")] = None,
    ) -> JSONResponse:
        return await submit_edit(request, contract, caller, idempotency_key, prefer)

    @app.get("/v1/edits/{job_id}", response_model=JobView, responses=ERRORS, summary="Get an edit", tags=["edits"])
    def get_edit(job_id: str, request: Request, caller: Caller, contract: ContractDep) -> JobView:
        return contract.manager.view(contract.manager.owned(caller.tenant, job_id), str(request.base_url))

    @app.get("/v1/files/{key:path}", responses=ERRORS, summary="Download a file (local storage)", tags=["files"])
    def get_file(
        key: str, jobs: Jobs, expires: Annotated[int, Query()], signature: Annotated[str, Query()]
    ) -> Response:
        storage = jobs.storage
        if not isinstance(storage, LocalStorage):
            raise not_found("file")
        if not storage.verify(key, expires, signature):
            raise ApiError(403, "invalid_signature", "the download URL is invalid or has expired")
        try:
            data = storage.get(key)
        except ObjectNotFound as exc:
            raise not_found("file") from exc
        return Response(data, media_type=_media_type(key))

    @app.get("/metrics", include_in_schema=False)
    def metrics(request: Request) -> Response:
        """Prometheus text exposition: HTTP, job and queue-depth families (see service/metrics.py)."""
        return metrics_response(request.app.state.metrics)

    @app.get("/healthz", summary="The process is alive", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["health"])
    def readyz(jobs: Jobs) -> JSONResponse:
        checks = jobs.readiness(require_worker=settings.ready_worker_required)
        ready = all(value == "ok" for value in checks.values())
        body = Readiness(status="ready" if ready else "not_ready", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


def _media_type(key: str) -> str:
    suffix = key.rsplit(".", 1)[-1].lower()
    return {"png": "image/png", "mp4": "video/mp4", "jpg": "image/jpeg", "webp": "image/webp"}.get(
        suffix, "application/octet-stream"
    )
