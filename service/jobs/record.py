"""The job record: the single source of truth about a job, shared by the API and the workers.

It lives in Redis as JSON (see `service/jobs/store.py`); the Celery message carries only the job id. Attempts make
redelivery harmless: a worker claims a job by bumping `attempt`, writes outputs under attempt-scoped keys, and only
the current attempt may finalise.
"""

from __future__ import annotations

import time
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, Field

OutputName = Literal["image", "video"]
Kind = Literal["edit", "upscale", "sketch"]
Mode = Literal["standard", "fast", "turbo"]
Stage = Literal["enhancing", "queued", "loading", "denoising", "decoding", "uploading", "done"]
"""`enhancing`: the job waits for its prompt enhancement (still `queued`); the others are the GPU worker's."""
Lane = Literal["interactive", "batch"]
"""Interactive jobs (`POST /v1/edits`) are taken before batch items, which share the batch lane fairly by tenant."""
EnhancePolicy = Literal["required", "best_effort"]
"""What a job does when its prompt enhancer fails or times out: fail (`enhancer_unavailable`) or run with the
user's own prompt."""
EnhanceStatus = Literal["pending", "succeeded", "failed"]
WorkerStage = Literal["input_load", "inference", "encode", "upload"]
"""What a GPU worker times of an attempt, in order: read and decode the input, the pipeline call (denoising and
VAE decoding), encode the outputs (PNG/MP4), write them to storage."""
StageSeconds = dict[WorkerStage, float]
EventType = Literal["queued", "started", "progress", "succeeded", "failed", "canceled"]
TERMINAL_EVENTS: tuple[EventType, ...] = ("succeeded", "failed", "canceled")
DEFAULT_TENANT = "default"


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


class EditParams(BaseModel):
    """Resolved parameters: everything that determines the output, the drawn seed and output size included."""

    mode: Mode = "standard"
    prompt: str
    """The user's text."""
    enhanced_prompt: str | None = None
    """The prompt enhancer's rewrite of `prompt`; None when the job was not enhanced (or the enhancer failed)."""
    model_prompt: str = ""
    """What the model was given: the enhanced text (else the user's) in the kind's prompt template."""
    negative_prompt: str = ""
    loras: list[str] = Field(default_factory=list)
    """Adapters active for this job, from the kind and mode's preset."""
    seed: int
    num_inference_steps: int
    guidance_scale: float
    flow_shift: float
    width: int
    height: int
    outputs: list[OutputName]
    fps: int = 16
    fp8: bool = False
    step_cache: float | None = None
    guidance_steps: int | None = None
    temporal_reasoning: bool = False
    reasoning_steps: int | None = None
    output_size: Literal["model", "input"] = "model"


class StoredFile(BaseModel):
    key: str
    content_type: str
    width: int
    height: int
    bytes: int
    sha256: str | None = None
    """Of the input: part of the result-cache key."""


class Progress(BaseModel):
    step: int = 0
    total: int = 0
    stage: Stage = "queued"


class RanWith(BaseModel):
    """The weights a job ran with: the base model's manifest digest and each active adapter's file digest; and the
    numerics: the transformer's matrix multiplies' precision (`float8_e4m3fn` when the job asked for `fp8` or its
    worker's memory profile stores FP8 weights), the memory profile, and which VAE stages ran tiled to fit."""

    base_digest: str | None
    transformer_digest: str | None = None
    """A `turbo` job: the manifest digest of the few-step transformer that replaced the base one."""
    loras: dict[str, str] = Field(default_factory=dict)
    device: str
    dtype: str
    memory_profile: str | None = None
    vae_tiling: list[str] = Field(default_factory=list)
    """`encode` and/or `decode` when that stage ran with VAE tiling (slightly different pixels); empty for outputs
    reused from an earlier job (see that job)."""


class Enhancement(BaseModel):
    """A job's prompt enhancement: asked for with a failure policy, pending until the enhancer answered or gave up.

    While `pending` the job is `queued` but in no GPU queue: `service/jobs/events.py` enters it there only once the
    enhancement is finished (`succeeded`, or `failed` under `best_effort`)."""

    policy: EnhancePolicy
    status: EnhanceStatus = "pending"
    enhancer: str | None = None
    """The backend and model that answered (`local:...`, `remote:...`)."""
    error: str | None = None
    """Why it failed; under `best_effort` the job ran with the user's own prompt."""
    shared: bool = False
    """The text was reused from an identical enhancement (same tenant, instruction, image bytes and enhancer)."""
    finished_at: float | None = None


