"""Jobs and batches as clients see them: the bodies of `GET /v1/edits/{id}` and `GET /v1/batches/{id}`, of server-sent
events and of every webhook, with download URLs signed for the reader and, once finished, when things expire."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urljoin

from pydantic import BaseModel, Field

from service.jobs.batches import BatchCounts, BatchRecord, BatchStatus
from service.jobs.record import (
    EnhancePolicy,
    EnhanceStatus,
    EventType,
    JobRecord,
    JobStatus,
    Kind,
    Mode,
    OutputName,
    RanWith,
    Stage,
)
from service.storage import Storage


class EditParamsView(BaseModel):
    mode: Mode
    prompt: str = Field(description="Your prompt, as sent.")
    enhanced_prompt: str | None = Field(
        None, description="The prompt enhancer's rewrite of `prompt`; null when the job was not enhanced."
    )
    model_prompt: str = Field(
        description="What the model was given: the enhanced prompt (else yours) in the kind's template."
    )
    negative_prompt: str
    loras: list[str]
    seed: int
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float
    width: int
    height: int
    outputs: list[OutputName]
    fps: int
    fp8: bool
    step_cache: float | None
    guidance_steps: int | None = Field(
        None, description="Limited guidance: guided for the first N steps only (opt-in, approximate); null: every step."
    )
    temporal_reasoning: bool
    reasoning_steps: int | None
    output_size: Literal["model", "input"]


class FileView(BaseModel):
    url: str = Field(description="Downloads the file; expires (presigned S3 URL or signed API URL).")
    content_type: str
    width: int
    height: int
    bytes: int


class InputView(BaseModel):
    content_type: str
    width: int
    height: int
    bytes: int


class ProgressView(BaseModel):
    step: int = Field(description="Denoising steps done (of a canceled job: how many ran).")
    total: int
    stage: Stage


class EnhancementView(BaseModel):
    policy: EnhancePolicy = Field(description="`required`: the job fails if the enhancer does; `best_effort`: it runs.")
    status: EnhanceStatus = Field(
        description="`pending` (the job waits for it, `progress.stage` `enhancing`), `succeeded`, or `failed` (under "
        "`best_effort` the job ran with your own prompt; `error` says why)."
    )
    enhancer: str | None = Field(description="The backend and model that answered (`local:...`, `remote:...`).")
    error: str | None
    shared: bool = Field(description="Reused from an identical enhancement (same instruction and image bytes).")


class TimingsView(BaseModel):
    """Seconds. The worker's stages are those of the job's final attempt: a job that failed or was canceled midway
    has only those it got through, one that reused an earlier job's outputs has none."""

    enhance: float | None = Field(description="Created to its prompt enhancement finished (only jobs that asked).")
    queue_wait: float | None = Field(
        description="Waiting for a worker: from entering the GPU queue (created, enhanced, or put back after a lost "
        "attempt) to claimed; null when no worker started the final attempt."
    )
    input_load: float | None = Field(description="The worker reading and decoding the input image.")
    inference: float | None = Field(
        description="The model: encoding the prompt and image, denoising (with its per-step progress updates) and "
        "decoding the frames."
    )
    encode: float | None = Field(description="Encoding the outputs (PNG, MP4).")
    upload: float | None = Field(description="Writing the outputs to storage.")
    total: float = Field(
        description="Created to finished. What the other timings leave of it is the service's own bookkeeping "
        "between them (the job record's state changes)."
    )


class ErrorView(BaseModel):
    code: str
    message: str


class JobView(BaseModel):
    id: str
    object: Literal["edit"] = "edit"
    kind: Kind
    status: JobStatus
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    params: EditParamsView
    input: InputView
    progress: ProgressView
    attempt: int = Field(description="How many times a worker started this job.")
    outputs: dict[OutputName, FileView] = Field(description="Present once the job succeeded.")
    error: ErrorView | None
    queue_position: int | None = Field(None, description="While queued: 1 is next to start.")
    eta_seconds: float | None = Field(
        None, description="While queued: estimated seconds until it finishes, from recent jobs of the same profile."
    )
    expires_at: datetime | None = Field(
        None, description="When a finished job is deleted with its input, outputs and webhook deliveries (retention)."
    )
    files_deleted_at: datetime | None = Field(None, description="When its files were deleted (`DELETE`).")
    webhook: str | None = None
    webhook_events: list[EventType] = Field(default_factory=list)
    cancel_requested_at: datetime | None = Field(None, description="When a cancel was asked for a running job.")
    ran_with: RanWith | None = Field(
        None,
        description="The weights the job ran with (manifest and adapter digests) and its numerics: `dtype` "
        "(`float8_e4m3fn` when it ran FP8), the worker's `memory_profile`, the VAE stages tiled to fit (`vae_tiling`).",
    )
    timings: TimingsView | None = Field(
        None, description="Where the job's time went, in seconds; null until it finished."
    )
    batch_id: str | None = Field(None, description="The batch this job is an item of.")
    reference: str | None = Field(None, description="The batch item's client reference (unique in its batch).")
    metadata: dict[str, str] = Field(default_factory=dict, description="The batch item's client metadata.")
    cached: bool = Field(
        False, description="The outputs are those of an earlier identical job (`cached_from`); no GPU work was done."
    )
    cached_from: str | None = Field(None, description="The job whose outputs were reused.")
    enhancement: EnhancementView | None = Field(None, description="Prompt enhancement, when the job asked for it.")


