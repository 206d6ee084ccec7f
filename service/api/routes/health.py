"""Liveness, readiness (which part is missing) and the Prometheus scrape endpoint."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import ServicesDep
from service.api.observability import metrics_response
from service.api.schemas import Readiness

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    """Prometheus text exposition: HTTP, job and queue-depth families (see service/metrics.py)."""
    return metrics_response(request.app.state.metrics)


@router.get("/healthz", summary="The process is alive", tags=["health"])
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}}, tags=["health"])
def readyz(services: ServicesDep) -> JSONResponse:
    checks = services.jobs.readiness(require_worker=services.settings.ready_worker_required)
    ready = all(value == "ok" for value in checks.values())
    body = Readiness(status="ready" if ready else "not_ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)
