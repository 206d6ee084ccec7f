"""The outbound address guard: the address that was checked is the one connected to, so a name whose DNS answer
changes between the check and the connection (rebinding) never reaches a private address."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from service.api.errors import ApiError
from service.api.inputs import fetch_image
from service.netguard import check_public_host, pinned
from service.settings import ApiSettings
from tests.receiver import Receiver, start_receiver

PUBLIC = "1.1.1.1"
"""A global address: where the name points when it is checked."""


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    served, server = start_receiver()
    served.files["/secret.png"] = b"internal data"
    yield served
    server.shutdown()


@pytest.fixture
def rebinding(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """`rebind.test` answers a public address the first time and loopback afterwards, as a hostile DNS server would;
    every other name resolves as usual. Returns the answers given, in order."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, *args, **kwargs)
        address = PUBLIC if not answers else "127.0.0.1"
        answers.append(address)
        return [(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (address, 0))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return answers


def test_the_checked_address_is_the_one_connected_to(receiver: Receiver, rebinding: list[str]) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    settings = ApiSettings(fetch_timeout_seconds=1, dev_mode=True)
    with pytest.raises(ApiError) as refused:
        asyncio.run(fetch_image(f"http://rebind.test:{port}/secret.png", settings))
    assert refused.value.code == "image_fetch_failed", "the public address it was checked at does not answer"
    assert rebinding == [PUBLIC], "the name was resolved once, by the check"
    assert receiver.requests("/secret.png") == [] and receiver.received == [], "loopback was never reached"


def test_an_allowed_host_is_fetched_at_its_checked_address(receiver: Receiver) -> None:
    port = receiver.base_url.rsplit(":", 1)[1]
    settings = ApiSettings(fetch_allow_hosts=["localhost"], dev_mode=True)
    assert asyncio.run(fetch_image(f"http://localhost:{port}/secret.png", settings)) == b"internal data"


EXAMPLE = "93.184.216.34"
PINNED_CASES = [
    ("https://shop.example/hooks/a?x=1", EXAMPLE, f"https://{EXAMPLE}/hooks/a?x=1", "shop.example", "shop.example"),
    ("http://shop.example:8080/h", EXAMPLE, f"http://{EXAMPLE}:8080/h", "shop.example:8080", None),
    ("https://shop.example/h", "2606:2800:220:1::1", "https://[2606:2800:220:1::1]/h", "shop.example", "shop.example"),
    ("https://u:pw@shop.example/h", EXAMPLE, f"https://u:pw@{EXAMPLE}/h", "shop.example", "shop.example"),
]


@pytest.mark.parametrize(("url", "address", "expected_url", "host", "sni"), PINNED_CASES)
def test_pinned_keeps_the_name_for_host_and_tls(
    url: str, address: str, expected_url: str, host: str, sni: str | None
) -> None:
    target = pinned(url, address)
    assert (target.url, target.headers["Host"], target.extensions.get("sni_hostname")) == (expected_url, host, sni)


def test_every_address_of_a_name_is_checked() -> None:
    assert check_public_host("127.0.0.1", ["127.0.0.1"]) == "127.0.0.1", "allow-listed: checked and returned"
