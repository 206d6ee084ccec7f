"""Reading batch requests and turning their items into jobs on the batch lane.

The top-level fields are validated as a whole (a bad shared parameter refuses the request). Items are validated one
by one, each through the same path as `POST /v1/edits` (the image read and decoded, the preset, sizes and seed
resolved), so an invalid item is reported with the code and message an edit would get, and the others still run.
Items are processed `CHRONOEDIT_BATCH_INTAKE_CONCURRENCY` at a time. A reference already in the batch is reported
as a `duplicate` with the existing item's job id; the job store checks it in the transaction that creates the item.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from chronoedit_core.errors import ChronoEditError
from service.api.auth import Principal
from service.api.batch_schemas import ITEM_OVERRIDES, BatchDefaults, BatchItemCreate, BatchItemResult
from service.api.errors import ApiError, validation_error
from service.api.inputs import fetch_image, read_json_object
from service.api.resolve import build_job
from service.api.schemas import EditCreate
from service.api.services import Services
from service.jobs.batches import BatchClosed, BatchRecord, DuplicateReference
from service.jobs.record import JobRecord
from service.jobs.view import ErrorView
from service.storage import StorageError

logger = logging.getLogger(__name__)

EDIT_FIELDS = set(EditCreate.model_fields)
ITEM_BYTES = 24 * 1024
"""Allowance per item for the request body's size limit: the largest valid item (a URL, a reference, 16 metadata
values, prompt overrides) fits."""


async def read_batch(request: Request, services: Services) -> tuple[BatchDefaults, list[Any], dict[str, Any]]:
    """The shared parameters, the raw items and the body (for the idempotency fingerprint)."""
    body = await read_json_object(request, _body_limit(services))
    items = _items(body.pop("items", []), services)
    try:
        defaults = BatchDefaults.model_validate(body)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from exc
    return defaults, items, {**body, "items": items}


async def read_items(request: Request, services: Services) -> list[Any]:
    body = await read_json_object(request, _body_limit(services))
    unknown = set(body) - {"items"}
    if unknown:
        raise ApiError(422, "invalid_parameter", f"unknown fields {sorted(unknown)}; send `items` only")
    return _items(body.get("items"), services)


def _body_limit(services: Services) -> int:
    return services.settings.max_batch_items * ITEM_BYTES + 64 * 1024


def _items(value: Any, services: Services) -> list[Any]:
    if not isinstance(value, list):
        raise ApiError(422, "invalid_parameter", "`items` must be a list of items")
    limit = services.settings.max_batch_items
    if len(value) > limit:
        raise ApiError(422, "too_many_items", f"{len(value)} items in one request; at most {limit}, append the rest")
    return value


def check_room(services: Services, tenant: str, count: int) -> None:
    """429 `batch_limit` when `count` more items would put the tenant above its waiting batch items."""
    limit = services.settings.max_queued_batch_items
    waiting = services.jobs.lane.pending(tenant)
    if waiting + count > limit:
        raise ApiError(
            429,
            "batch_limit",
            f"{waiting} batch items are waiting and {count} more would pass the limit of {limit}; retry later",
            headers={"Retry-After": "60"},
        )


@dataclass(frozen=True)
class Position:
    in_request: int
    in_batch: int


class BatchIntake:
    def __init__(self, services: Services) -> None:
        self.services = services

    async def add(
        self, caller: Principal, batch: BatchRecord, raw_items: list[Any], request_id: str
    ) -> list[BatchItemResult]:
        """Validate and create every item; one result per item, in request order."""
        limit = asyncio.Semaphore(self.services.settings.batch_intake_concurrency)
        first = await run_in_threadpool(self.services.jobs.batches.reserve_indices, batch.id, len(raw_items))
        await run_in_threadpool(self.services.jobs.batches.touch, batch.id)

        async def one(index: int, raw: Any) -> BatchItemResult:
            async with limit:
                return await self._item(caller, batch, Position(index, first + index), raw, request_id)

        return list(await asyncio.gather(*(one(i, raw) for i, raw in enumerate(raw_items))))

    async def _item(
        self, caller: Principal, batch: BatchRecord, at: Position, raw: Any, request_id: str
    ) -> BatchItemResult:
        reference = raw.get("reference") if isinstance(raw, dict) else None
        result = BatchItemResult(
            index=at.in_request,
            reference=reference if isinstance(reference, str) else None,
            status="rejected",
            job_id=None,
        )
        try:
            item = _validated_item(raw)
            existing = await self._existing(batch, item)
            if existing is not None:
                return result.model_copy(update={"status": "duplicate", "job_id": existing})
            job = await self._create(caller, batch, item, at.in_batch, request_id)
        except DuplicateReference as exc:
            return result.model_copy(update={"status": "duplicate", "job_id": exc.job_id})
        except BatchClosed:
            return _rejected(result, "batch_closed", f"batch {batch.id} takes no more items")
        except ApiError as exc:
            return _rejected(result, exc.code, exc.message)
        except ChronoEditError as exc:
            return _rejected(result, exc.code, exc.message)
        except StorageError as exc:
            return _rejected(result, "storage_unavailable", f"storing the input failed: {exc}")
        except Exception:  # one item's surprise must not abort the others half-way; it is logged with the request
            logger.exception("batch %s: item %d failed unexpectedly", batch.id, at.in_request)
            return _rejected(result, "internal_error", "the item could not be stored; retry it (same reference)")
        return result.model_copy(update={"status": "accepted", "job_id": job.id})

    async def _existing(self, batch: BatchRecord, item: BatchItemCreate) -> str | None:
        """The job of the batch's item with this item's reference (checked again when the item is created)."""
        if item.reference is None:
            return None
        return await run_in_threadpool(self.services.jobs.batches.job_for_reference, batch.id, item.reference)

    async def _create(
        self, caller: Principal, batch: BatchRecord, item: BatchItemCreate, index: int, request_id: str
    ) -> JobRecord:
        services = self.services
        edit = _edit(batch, item)
        if item.input_key is not None:
            data = await run_in_threadpool(services.uploads.read, caller.tenant, item.input_key)
        else:
            data = await fetch_image(str(item.image_url), services.settings)
        job, stored_input = await run_in_threadpool(build_job, edit, data, services.settings)
        job = job.model_copy(
            update={
                "tenant": caller.tenant,
                "key_id": caller.key_id,
                "webhook": None,
                "request_id": request_id,
                "lane": "batch",
                "batch_id": batch.id,
                "batch_index": index,
                "reference": item.reference,
                "metadata": item.metadata,
            }
        )
        await run_in_threadpool(services.jobs.submit, job, stored_input)
        return job


def _validated_item(raw: Any) -> BatchItemCreate:
    if not isinstance(raw, dict):
        raise ApiError(422, "invalid_parameter", "an item must be an object")
    try:
        item = BatchItemCreate.model_validate(raw)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from exc
    if (item.image_url is None) == (item.input_key is None):
        raise ApiError(422, "missing_image", "give exactly one of `image_url` and `input_key`")
    return item


def _edit(batch: BatchRecord, item: BatchItemCreate) -> EditCreate:
    """The item as the edit it is: the batch's parameters, the item's overrides, the batch's cache choice."""
    shared = {name: value for name, value in batch.defaults.items() if name in EDIT_FIELDS}
    overrides = {name: getattr(item, name) for name in ITEM_OVERRIDES if getattr(item, name) is not None}
    fields = {**shared, **overrides, "cache": batch.cache, "input_key": item.input_key, "image_url": item.image_url}
    try:
        return EditCreate.model_validate(fields)
    except ValidationError as exc:
        raise validation_error(list(exc.errors())) from exc


def _rejected(result: BatchItemResult, code: str, message: str) -> BatchItemResult:
    return result.model_copy(update={"error": ErrorView(code=code, message=message)})
