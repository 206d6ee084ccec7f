"""Response bodies of the client-contract routes: job lists, webhook deliveries, uploads."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from service.jobs import EventType
from service.schemas import JobView


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
