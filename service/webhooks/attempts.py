"""One attempt of one webhook delivery, the Standard Webhooks way.

Each attempt POSTs the same body with the same `webhook-id` (the delivery id), a fresh `webhook-timestamp` and
`webhook-signature` (`v1,` HMAC-SHA256, signed by the `standardwebhooks` library with the key's `whsec_` secret).
Only 2xx is success; redirects are not followed; `410 Gone` stops; anything else retries after the configured
schedule with +-20% jitter, then the delivery is `failed`. The target's addresses are checked again at each attempt.
"""

from __future__ import annotations

import json
import random
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
from standardwebhooks import Webhook

from service.jobs.batches import BatchCounts, BatchRecord
from service.jobs.record import JobRecord
from service.jobs.view import render_batch, render_job
from service.keys import KeyStore
from service.metrics import WebhookOutcome, record_webhook_delivery
from service.netguard import AddressForbidden, UnresolvableHost, check_public_host, pinned
from service.settings import ApiSettings
from service.storage import Storage
from service.webhooks.deliveries import Deliveries

USER_AGENT = "chronoedit-webhooks/1"
REFUSED = "refused: "
"""How an attempt that the address policy stopped is recorded (no request was sent)."""


class WebhookUrlError(Exception):
    """A webhook URL the service must not call."""


def check_webhook_url(url: str, allow_hosts: list[str]) -> str:
    """https only (http only for allow-listed hosts), and no non-public address unless allow-listed; returns the
    checked address, the one to connect to."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.scheme != "https" and not (parts.scheme == "http" and host in allow_hosts):
        raise WebhookUrlError("a webhook URL must be https")
    try:
        return check_public_host(host, allow_hosts)
    except (AddressForbidden, UnresolvableHost) as exc:
        raise WebhookUrlError(str(exc)) from exc


def _outcome(status_code: int | None, error: str | None) -> WebhookOutcome:
    if status_code is not None:
        return "success" if 200 <= status_code < 300 else "http_error"
    return "refused" if error is not None and error.startswith(REFUSED) else "network_error"


class Deliverer:
    """Runs one attempt of one delivery and records it."""

    def __init__(self, settings: ApiSettings, deliveries: Deliveries, keys: KeyStore, storage: Storage) -> None:
        self.settings = settings
        self.deliveries = deliveries
        self.api_keys = keys
        self.storage = storage

    def attempt(self, subject_id: str, delivery_id: str) -> None:
        delivery = self.deliveries.get(subject_id, delivery_id)
        if delivery is None or delivery["status"] != "pending":
            if delivery is not None:
                self.deliveries.save(delivery, None)
            return
        delivery.setdefault("body", self._body(delivery))
        started = time.time()
        status_code, error = self._post(delivery)
        delivery["attempts"].append(
            {
                "at": started,
                "status_code": status_code,
                "error": error,
                "duration_ms": round((time.time() - started) * 1000),
            }
        )
        self.deliveries.save(delivery, self._next(delivery, status_code))
        record_webhook_delivery(_outcome(status_code, error))

    def _next(self, delivery: dict[str, Any], status_code: int | None) -> float | None:
        """Set the outcome on `delivery`; returns when to try again, or None when it is settled."""
        if status_code is not None and 200 <= status_code < 300:
            delivery["status"] = "succeeded"
            return None
        if status_code == 410:
            delivery["status"] = "gone"
            return None
        done = delivery.get("round_attempts", 0)
        delivery["round_attempts"] = done + 1
        schedule = self.settings.webhook_retry_schedule_seconds
        if done >= len(schedule):
            delivery["status"] = "failed"
            return None
        due = time.time() + schedule[done] * random.uniform(0.8, 1.2)  # noqa: S311 - jitter, not security
        delivery["next_attempt_at"] = due
        return due

    def _body(self, delivery: dict[str, Any]) -> str:
        """The subject as `GET` showed it when the event happened, in the Standard Webhooks envelope; frozen at the
        first attempt so every retry sends the same bytes."""
        payload = {
            "type": f"{delivery['object']}.{delivery['event']}",
            "timestamp": datetime.fromtimestamp(delivery["created_at"], tz=UTC).isoformat(),
            "data": self._data(delivery),
        }
        return json.dumps(payload, separators=(",", ":"))

    def _data(self, delivery: dict[str, Any]) -> dict[str, Any]:
        snapshot = delivery["snapshot"]
        if delivery["object"] == "batch":
            counts = BatchCounts.model_validate(snapshot["counts"])
            batch = BatchRecord.model_validate(snapshot["batch"])
            return render_batch(batch, counts, self.settings.output_retention_seconds).model_dump(mode="json")
        base = self.settings.public_base_url or f"http://{self.settings.host}:{self.settings.port}/"
        retention = self.settings.output_retention_seconds
        job = JobRecord.model_validate(snapshot)
        return render_job(job, self.storage, base, self.settings.url_ttl_seconds, retention).model_dump(mode="json")

    def _secret(self, key_id: str | None) -> str | None:
        if key_id is not None:
            record = self.api_keys.get(key_id)
            return record.webhook_secret if record else None
        default = self.settings.default_webhook_secret
        return default.get_secret_value() if default else None

    def _post(self, delivery: dict[str, Any]) -> tuple[int | None, str | None]:
        snapshot = delivery["snapshot"]
        secret = self._secret((snapshot["batch"] if delivery["object"] == "batch" else snapshot).get("key_id"))
        if secret is None:
            return None, "no webhook secret: the job's API key is gone and no default secret is set"
        try:
            target = pinned(delivery["url"], check_webhook_url(delivery["url"], self.settings.webhook_allow_hosts))
        except WebhookUrlError as exc:
            return None, f"{REFUSED}{exc}"
        now = datetime.now(tz=UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": delivery["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": Webhook(secret).sign(delivery["id"], now, delivery["body"]),
        }
        try:
            with httpx.Client(timeout=self.settings.webhook_timeout_seconds, follow_redirects=False) as client:
                response = client.post(
                    target.url,
                    content=delivery["body"].encode(),
                    headers={**headers, **target.headers},
                    extensions=target.extensions,
                )
        except httpx.HTTPError as exc:
            return None, f"{exc.__class__.__name__}: {exc}"[:300]
        return response.status_code, None if response.is_success else f"answered {response.status_code}"
