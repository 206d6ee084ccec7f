"""Torch-free pieces of the client contract: the address guard, webhook URL rules, request fingerprints, `Prefer`,
and the Standard Webhooks signature as the `standardwebhooks` library checks it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from service.api.idempotency import fingerprint
from service.api.submit import parse_prefer
from service.keys import new_webhook_secret
from service.netguard import AddressForbidden, check_public_host
from service.webhooks.attempts import WebhookUrlError, check_webhook_url


@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "192.168.0.1", "169.254.169.254", "::1", "localhost"])
def test_non_public_addresses_are_refused(host: str) -> None:
    with pytest.raises(AddressForbidden):
        check_public_host(host, [])


def test_allow_list_names_hosts_or_addresses() -> None:
    check_public_host("127.0.0.1", ["127.0.0.1"])
    check_public_host("localhost", ["127.0.0.1", "::1"])  # resolved addresses are matched too


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        ("https://127.0.0.1/hook", ["127.0.0.1"]),
        ("http://127.0.0.1:9/hook", ["127.0.0.1"]),
    ],
)
def test_webhook_urls_allowed(url: str, allowed: list[str]) -> None:
    check_webhook_url(url, allowed)


@pytest.mark.parametrize("url", ["http://127.0.0.1/hook", "https://10.0.0.1/x", "https://[::1]/x", "ftp://a.b/c"])
def test_webhook_urls_refused(url: str) -> None:
    with pytest.raises(WebhookUrlError):
        check_webhook_url(url, [])


def test_fingerprint_covers_fields_and_bytes() -> None:
    base = fingerprint("POST /v1/edits", {"prompt": "a", "seed": 1}, b"img")
    assert base == fingerprint("POST /v1/edits", {"seed": 1, "prompt": "a"}, b"img"), "field order does not matter"
    assert base != fingerprint("POST /v1/edits", {"prompt": "a", "seed": 2}, b"img")
    assert base != fingerprint("POST /v1/edits", {"prompt": "a", "seed": 1}, b"img2")
    assert base != fingerprint("POST /v1/uploads", {"prompt": "a", "seed": 1}, b"img")


@pytest.mark.parametrize(
    ("header", "seconds"),
    [(None, 0), ("", 0), ("wait=5", 5), ("respond-async, wait=10", 10), ("wait=600", 60), ("handling=lenient", 0)],
)
def test_prefer_wait(header: str | None, seconds: int) -> None:
    assert parse_prefer(header, 60) == seconds


def test_generated_secrets_verify_with_the_library() -> None:
    secret = new_webhook_secret()
    assert secret.startswith("whsec_")
    now = datetime.now(tz=UTC)
    body = '{"type":"edit.succeeded"}'
    signature = Webhook(secret).sign("msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature}
    assert Webhook(secret).verify(body, headers) == {"type": "edit.succeeded"}


def test_every_code_the_api_can_answer_is_documented() -> None:
    from service.api.errors import ERROR_CODES, FIELD_CODES, STATUS_CODES

    assert set(FIELD_CODES.values()) <= set(ERROR_CODES), "field errors map to documented codes"
    assert set(STATUS_CODES.values()) <= set(ERROR_CODES)
