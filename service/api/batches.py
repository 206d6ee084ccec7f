"""Managing a tenant's batches: creating the record, views with progress and ETA, listing, paging through items,
the manifest of every item's result (JSONL or CSV), closing and canceling.

Items are ordinary jobs (`GET /v1/edits/{id}` shows each, with its `batch_id` and `reference`); the batch's counts
are kept by the job store (`service/jobs/batches.py`).
"""

from __future__ import annotations

import base64
import binascii
import csv
import io
import json
import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from chronoedit_core.presets import preset
from service.api.auth import Principal
from service.api.batch_schemas import BatchDefaults, BatchItemView
from service.api.errors import ApiError
from service.api.manage import JobManager
from service.jobs.batches import BatchRecord
from service.jobs.record import JobRecord
from service.jobs.system import JobSystem
from service.jobs.view import BatchView, ErrorView, render_batch, render_job

PAGE = 500
"""Items read per round trip while streaming a manifest or canceling."""
SCAN_LIMIT = 5000
"""Most items one filtered page request reads."""
MANIFEST_COLUMNS = (
    "index",
    "reference",
    "job_id",
    "status",
    "cached",
    "image_url",
    "video_url",
    "width",
    "height",
    "error_code",
    "error_message",
    "metadata",
)


@dataclass
class ItemPage:
    items: list[BatchItemView]
    next_cursor: str | None


class BatchManager:
    def __init__(self, jobs: JobSystem, manager: JobManager) -> None:
        self.jobs = jobs
        self.batches = jobs.batches
        self.manager = manager

    def create(self, caller: Principal, defaults: BatchDefaults, webhook: str | None, request_id: str) -> BatchRecord:
        shared = defaults.model_dump(mode="json", exclude={"webhook", "open", "cache"}, exclude_none=True)
        batch = BatchRecord(
            id=f"batch_{uuid.uuid4().hex}",
            tenant=caller.tenant,
            key_id=caller.key_id,
            kind=defaults.kind,
            mode=preset(defaults.kind, defaults.mode).mode,
            defaults=shared,
            cache=defaults.cache,
            webhook=webhook,
            request_id=request_id,
        )
        self.batches.create(batch)
        return batch

    def owned(self, tenant: str, batch_id: str) -> BatchRecord:
        """The batch if it exists and belongs to `tenant`; 404 otherwise."""
        batch = self.batches.get(batch_id)
        if batch is None or batch.tenant != tenant:
            raise ApiError(404, "not_found", f"batch {batch_id} does not exist")
        return batch

    def view(self, batch: BatchRecord) -> BatchView:
        counts = self.batches.counts(batch.id)
        view = render_batch(batch, counts, self.manager.retention)
        remaining = counts.queued + counts.running
        mean = self.manager.mean_duration("all")
        if remaining and mean is not None:
            view.eta_seconds = round(remaining * mean / self._batch_workers(), 1)
        return view

    def _batch_workers(self) -> int:
        workers = [w for w in self.jobs.registry.workers() if w.get("ready") and "batch" in (w.get("queues") or [])]
        return max(1, len(workers))

    def page(self, tenant: str, limit: int, cursor: str | None) -> tuple[list[BatchView], str | None]:
        before = _decode(cursor) if cursor else None
        batches = self.batches.page(tenant, before, limit)
        last = batches[-1].created_at if len(batches) == limit else None
        return [self.view(b) for b in batches], _encode(last) if last is not None else None

    def items(self, batch: BatchRecord, base_url: str, limit: int, cursor: str | None, status: str | None) -> ItemPage:
        """A page of items after `cursor`; with a `status` filter, at most `SCAN_LIMIT` items are read per page (the
        cursor then carries on, so a page may hold fewer than `limit`)."""
        after = int(_decode(cursor)) if cursor else -1
        found: list[BatchItemView] = []
        scanned = 0
        while len(found) < limit and scanned < SCAN_LIMIT:
            rows = self.batches.items(batch.id, after, limit)
            scanned += len(rows)
            if not rows:
                return ItemPage(found, None)
            for job, index in zip(self._jobs([r[0] for r in rows]), (r[1] for r in rows), strict=True):
                after = index
                if job is not None and (status is None or job.status == status):
                    found.append(self._item(job, base_url))
                    if len(found) == limit:
                        break
        return ItemPage(found, _encode(after))

    def _jobs(self, ids: list[str]) -> list[JobRecord | None]:
        return self.jobs.store.get_many(ids)

    def _item(self, job: JobRecord, base_url: str) -> BatchItemView:
        view = render_job(job, self.jobs.storage, base_url, self.jobs.settings.url_ttl_seconds)
        return BatchItemView(
            job_id=job.id,
            index=job.batch_index or 0,
            reference=job.reference,
            metadata=job.metadata,
            status=job.status,
            outputs=view.outputs,
            error=ErrorView(**job.error.model_dump()) if job.error else None,
            cached=job.cached_from is not None,
            cached_from=job.cached_from,
            finished_at=view.finished_at,
        )

    def every_item(self, batch: BatchRecord, base_url: str) -> Iterator[BatchItemView]:
        after = -1
        while rows := self.batches.items(batch.id, after, PAGE):
            for job in self._jobs([r[0] for r in rows]):
                if job is not None:
                    yield self._item(job, base_url)
            after = rows[-1][1]

    def close(self, tenant: str, batch_id: str) -> BatchRecord:
        batch = self.owned(tenant, batch_id)
        if batch.status != "open":
            return batch  # closing twice is harmless
        return self.batches.close(batch_id) or self.owned(tenant, batch_id)

    def cancel(self, tenant: str, batch_id: str) -> BatchRecord:
        """Stop the batch: no more items, queued items canceled at once, running ones at their next step."""
        batch = self.owned(tenant, batch_id)
        if batch.completed_at is not None:
            return batch
        self.batches.cancel(batch_id)  # again on a canceled batch: a cancel cut short goes on where it stopped
        after = -1
        while rows := self.batches.items(batch_id, after, PAGE):
            for job_id, _ in rows:
                self.jobs.store.request_cancel(job_id)
            after = rows[-1][1]
        return self.batches.try_complete(batch_id) or self.owned(tenant, batch_id)


def manifest_jsonl(items: Iterator[BatchItemView]) -> Iterator[str]:
    for item in items:
        yield json.dumps(_row(item), separators=(",", ":")) + "\n"


def manifest_csv(items: Iterator[BatchItemView]) -> Iterator[str]:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_COLUMNS)
    writer.writeheader()
    for item in items:
        writer.writerow({**_row(item), "metadata": json.dumps(item.metadata)})
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue()


def _row(item: BatchItemView) -> dict[str, Any]:
    image, video = item.outputs.get("image"), item.outputs.get("video")
    return {
        "index": item.index,
        "reference": item.reference,
        "job_id": item.job_id,
        "status": item.status.value,
        "cached": item.cached,
        "image_url": image.url if image else None,
        "video_url": video.url if video else None,
        "width": image.width if image else None,
        "height": image.height if image else None,
        "error_code": item.error.code if item.error else None,
        "error_message": item.error.message if item.error else None,
        "metadata": item.metadata,
    }


def _encode(value: float) -> str:
    return base64.urlsafe_b64encode(repr(value).encode()).decode()


def _decode(cursor: str) -> float:
    try:
        value = float(base64.urlsafe_b64decode(cursor.encode()).decode())
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned") from exc
    if not math.isfinite(value):
        raise ApiError(422, "invalid_cursor", "the cursor is not one this API returned")
    return value
