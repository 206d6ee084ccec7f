"""The edits resource: submit, get, list, cancel, delete a job's files, and stream its updates (server-sent
events). Thin: each route delegates to the services built in `service/api/services.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.deps import Caller, ServicesDep
from service.api.routes.responses import AUTH_ERRORS, ERR, ERRORS, IdempotencyKey
from service.api.schemas import ErrorResponse, JobList
from service.api.submit import submit_edit
from service.jobs.record import JobStatus
from service.jobs.view import JobView

router = APIRouter()

SSE_EVENT: dict[str, Any] = {
    "description": "One server-sent event (Open API 3.1 describes a stream's events one at a time).",
    "type": "object",
    "required": ["event", "data"],
    "properties": {
        "event": {"type": "string", "enum": ["queued", "started", "progress", "succeeded", "failed", "canceled"]},
        "data": {
            "type": "string",
            "contentMediaType": "application/json",
            "contentSchema": {"$ref": "#/components/schemas/JobView"},
        },
    },
}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: one event per change. `event:` is the event type (`queued`, `started`, "
        "`progress`, `succeeded`, `failed`, `canceled`), `data:` the job as `GET /v1/edits/{id}` shows it. The first "
        "event is the current state; the stream closes after the terminal event. Comments (`: keepalive`) keep "
        "idle connections open.",
        "content": {"text/event-stream": {"schema": SSE_EVENT}},
    },
    **AUTH_ERRORS,
}

SUBMIT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"model": JobView, "description": "`Prefer: wait=N` was given and the job finished within N seconds."},
    202: {
        "description": "The job was accepted (or, with `Prefer: wait=N`, had not finished after N seconds).",
        "headers": {
            "Location": {"schema": {"type": "string"}, "description": "The job's URL."},
            "Idempotent-Replayed": {
                "schema": {"type": "string", "enum": ["true"]},
                "description": "This is the stored response of an earlier request with the same Idempotency-Key.",
            },
            "Preference-Applied": {"schema": {"type": "string"}, "description": "`wait=N` when it was honoured."},
        },
    },
    409: ERR,
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


@router.post(
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
    services: ServicesDep,
    idempotency_key: IdempotencyKey = None,
    prefer: Annotated[str | None, Header(description="`wait=N` (N <= 60): answer when done or after N s.")] = None,
) -> JSONResponse:
    return await submit_edit(request, services, caller, idempotency_key, prefer)


@router.get("/v1/edits/{job_id}", response_model=JobView, responses=ERRORS, summary="Get an edit", tags=["edits"])
def get_edit(job_id: str, request: Request, caller: Caller, services: ServicesDep) -> JobView:
    return services.manager.view(services.manager.owned(caller.tenant, job_id), str(request.base_url))


@router.get("/v1/edits", response_model=JobList, responses=AUTH_ERRORS, summary="List edits", tags=["edits"])
def list_edits(
    request: Request,
    caller: Caller,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> JobList:
    page = services.manager.list(caller.tenant, limit, cursor, status)
    views = [services.manager.view(job, str(request.base_url)) for job in page.jobs]
    return JobList(data=views, next_cursor=page.next_cursor)


@router.post(
    "/v1/edits/{job_id}/cancel",
    response_model=JobView,
    responses={**AUTH_ERRORS, 409: ERR},
    summary="Cancel an edit",
    description="A queued job ends `canceled` at once. A running job stops at its next denoising step (the GPU is "
    "free within one step) and ends `canceled`; `progress.step` says how many steps ran. A cancel that arrives after "
    "the last step, while the outputs are uploaded, may still see the job succeed. Canceling a canceled job "
    "answers it again; a succeeded or failed one answers 409 `job_finished`.",
    tags=["edits"],
)
def cancel_edit(job_id: str, request: Request, caller: Caller, services: ServicesDep) -> JobView:
    return services.manager.view(services.manager.cancel(caller.tenant, job_id), str(request.base_url))


@router.delete(
    "/v1/edits/{job_id}",
    response_model=JobView,
    responses={**AUTH_ERRORS, 409: ERR},
    summary="Delete a finished edit's input and output files",
    tags=["edits"],
)
def delete_edit(job_id: str, request: Request, caller: Caller, services: ServicesDep) -> JobView:
    job = services.manager.delete(caller.tenant, job_id)
    return services.manager.view(job, str(request.base_url))


@router.get(
    "/v1/edits/{job_id}/events",
    response_class=StreamingResponse,
    responses=SSE_RESPONSE,
    summary="Stream an edit's updates (server-sent events)",
    tags=["edits"],
)
async def edit_events(job_id: str, request: Request, caller: Caller, services: ServicesDep) -> StreamingResponse:
    await run_in_threadpool(services.manager.live, caller.tenant, job_id)
    base = str(request.base_url)

    async def stream() -> AsyncIterator[str]:
        async for event, job in services.watcher.updates(job_id, timeout=24 * 3600):
            if job is None:
                yield ": keepalive\n\n"
                continue
            view = await run_in_threadpool(services.manager.view, job, base)
            yield f"event: {event}\ndata: {view.model_dump_json()}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)