class JobTimings(BaseModel):
    """Where a finished job's time went, in seconds, measured for its final attempt (a lost attempt's time shows
    only in `total`). The worker's stages are timed on its monotonic clock; `queue_wait` and `total` are differences
    of the record's timestamps, which the API and the workers write on their own clocks (clock skew between hosts
    shows up there, clamped at 0)."""

    enhance: float | None = None
    """Created to the prompt enhancement finished; only for jobs that asked for it."""
    queue_wait: float | None = None
    """Entered the GPU queue (created, enhanced, or claimable again after a lost attempt) to claimed by a worker;
    None when no worker claimed the final attempt."""
    input_load: float | None = None
    inference: float | None = None
    encode: float | None = None
    upload: float | None = None
    total: float
    """Created to finished."""

    @classmethod
    def of(cls, job: JobRecord, finished_at: float, stages: StageSeconds | None = None) -> JobTimings:
        """The timings of `job` finishing at `finished_at` after its final attempt ran `stages` (those it finished;
        none when no worker ran it to the end, or it reused another job's outputs)."""
        enhanced = job.enhancement.finished_at if job.enhancement is not None else None
        queued = max(job.created_at, enhanced or 0.0, job.requeued_at or 0.0)
        claimed = job.started_at if job.started_at is not None and job.started_at >= queued else None
        return cls(
            enhance=_seconds(enhanced - job.created_at) if enhanced is not None else None,
            queue_wait=_seconds(claimed - queued) if claimed is not None else None,
            **{stage: _seconds(seconds) for stage, seconds in (stages or {}).items()},
            total=_seconds(finished_at - job.created_at),
        )


def _seconds(value: float) -> float:
    return round(max(value, 0.0), 6)


class JobError(BaseModel):
    code: str
    message: str


class JobRecord(BaseModel):
    id: str
    kind: Kind = "edit"
    status: JobStatus = JobStatus.QUEUED
    params: EditParams
    input: StoredFile
    created_at: float = Field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    progress: Progress = Field(default_factory=Progress)
    attempt: int = 0
    """Number of times a worker claimed the job; the current attempt is the only one allowed to finalise."""
    lease_expires_at: float | None = None
    requeued_at: float | None = None
    """When the job became claimable again after a lost attempt (its lease expired); its queue wait counts from here."""
    worker: str | None = None
    outputs: dict[str, StoredFile] = Field(default_factory=dict)
    error: JobError | None = None
    request_id: str | None = None
    """The `X-Request-ID` of the request that created the job, so the worker's log lines carry it."""
    tenant: str = DEFAULT_TENANT
    """The tenant that owns the job; every other tenant gets 404."""
    key_id: str | None = None
    """The API key that submitted the job (its webhook secret signs the job's webhooks); None without a key."""
    webhook: str | None = None
    webhook_events: list[EventType] = Field(default_factory=lambda: list(TERMINAL_EVENTS))
    progress_event_at: float | None = None
    """When the last `progress` webhook was emitted; they are throttled (see `service/jobs/events.py`)."""
    files_deleted_at: float | None = None
    """When the job's inputs and outputs were deleted (by `DELETE`)."""
    deleted_at: float | None = None
    """When a client deleted the job: its files and deliveries are gone, the record stays as a tombstone (its
    events and deliveries answer 404) until the retention removes it too."""
    cancel_requested_at: float | None = None
    """Set by `POST /v1/edits/{id}/cancel` on a running job; its worker stops at the next denoising step."""
    ran_with: RanWith | None = None
    timings: JobTimings | None = None
    """Set by the transition that finishes the job."""
    lane: Lane = "interactive"
    batch_id: str | None = None
    """The batch the job is an item of, its place in the batch, its client `reference` (unique in the batch) and
    `metadata`."""
    batch_index: int | None = None
    reference: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    cache: bool = False
    """Reuse the outputs of an earlier identical job of the tenant (explicit seed, same input, parameters and
    weights) instead of running it; see `service/jobs/cache.py`."""
    cached_from: str | None = None
    """The job whose outputs this one reused (no GPU work was done)."""
    enhancement: Enhancement | None = None
    """Present when the job asked for prompt enhancement."""

    def awaits_enhancement(self) -> bool:
        """Queued but held back from the GPU queues until its prompt enhancement is finished."""
        return self.status == JobStatus.QUEUED and self.enhancement is not None and self.enhancement.status == "pending"


def input_key(job_id: str, extension: str) -> str:
    return f"jobs/{job_id}/input/image.{extension}"


def output_key(job_id: str, attempt: int, name: str) -> str:
    """Attempt-scoped: a redelivered task writes beside, never over, another attempt's files."""
    return f"jobs/{job_id}/attempts/{attempt}/{name}"


def attempt_prefix(job_id: str, attempt: int) -> str:
    return f"jobs/{job_id}/attempts/{attempt}/"
