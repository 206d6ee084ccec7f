"""Routes of the client contract besides submitting: listing and deleting jobs, server-sent events, webhook
deliveries, direct uploads. Thin: each delegates to the services in `service/contract.py`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.deps import Caller, ContractDep
from service.errors import ApiError, not_found
from service.idempotency import REPLAY_HEADER, StoredResponse, fingerprint
from service.jobs import JobStatus
from service.schemas import ErrorResponse, JobView, ModelList, WorkerModel
from service.schemas_contract import Delivery, DeliveryList, JobList, UploadCreated, Uploaded, WebhookEvent
from service.storage import LocalStorage
from service.uploads import INPUT_KEY

ERR = {"model": ErrorResponse}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {401: ERR, 404: ERR, 422: ERR, 429: ERR}
SSE_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "`text/event-stream`: one event per change. `event:` is the event type (`queued`, `started`, "
        "`progress`, `succeeded`, `failed`, `canceled`), `data:` the job as `GET /v1/edits/{id}` shows it. The first "
        "event is the current state; the stream closes after the terminal event. Comments (`: keepalive`) keep "
        "idle connections open.",
        "content": {"text/event-stream": {"schema": {"type": "string"}}},
    },
    **AUTH_ERRORS,
}
IdempotencyKey = Annotated[
    str | None, Header(description="Replays the first response for the same key and request (kept 24 h).")
]

router = APIRouter()

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
WEBHOOK_HEADERS = {
    "webhook-id": "The delivery id; the same on every attempt and redelivery (deduplicate on it).",
    "webhook-timestamp": "Unix seconds of this attempt; reject old ones.",
    "webhook-signature": "`v1,<base64 HMAC-SHA256 of '{id}.{timestamp}.{body}'>` with the key's `whsec_` secret.",
}


def document_webhooks(app: FastAPI) -> None:
    """Describe what the service POSTs to a job's `webhook` in the document's `webhooks` section (OpenAPI 3.1)."""

    @app.webhooks.post(
        "edit-event",
        summary="A job event, delivered to the job's `webhook` URL",
        description="Standard Webhooks: verify with any `standardwebhooks` library and the key's `whsec_` secret. "
        "Answer 2xx within 10 s; anything else is retried with exponential backoff for about a day; `410 Gone` "
        "stops. Redirects are not followed. Deliveries may arrive out of order: order by `timestamp`. "
        + " ".join(f"`{name}`: {text}" for name, text in WEBHOOK_HEADERS.items()),
        tags=["webhooks"],
    )
    def edit_event(body: WebhookEvent) -> None:
        """Only documents the request; the service never serves this path."""


@router.get("/v1/edits", response_model=JobList, responses=AUTH_ERRORS, summary="List edits", tags=["edits"])
def list_edits(
    request: Request,
    caller: Caller,
    contract: ContractDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this state.")] = None,
) -> JobList:
    page = contract.manager.list(caller.tenant, limit, cursor, status)
    views = [contract.manager.view(job, str(request.base_url)) for job in page.jobs]
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
def cancel_edit(job_id: str, request: Request, caller: Caller, contract: ContractDep) -> JobView:
    return contract.manager.view(contract.manager.cancel(caller.tenant, job_id), str(request.base_url))


@router.get(
    "/v1/models", response_model=ModelList, responses=AUTH_ERRORS, summary="What the workers hold", tags=["models"]
)
def list_models(caller: Caller, contract: ContractDep) -> ModelList:
    """Each ready worker: its queues, device, dtype, base model digest, LoRA digests and free GPU memory."""
    workers = [w for w in contract.jobs.registry.workers() if w.get("ready")]
    return ModelList(data=[WorkerModel.model_validate(w) for w in sorted(workers, key=lambda w: w["name"])])


@router.delete(
    "/v1/edits/{job_id}",
    response_model=JobView,
    responses={**AUTH_ERRORS, 409: ERR},
    summary="Delete a finished edit's input and output files",
    tags=["edits"],
)
def delete_edit(job_id: str, request: Request, caller: Caller, contract: ContractDep) -> JobView:
    job = contract.manager.delete_files(caller.tenant, job_id)
    return contract.manager.view(job, str(request.base_url))


@router.get(
    "/v1/edits/{job_id}/events",
    response_class=StreamingResponse,
    responses=SSE_RESPONSE,
    summary="Stream an edit's updates (server-sent events)",
    tags=["edits"],
)
async def edit_events(job_id: str, request: Request, caller: Caller, contract: ContractDep) -> StreamingResponse:
    await run_in_threadpool(contract.manager.owned, caller.tenant, job_id)
    base = str(request.base_url)

    async def stream() -> AsyncIterator[str]:
        async for event, job in contract.watcher.updates(job_id, timeout=24 * 3600):
            if job is None:
                yield ": keepalive\n\n"
                continue
            view = await run_in_threadpool(contract.manager.view, job, base)
            yield f"event: {event}\ndata: {view.model_dump_json()}\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


@router.get(
    "/v1/edits/{job_id}/deliveries",
    response_model=DeliveryList,
    responses=AUTH_ERRORS,
    summary="List an edit's webhook deliveries and their attempts",
    tags=["webhooks"],
)
def list_deliveries(job_id: str, caller: Caller, contract: ContractDep) -> DeliveryList:
    contract.manager.owned(caller.tenant, job_id)
    return DeliveryList(data=[_delivery(d) for d in contract.deliveries.for_job(job_id)])


@router.post(
    "/v1/edits/{job_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=Delivery,
    responses={**AUTH_ERRORS, 409: ERR},
    summary="Deliver a webhook again (same `webhook-id`)",
    tags=["webhooks"],
)
def retry_delivery(job_id: str, delivery_id: str, caller: Caller, contract: ContractDep) -> Delivery:
    contract.manager.owned(caller.tenant, job_id)
    delivery = contract.deliveries.get(job_id, delivery_id)
    if delivery is None:
        raise not_found(f"delivery {delivery_id}")
    if delivery["status"] == "pending":
        raise ApiError(409, "delivery_pending", f"delivery {delivery_id} is still being attempted")
    return _delivery(contract.deliveries.redeliver(delivery))


def _delivery(record: dict[str, Any]) -> Delivery:
    pending = record["status"] == "pending"
    return Delivery.model_validate({**record, "next_attempt_at": record["next_attempt_at"] if pending else None})


@router.post(
    "/v1/uploads",
    status_code=201,
    response_model=UploadCreated,
    responses=AUTH_ERRORS,
    summary="Get a URL to upload an input image directly",
    tags=["uploads"],
)
async def create_upload(caller: Caller, contract: ContractDep, idempotency_key: IdempotencyKey = None) -> JSONResponse:
    async def create() -> StoredResponse:
        input_key, url, expires = await run_in_threadpool(contract.uploads.create, caller.tenant)
        body = UploadCreated(input_key=input_key, upload_url=url, expires_at=expires)
        return StoredResponse(201, body.model_dump(mode="json"), {})

    print_ = fingerprint("POST /v1/uploads", {})
    stored, replayed = await contract.idempotency.run(caller.tenant, idempotency_key, print_, create)
    return JSONResponse(stored.body, status_code=stored.status, headers={REPLAY_HEADER: "true"} if replayed else {})


@router.put(
    "/v1/uploads/{key:path}",
    response_model=Uploaded,
    responses={403: ERR, 404: ERR, 413: ERR},
    summary="Receive a direct upload (local storage; the signed URL is the credential)",
    tags=["uploads"],
)
async def put_upload(
    key: str,
    request: Request,
    contract: ContractDep,
    expires: Annotated[int, Query()],
    signature: Annotated[str, Query()],
) -> Uploaded:
    storage = contract.jobs.storage
    input_key = key.removesuffix("/image")
    if not isinstance(storage, LocalStorage) or not INPUT_KEY.match(input_key) or not key.endswith("/image"):
        raise not_found("upload")
    if not storage.verify("PUT " + key, expires, signature):
        raise ApiError(403, "invalid_signature", "the upload URL is invalid or has expired")
    data = await _read_capped(request, contract.settings.max_image_bytes)
    content_type = request.headers.get("content-type", "application/octet-stream")
    await run_in_threadpool(storage.put, key, data, content_type)
    return Uploaded(input_key=input_key, bytes=len(data))


async def _read_capped(request: Request, limit: int) -> bytes:
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > limit:
            raise ApiError(413, "image_too_large", f"the upload is above the limit of {limit} bytes")
    return bytes(data)
