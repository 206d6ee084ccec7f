"""Request and response bodies of the public API, version 1 (a job's own view is `service/jobs/view.py`)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from service.jobs.record import TERMINAL_EVENTS, EnhancePolicy, EventType, Kind, Mode, OutputName
from service.jobs.view import JobView

MAX_PROMPT_CHARS = 4000
MAX_SEED = 2**63 - 1


class EditCreate(BaseModel):
    """Fields of `POST /v1/edits`, as JSON or as multipart form fields (the image then comes as the `image` file)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field(
        "edit", description="`edit` (instruction), `upscale` (super-resolution), `sketch` (sketch to object)."
    )
    mode: Mode | None = Field(
        None,
        description="`standard` (50 steps), `fast` (8-step distill LoRA) or, for `edit` jobs, `turbo` (a few-step "
        "distilled transformer, on the workers that hold one). Default: standard; sketch: fast.",
    )
    prompt: Annotated[
        str,
        Field(
            max_length=MAX_PROMPT_CHARS,
            validate_default=True,  # so a missing prompt is checked against the kind too
            description='edit: the instruction; sketch: the object to draw ("a crown"); upscale: optional extra text.',
        ),
    ] = ""
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Random seed; drawn and recorded when absent.")
    num_inference_steps: int | None = Field(None, ge=1, le=100, description="Denoising steps (default 50).")
    guidance_scale: float | None = Field(None, ge=1.0, le=20.0, description="Classifier-free guidance (default 5).")
    flow_shift: float | None = Field(None, ge=0.5, le=20.0, description="UniPC flow shift (default 5).")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What the edit should avoid.")
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16, description="Output width; default: size rule.")
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16, description="Output height; default: size rule.")
    outputs: list[OutputName] = Field(default=["image"], min_length=1, max_length=2, description="Files to produce.")
    fps: int = Field(16, ge=1, le=60, description="Frame rate of the `video` output.")
    scale: float | None = Field(
        None,
        gt=1,
        le=8,
        description="upscale only: output = input size x scale (long side capped), not width/height.",
    )
    output_size: Literal["model", "input"] = Field(
        "model", description="`input`: the image output is resized back to the input's size (Lanczos)."
    )
    temporal_reasoning: bool = Field(
        False, description="Render a 29-frame trajectory (reasoning). Not with `fast` mode (the distill LoRA)."
    )
    reasoning_steps: int | None = Field(
        None,
        ge=1,
        le=100,
        description="With temporal_reasoning: steps before reasoning frames are dropped (default all).",
    )
    sketch_base64: str | None = Field(
        None, description="sketch, JSON only: an RGBA overlay (black strokes) composited over the image."
    )
    fp8: bool = Field(
        False, description="Faster, approximate: FP8 matrix multiplies (needs a worker started with CHRONOEDIT_FP8)."
    )
    step_cache: float | None = Field(
        None, gt=0, le=0.5, description="Faster, approximate: FirstBlockCache threshold (e.g. 0.05); off when absent."
    )
    guidance_steps: int | None = Field(
        None,
        ge=1,
        le=100,
        description="Faster, approximate: classifier-free guidance for the first N steps only, the conditional pass "
        "alone after them (e.g. 30 of 50: 80 transformer passes instead of 100). Needs guidance_scale > 1; off when "
        "absent.",
    )
    enhance_prompt: bool | EnhancePolicy | None = Field(
        None,
        description="Rewrite the prompt with the prompt enhancer (a vision-language model that looks at the image) "
        "before the edit; the job records both prompts. `required`: if the enhancer fails or times out the job fails "
        "`enhancer_unavailable`; `best_effort`: it runs with your prompt and says so; `true`: the server's default "
        "policy; `false`: off. Default: the server's setting for the kind. Not for `upscale`.",
    )
    cache: bool = Field(
        False,
        description="With a `seed`: reuse the outputs of an earlier identical job of yours (same input bytes, "
        "parameters and weights) instead of running it; the job then says `cached: true`.",
    )
    image_url: AnyHttpUrl | None = Field(None, description="JSON only: http(s) URL of the input image.")
    image_base64: str | None = Field(None, description="JSON only: the input image, base64-encoded.")
    input_key: str | None = Field(
        None, max_length=200, description="JSON only: the `input_key` of a `POST /v1/uploads` upload, as the image."
    )
    webhook: AnyHttpUrl | None = Field(
        None, description="https URL that receives this job's events (Standard Webhooks, signed with the key's secret)."
    )
    webhook_events: list[EventType] | None = Field(
        None, description=f"Events sent to `webhook`; default the terminal ones {list(TERMINAL_EVENTS)}."
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str, info: ValidationInfo) -> str:
        if not value.strip() and info.data.get("kind", "edit") != "upscale":
            raise ValueError("the prompt is empty")
        return value

    @field_validator("outputs", "webhook_events", mode="before")
    @classmethod
    def _outputs_from_form(cls, value: Any) -> Any:
        """Multipart forms send lists as repeated fields or as one JSON array string; accept both."""
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list) and len(value) == 1 and isinstance(value[0], str) and value[0].startswith("["):
            try:
                return json.loads(value[0])
            except (json.JSONDecodeError, RecursionError) as exc:
                raise ValueError("`outputs` is not a valid JSON array") from exc
        return value

    @field_validator("outputs")
    @classmethod
    def _outputs_unique(cls, value: list[str]) -> list[str]:
        if len(set(value)) != len(value):
            raise ValueError("`outputs` lists a name twice")
        return value


