"""The batches resource: many items of one kind as one job, on the batch lane (behind interactive edits, fair between
tenants). Create with items, append more while open, close; watch the counts, page through items, download the
manifest of results, cancel."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool

from service.api.auth import Principal
from service.api.batch_intake import BatchIntake, check_room, read_batch, read_items
from service.api.batch_schemas import (
    BatchCreate,
    BatchItemList,
    BatchItemResult,
    BatchItemsAppend,
    BatchList,
    BatchSubmission,
)
from service.api.batches import manifest_csv, manifest_jsonl
from service.api.deps import Caller, ServicesDep
from service.api.errors import ApiError
from service.api.idempotency import REPLAY_HEADER, StoredResponse, fingerprint
from service.api.routes.responses import AUTH_ERRORS, ERR, IdempotencyKey
from service.api.services import Services
from service.api.submit import check_webhook
from service.jobs.batches import BatchRecord
from service.jobs.record import JobStatus
from service.jobs.view import BatchView

router = APIRouter(tags=["batches"])

SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    **AUTH_ERRORS,
    400: ERR,
    409: ERR,
    413: ERR,
    429: {"model": ERR["model"], "headers": {"Retry-After": {"schema": {"type": "integer"}}}},
}
MANIFEST_TYPES = {"jsonl": "application/x-ndjson", "csv": "text/csv"}
MANIFEST_RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "One row per item in index order: reference, job id, status, output URLs (expiring), size, "
        "error, metadata. JSON lines by default; CSV with `format=csv` or `Accept: text/csv`.",
        "content": {media: {"schema": {"type": "string"}} for media in MANIFEST_TYPES.values()},
    },
    **AUTH_ERRORS,
}


def _body(model: type) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{model.__name__}"}}},
        }
    }


def _submission(batch: BatchView, results: list[BatchItemResult]) -> dict[str, Any]:
    counted = {status: sum(r.status == status for r in results) for status in ("accepted", "duplicate", "rejected")}
    submission = BatchSubmission(
        batch=batch,
        accepted=counted["accepted"],
        duplicates=counted["duplicate"],
        rejected=counted["rejected"],
        items=results,
    )
    return submission.model_dump(mode="json")


@router.post(
    "/v1/batches",
    status_code=201,
    response_model=BatchSubmission,
    responses=SUBMIT_ERRORS,
    openapi_extra=_body(BatchCreate),
    summary="Create a batch",
    description="Shared parameters at the top level, items each with their image (`image_url` or `input_key`), an "
    "optional `reference` and overrides. Invalid items are reported one by one (`rejected`, with the code an edit "
    "would get) and the others run. The batch closes after this request unless `open` is true.",
)
async def create_batch(
    request: Request, caller: Caller, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    defaults, items, body = await read_batch(request, services)
    url = str(defaults.webhook) if defaults.webhook is not None else None
    webhook = await run_in_threadpool(check_webhook, services, caller, url)
    if not items and not defaults.open:
        raise ApiError(422, "invalid_parameter", "a batch needs items, or `open: true` to append them later")

    async def create() -> StoredResponse:
        await run_in_threadpool(check_room, services, caller.tenant, len(items))
        batch = await run_in_threadpool(services.batches.create, caller, defaults, webhook, request.state.request_id)
        results = await BatchIntake(services).add(caller, batch, items, request.state.request_id)
        if not defaults.open:
            batch = await run_in_threadpool(services.batches.close, caller.tenant, batch.id)
        view = await run_in_threadpool(services.batches.view, batch)
        return StoredResponse(201, _submission(view, results), {"Location": f"/v1/batches/{batch.id}"})

    print_ = fingerprint("POST /v1/batches", body)
    return await _once(services, caller, idempotency_key, print_, create)


async def _once(
    services: Services,
    caller: Principal,
    key: str | None,
    print_: str,
    create: Callable[[], Awaitable[StoredResponse]],
) -> JSONResponse:
    """Run `create` once per `Idempotency-Key` (replaying the stored answer to a repeat)."""
    stored, replayed = await services.idempotency.run(caller.tenant, key, print_, create)
    headers = {**stored.headers, **({REPLAY_HEADER: "true"} if replayed else {})}
    return JSONResponse(stored.body, status_code=stored.status, headers=headers)


@router.post(
    "/v1/batches/{batch_id}/items",
    response_model=BatchSubmission,
    responses=SUBMIT_ERRORS,
    openapi_extra=_body(BatchItemsAppend),
    summary="Append items to an open batch",
    description="Items whose `reference` the batch already has are answered `duplicate` and not run again, so a "
    "retried append is harmless. 409 `batch_closed` once the batch is closed or canceled.",
)
async def append_items(
    batch_id: str, request: Request, caller: Caller, services: ServicesDep, idempotency_key: IdempotencyKey = None
) -> JSONResponse:
    items = await read_items(request, services)
    batch = await run_in_threadpool(services.batches.owned, caller.tenant, batch_id)

    async def create() -> StoredResponse:
        _require_open(batch)  # inside: a repeat of an append that was answered is replayed, even once closed
        await run_in_threadpool(check_room, services, caller.tenant, len(items))
        results = await BatchIntake(services).add(caller, batch, items, request.state.request_id)
        current = await run_in_threadpool(services.batches.owned, caller.tenant, batch_id)
        view = await run_in_threadpool(services.batches.view, current)
        return StoredResponse(200, _submission(view, results), {})

    print_ = fingerprint(f"POST /v1/batches/{batch_id}/items", {"items": items})
    return await _once(services, caller, idempotency_key, print_, create)


def _require_open(batch: BatchRecord) -> None:
    if batch.status != "open":
        raise ApiError(409, "batch_closed", f"batch {batch.id} is {batch.status} and takes no more items")


@router.post(
    "/v1/batches/{batch_id}/close",
    response_model=BatchView,
    responses=AUTH_ERRORS,
    summary="Close a batch: no more items; it completes when every item is finished",
)
def close_batch(batch_id: str, caller: Caller, services: ServicesDep) -> BatchView:
    return services.batches.view(services.batches.close(caller.tenant, batch_id))


@router.post(
    "/v1/batches/{batch_id}/cancel",
    response_model=BatchView,
    responses=AUTH_ERRORS,
    summary="Cancel a batch",
    description="No more items; queued items end `canceled` at once, running ones at their next denoising step. "
    "Finished items keep their results. Canceling again answers the batch as it is.",
)
def cancel_batch(batch_id: str, caller: Caller, services: ServicesDep) -> BatchView:
    return services.batches.view(services.batches.cancel(caller.tenant, batch_id))


@router.get("/v1/batches", response_model=BatchList, responses=AUTH_ERRORS, summary="List batches")
def list_batches(
    caller: Caller,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
) -> BatchList:
    views, next_cursor = services.batches.page(caller.tenant, limit, cursor)
    return BatchList(data=views, next_cursor=next_cursor)


@router.get("/v1/batches/{batch_id}", response_model=BatchView, responses=AUTH_ERRORS, summary="Get a batch")
def get_batch(batch_id: str, caller: Caller, services: ServicesDep) -> BatchView:
    return services.batches.view(services.batches.owned(caller.tenant, batch_id))


@router.get(
    "/v1/batches/{batch_id}/items", response_model=BatchItemList, responses=AUTH_ERRORS, summary="Page through items"
)
def list_batch_items(
    batch_id: str,
    request: Request,
    caller: Caller,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
    cursor: Annotated[str | None, Query(description="`next_cursor` of the previous page.")] = None,
    status: Annotated[JobStatus | None, Query(description="Only items in this state.")] = None,
) -> BatchItemList:
    batch = services.batches.owned(caller.tenant, batch_id)
    page = services.batches.items(batch, str(request.base_url), limit, cursor, status)
    return BatchItemList(data=page.items, next_cursor=page.next_cursor)


@router.get(
    "/v1/batches/{batch_id}/manifest",
    response_class=StreamingResponse,
    responses=MANIFEST_RESPONSE,
    summary="Every item's result, as JSON lines or CSV",
)
def batch_manifest(
    batch_id: str,
    request: Request,
    caller: Caller,
    services: ServicesDep,
    format: Annotated[str | None, Query(pattern="^(jsonl|csv)$", description="`jsonl` (default) or `csv`.")] = None,
    accept: Annotated[str | None, Header()] = None,
) -> StreamingResponse:
    batch = services.batches.owned(caller.tenant, batch_id)
    chosen = format or ("csv" if "text/csv" in (accept or "") else "jsonl")
    items = services.batches.every_item(batch, str(request.base_url))
    rows = manifest_csv(items) if chosen == "csv" else manifest_jsonl(items)
    disposition = f'attachment; filename="{batch.id}.{chosen}"'
    return StreamingResponse(rows, media_type=MANIFEST_TYPES[chosen], headers={"Content-Disposition": disposition})
