"""Webhooks: what the service POSTs to a job's `webhook` (documented, never served), and each job's deliveries with
their attempts, which a client may ask to deliver again."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from service.api.batch_schemas import BatchWebhookEvent
from service.api.deps import Caller, ServicesDep
from service.api.errors import ApiError, not_found
from service.api.routes.responses import AUTH_ERRORS, ERR
from service.api.schemas import Delivery, DeliveryList, WebhookEvent

router = APIRouter()

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

    @app.webhooks.post(
        "batch-event",
        summary="A batch finished, delivered once to the batch's `webhook` URL",
        description="Sent when the batch is closed and every item is finished (succeeded, failed or canceled; item "
        "failures do not fail the batch), with the counts. Signed and retried as edit events are.",
        tags=["webhooks"],
    )
    def batch_event(body: BatchWebhookEvent) -> None:
        """Only documents the request; the service never serves this path."""


@router.get(
    "/v1/edits/{job_id}/deliveries",
    response_model=DeliveryList,
    responses=AUTH_ERRORS,
    summary="List an edit's webhook deliveries and their attempts",
    tags=["webhooks"],
)
def list_deliveries(job_id: str, caller: Caller, services: ServicesDep) -> DeliveryList:
    services.manager.live(caller.tenant, job_id)
    return DeliveryList(data=[_delivery(d) for d in services.deliveries.for_subject(job_id)])


@router.post(
    "/v1/edits/{job_id}/deliveries/{delivery_id}/retry",
    status_code=202,
    response_model=Delivery,
    responses={**AUTH_ERRORS, 409: ERR},
    summary="Deliver a webhook again (same `webhook-id`)",
    tags=["webhooks"],
)
def retry_delivery(job_id: str, delivery_id: str, caller: Caller, services: ServicesDep) -> Delivery:
    services.manager.live(caller.tenant, job_id)
    delivery = services.deliveries.get(job_id, delivery_id)
    if delivery is None:
        raise not_found(f"delivery {delivery_id}")
    if delivery["status"] == "pending":
        raise ApiError(409, "delivery_pending", f"delivery {delivery_id} is still being attempted")
    return _delivery(services.deliveries.redeliver(delivery))


def _delivery(record: dict[str, Any]) -> Delivery:
    pending = record["status"] == "pending"
    return Delivery.model_validate({**record, "next_attempt_at": record["next_attempt_at"] if pending else None})