class ParallelLayoutModel(BaseModel):
    """How a worker group splits each job; the degrees multiply to its number of GPUs."""

    guidance: int = Field(description="2: the conditional and unconditional passes run on different GPUs at once.")
    ulysses: int = Field(description="Ulysses sequence-parallel degree (video tokens split, attention by heads).")
    ring: int = Field(description="Ring-attention sequence-parallel degree.")


class GpuMemory(BaseModel):
    """A GPU's memory and what the worker's memory profile admits on it."""

    gpu_free_bytes: int | None = None
    gpu_total_bytes: int | None = None
    memory_profile: str | None = Field(
        None,
        description="What the worker keeps on its GPU: `resident`, `fp8-resident`, `lean`, `fp8-offload` or "
        "`offload` (README, Memory profiles).",
    )
    exact: bool | None = Field(
        None,
        description="Whether jobs that do not ask for `fp8` run the exact bfloat16 path. False under the FP8 "
        "profiles: every job there runs with FP8 weights, and its `ran_with.dtype` says `float8_e4m3fn`.",
    )
    max_area: int | None = Field(
        None,
        description="The largest output area (pixels) of a 5-frame edit this worker admits under its memory profile, "
        "measured at start; larger jobs fail `too_large_for_device` before any GPU work. Null off the GPU.",
    )
    max_reasoning_area: int | None = Field(None, description="The same for a 29-frame temporal-reasoning job.")


class WorkerRank(GpuMemory):
    """One rank (one GPU) of a worker group."""

    rank: int
    device: str


class PromptEnhanceCreate(BaseModel):
    """`POST /v1/prompts/enhance`: an instruction and its image, as JSON (`image_url`, `image_base64` or `input_key`)
    or as a multipart form (the image as the file `image`)."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The instruction (sketch: the object).")
    kind: Literal["edit", "sketch"] = Field("edit", description="The kind of job the prompt is for.")
    image_url: AnyHttpUrl | None = Field(None, description="JSON only: http(s) URL of the image.")
    image_base64: str | None = Field(None, description="JSON only: the image, base64-encoded.")
    input_key: str | None = Field(None, max_length=200, description="JSON only: a `POST /v1/uploads` key.")

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("the prompt is empty")
        return value


class PromptEnhancement(BaseModel):
    """The enhanced prompt, for review before submitting an edit (with it as `prompt`, or with the original and
    `enhance_prompt`, which then reuses this very answer)."""

    object: Literal["prompt_enhancement"] = "prompt_enhancement"
    prompt: str = Field(description="Your instruction, as sent.")
    enhanced_prompt: str = Field(description="The enhancer's rewrite.")
    model_prompt: str = Field(description="What the model would be given: the rewrite in the kind's template.")
    enhancer: str = Field(description="The backend and model that wrote it (`local:...` or `remote:...`).")
    shared: bool = Field(description="Reused from an identical earlier enhancement (same instruction and image).")


class WorkerModel(GpuMemory):
    """What one ready worker, or worker group, holds."""

    name: str
    queues: list[str]
    device: str = Field(description="The worker's device; for a worker group, that of its rank 0.")
    dtype: str
    base_digest: str | None = Field(description="SHA-256 over the model manifest's file digests; None if unverified.")
    loras: dict[str, str] = Field(description="Adapter name -> SHA-256 of its file.")
    modes: list[str] = Field(
        default_factory=lambda: ["standard", "fast"],
        description="The job modes its transformer runs: `standard` and `fast`, or `turbo` on a worker holding a "
        "few-step distilled transformer.",
    )
    transformer_digest: str | None = Field(
        None, description="A turbo worker: SHA-256 over its few-step transformer's manifest (null if unverified)."
    )
    gpus: int | None = Field(None, description="A worker group: how many GPUs run each of its jobs together.")
    layout: ParallelLayoutModel | None = Field(None, description="A worker group: how it splits each job.")
    ranks: list[WorkerRank] | None = Field(None, description="A worker group: each rank's device and GPU memory.")


class ModelList(BaseModel):
    data: list[WorkerModel]


class ErrorBody(BaseModel):
    code: str
    message: str
    request_id: str
    details: list[dict[str, Any]] | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, str] = Field(description="Each part (`redis`, `storage`, `worker`) and what was found.")


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobView] = Field(description="The tenant's jobs, newest first.")
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class DeliveryAttempt(BaseModel):
    at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when no answer came.")
    error: str | None
    duration_ms: int


class Delivery(BaseModel):
    id: str = Field(description="The `webhook-id` header; the same for every attempt and redelivery.")
    event: EventType
    url: str
    status: Literal["pending", "succeeded", "failed", "gone"] = Field(
        description="`gone`: the receiver answered 410 and is not called again; `failed`: retries exhausted."
    )
    created_at: datetime
    next_attempt_at: datetime | None = Field(description="While pending: when the next attempt is due.")
    attempts: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    object: Literal["list"] = "list"
    data: list[Delivery]


class UploadCreated(BaseModel):
    input_key: str = Field(description="Pass as `input_key` to `POST /v1/edits` once the file is uploaded.")
    upload_url: str = Field(description="PUT the image bytes here (presigned S3 URL, or a signed API URL).")
    method: Literal["PUT"] = "PUT"
    expires_at: datetime = Field(description="The upload URL stops working then.")


class Uploaded(BaseModel):
    input_key: str
    bytes: int


class WebhookEvent(BaseModel):
    """The body of every webhook: the Standard Webhooks envelope around the job as `GET /v1/edits/{id}` shows it."""

    type: Literal["edit.queued", "edit.started", "edit.progress", "edit.succeeded", "edit.failed", "edit.canceled"]
    timestamp: datetime = Field(description="When the event happened (the same on every attempt).")
    data: JobView
