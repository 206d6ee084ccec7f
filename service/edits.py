"""Turning a validated request into a job record, and a job record into its public view."""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime
from urllib.parse import urljoin

from chronoedit_core.images import ImageLimits, decode_image
from chronoedit_core.sizing import check_output_size, default_output_size
from service.errors import ApiError
from service.jobs import EditParams, JobRecord, Progress, StoredFile, input_key
from service.schemas import (
    EditCreate,
    EditDefaults,
    EditParamsView,
    ErrorView,
    FileView,
    InputView,
    JobView,
    ProgressView,
    timestamp,
)
from service.settings import ApiSettings
from service.storage import Storage

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff"}


def build_job(edit: EditCreate, data: bytes, settings: ApiSettings) -> JobRecord:
    """Validate the image and the output size, resolve every default, and return the new job's record."""
    decoded = decode_image(data, ImageLimits(settings.max_image_bytes, settings.max_image_pixels))
    width, height = decoded.image.size
    output = _output_size(edit, width, height, settings)
    job_id = uuid.uuid4().hex
    params = EditParams(
        prompt=edit.prompt,
        negative_prompt=edit.negative_prompt,
        seed=edit.seed if edit.seed is not None else secrets.randbelow(2**32),
        num_inference_steps=edit.num_inference_steps or EditDefaults.num_inference_steps,
        guidance_scale=edit.guidance_scale if edit.guidance_scale is not None else EditDefaults.guidance_scale,
        flow_shift=edit.flow_shift if edit.flow_shift is not None else EditDefaults.flow_shift,
        width=output[0],
        height=output[1],
        outputs=edit.outputs,
        fps=edit.fps,
        fp8=edit.fp8,
        step_cache=edit.step_cache,
    )
    stored = StoredFile(
        key=input_key(job_id, EXTENSIONS[decoded.format]),
        content_type=decoded.content_type,
        width=width,
        height=height,
        bytes=len(data),
    )
    progress = Progress(step=0, total=params.num_inference_steps)
    return JobRecord(id=job_id, kind=edit.kind, params=params, input=stored, progress=progress)


def _output_size(edit: EditCreate, width: int, height: int, settings: ApiSettings) -> tuple[int, int]:
    if (edit.width is None) != (edit.height is None):
        raise ApiError(422, "invalid_size", "give both `width` and `height`, or neither to use the size rule")
    if edit.width is not None and edit.height is not None:
        size = (edit.width, edit.height)
    else:
        rule = default_output_size(width, height, max_side=settings.max_output_side)
        size = (rule.width, rule.height)
    try:
        check_output_size(*size, max_side=settings.max_output_side, max_area=settings.max_output_pixels)
    except ValueError as exc:
        raise ApiError(422, "invalid_size", str(exc)) from exc
    return size


def render_job(job: JobRecord, storage: Storage, base_url: str, url_ttl: int, retention: int | None = None) -> JobView:
    """The public view of a job; `retention` (seconds) gives finished jobs their `expires_at`."""
    outputs = {
        name: FileView(
            url=urljoin(base_url, storage.url(f.key, url_ttl)),
            content_type=f.content_type,
            width=f.width,
            height=f.height,
            bytes=f.bytes,
        )
        for name, f in job.outputs.items()
    }
    return JobView(
        id=job.id,
        kind=job.kind,
        status=job.status,
        created_at=timestamp(job.created_at),
        started_at=timestamp(job.started_at),
        finished_at=timestamp(job.finished_at),
        params=EditParamsView(**job.params.model_dump()),
        input=InputView(**job.input.model_dump(exclude={"key"})),
        progress=ProgressView(**job.progress.model_dump()),
        attempt=job.attempt,
        outputs=outputs,
        error=ErrorView(**job.error.model_dump()) if job.error else None,
        expires_at=_expires_at(job, retention),
        files_deleted_at=timestamp(job.files_deleted_at),
        webhook=job.webhook,
        webhook_events=job.webhook_events if job.webhook else [],
    )


def _expires_at(job: JobRecord, retention: int | None) -> datetime | None:
    if retention is None or job.finished_at is None or job.files_deleted_at is not None:
        return None
    return timestamp(job.finished_at + retention)