class BatchCountsView(BaseModel):
    total: int = Field(description="Items accepted into the batch.")
    queued: int
    running: int
    succeeded: int
    failed: int
    canceled: int
    cached: int = Field(description="Succeeded items that reused an earlier job's outputs (no GPU work).")


class BatchLinks(BaseModel):
    self: str
    items: str
    manifest: str


class BatchView(BaseModel):
    id: str
    object: Literal["batch"] = "batch"
    status: BatchStatus = Field(
        description="`open`: items may be appended; `running`: closed, items unfinished; `completed`: closed and "
        "every item finished (item failures do not fail the batch); `canceled`: canceled by the client."
    )
    kind: Kind
    mode: Mode
    defaults: dict[str, Any] = Field(description="Parameters shared by the items, as sent.")
    cache: bool = Field(description="Items with a `seed` reuse the outputs of identical earlier jobs of the tenant.")
    counts: BatchCountsView
    progress: float = Field(description="Finished items / items, 0 to 1.")
    eta_seconds: float | None = Field(None, description="Estimated seconds until every item is finished.")
    created_at: datetime
    closed_at: datetime | None
    canceled_at: datetime | None
    completed_at: datetime | None
    expires_at: datetime | None = Field(None, description="When a finished batch's record and item index expire.")
    webhook: str | None
    links: BatchLinks


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
        input=InputView(**job.input.model_dump(exclude={"key", "sha256"})),
        progress=ProgressView(**job.progress.model_dump()),
        attempt=job.attempt,
        outputs=outputs,
        cancel_requested_at=timestamp(job.cancel_requested_at),
        ran_with=job.ran_with,
        timings=TimingsView(**job.timings.model_dump()) if job.timings and job.status.is_terminal() else None,
        error=ErrorView(**job.error.model_dump()) if job.error else None,
        expires_at=_expires_at(job, retention),
        files_deleted_at=timestamp(job.files_deleted_at),
        webhook=job.webhook,
        webhook_events=job.webhook_events if job.webhook else [],
        batch_id=job.batch_id,
        reference=job.reference,
        metadata=job.metadata,
        cached=job.cached_from is not None,
        cached_from=job.cached_from,
        enhancement=EnhancementView(**job.enhancement.model_dump()) if job.enhancement else None,
    )


def render_batch(batch: BatchRecord, counts: BatchCounts, retention: int | None = None) -> BatchView:
    """The public view of a batch (links are paths below the API's base URL)."""
    path = f"/v1/batches/{batch.id}"
    finished = counts.finished
    return BatchView(
        id=batch.id,
        status=batch.status,
        kind=batch.kind,
        mode=batch.mode,
        defaults=batch.defaults,
        cache=batch.cache,
        counts=BatchCountsView(**counts.model_dump()),
        progress=round(finished / counts.total, 4) if counts.total else (1.0 if batch.completed_at else 0.0),
        created_at=timestamp(batch.created_at),
        closed_at=timestamp(batch.closed_at),
        canceled_at=timestamp(batch.canceled_at),
        completed_at=timestamp(batch.completed_at),
        expires_at=timestamp(batch.completed_at + retention) if retention and batch.completed_at else None,
        webhook=batch.webhook,
        links=BatchLinks(self=path, items=f"{path}/items", manifest=f"{path}/manifest"),
    )


def _expires_at(job: JobRecord, retention: int | None) -> datetime | None:
    if retention is None or job.finished_at is None:
        return None
    return timestamp(job.finished_at + retention)


def timestamp(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None
