"""Request and response bodies of the batch routes (`/v1/batches`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import AnyHttpUrl, BaseModel, ConfigDict, Field, field_validator

from service.api.schemas import MAX_PROMPT_CHARS, MAX_SEED
from service.jobs.record import EnhancePolicy, JobStatus, Kind, OutputName
from service.jobs.view import BatchView, ErrorView, FileView

ITEM_OVERRIDES = (
    "prompt",
    "negative_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "flow_shift",
    "width",
    "height",
    "scale",
    "outputs",
    "fps",
    "output_size",
)
"""Parameters a batch item may set for itself; everything else is the batch's."""


class BatchItemCreate(BaseModel):
    """One item of a batch: its image (`image_url` or the `input_key` of a `POST /v1/uploads` upload), an optional
    client `reference` and `metadata`, and any of the batch's parameters to override for this item."""

    model_config = ConfigDict(extra="forbid")

    reference: str | None = Field(
        None,
        min_length=1,
        max_length=200,
        description="Your id for the item (a SKU, a file hash); unique in the batch, so a retried append never "
        "creates the item twice.",
    )
    image_url: AnyHttpUrl | None = Field(None, description="http(s) URL of the input image.")
    input_key: str | None = Field(None, max_length=200, description="The `input_key` of a direct upload.")
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Up to 16 keys of your own (each value up to 500 characters), returned as is."
    )
    prompt: str | None = Field(None, description="Overrides the batch's `prompt`.")
    negative_prompt: str | None = Field(None, description="Overrides the batch's `negative_prompt`.")
    seed: int | None = Field(None, description="Overrides the batch's `seed`.")
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    flow_shift: float | None = None
    width: int | None = None
    height: int | None = None
    scale: float | None = None
    outputs: list[OutputName] | None = None
    fps: int | None = None
    output_size: Literal["model", "input"] | None = None

    @field_validator("metadata")
    @classmethod
    def _small_metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 16 or any(len(k) > 40 or len(v) > 500 for k, v in value.items()):
            raise ValueError("at most 16 keys of up to 40 characters, values up to 500 characters")
        return value


class BatchDefaults(BaseModel):
    """The top-level fields of `POST /v1/batches`: the parameters every item shares (as in `POST /v1/edits`)."""

    model_config = ConfigDict(extra="forbid")

    kind: Kind = Field("edit", description="`edit`, `upscale` or `sketch`, for every item.")
    mode: Literal["standard", "fast"] | None = Field(
        None, description="`standard` or `fast`, for every item; default as for edits."
    )
    prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="The instruction (items may override it).")
    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS)
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="One seed for every item (needed for the result cache)."
    )
    num_inference_steps: int | None = Field(None, ge=1, le=100)
    guidance_scale: float | None = Field(None, ge=1.0, le=20.0)
    flow_shift: float | None = Field(None, ge=0.5, le=20.0)
    width: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    height: int | None = Field(None, ge=16, le=4096, multiple_of=16)
    scale: float | None = Field(None, gt=1, le=8, description="upscale: output = input size x scale.")
    outputs: list[OutputName] = Field(default=["image"], min_length=1, max_length=2)
    fps: int = Field(16, ge=1, le=60)
    output_size: Literal["model", "input"] = "model"
    fp8: bool = False
    step_cache: float | None = Field(None, gt=0, le=0.5)
    guidance_steps: int | None = Field(None, ge=1, le=100, description="As in `POST /v1/edits`.")
    enhance_prompt: bool | EnhancePolicy | None = Field(
        None,
        description="Prompt enhancement for every item, as in `POST /v1/edits`; items with the same instruction and "
        "image bytes share one enhancement.",
    )
    cache: bool = Field(
        True,
        description="Items with a seed reuse the outputs of identical earlier jobs of yours (input bytes, parameters, "
        "weights) without GPU work: re-running a catalog after fixing 3 images runs 3 jobs.",
    )
    webhook: AnyHttpUrl | None = Field(
        None, description="https URL that receives one `batch.completed` event when every item is finished."
    )
    open: bool = Field(
        False,
        description="Keep the batch open for `POST /v1/batches/{id}/items` until `POST /v1/batches/{id}/close`; "
        "otherwise it closes after this request's items.",
    )


ItemOrAnything = BatchItemCreate | Any
"""What an entry of `items` may be: a `BatchItemCreate`, or anything else, which the answer reports as `rejected`
(items are validated one by one, so an invalid one never refuses the request)."""


class BatchCreate(BatchDefaults):
    """`POST /v1/batches`: shared parameters and the first items. Each item is validated on its own: invalid ones
    are reported in the answer and the others still run."""

    items: list[ItemOrAnything] = Field(
        default_factory=list,
        description="The items (up to the server's `CHRONOEDIT_MAX_BATCH_ITEMS` per request), each a "
        "`BatchItemCreate`; an entry that is not one is answered `rejected` with its error.",
    )


class BatchItemsAppend(BaseModel):
    """`POST /v1/batches/{id}/items`: more items for an open batch."""

    model_config = ConfigDict(extra="forbid")

    items: list[ItemOrAnything] = Field(
        description="Each a `BatchItemCreate`; an entry that is not one is answered `rejected` with its error."
    )


class BatchItemResult(BaseModel):
    index: int = Field(description="The item's position in this request's `items`.")
    reference: str | None
    status: Literal["accepted", "duplicate", "rejected"] = Field(
        description="`duplicate`: the batch already has an item with this reference (`job_id` is that item)."
    )
    job_id: str | None
    error: ErrorView | None = None


class BatchSubmission(BaseModel):
    batch: BatchView
    accepted: int
    duplicates: int
    rejected: int
    items: list[BatchItemResult]


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchView] = Field(description="The tenant's batches, newest first.")
    next_cursor: str | None


class BatchItemView(BaseModel):
    job_id: str
    index: int
    reference: str | None
    metadata: dict[str, str]
    status: JobStatus
    outputs: dict[OutputName, FileView]
    error: ErrorView | None
    cached: bool
    cached_from: str | None
    finished_at: datetime | None


class BatchItemList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchItemView]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")


class BatchWebhookEvent(BaseModel):
    """The body of a batch's webhook: the Standard Webhooks envelope around the batch as `GET /v1/batches/{id}`
    shows it, sent once, when every item is finished."""

    type: Literal["batch.completed"]
    timestamp: datetime
    data: BatchView
