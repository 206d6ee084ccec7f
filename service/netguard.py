"""The outbound address guard shared by `image_url` fetches and webhook deliveries.

A URL the service calls on a client's behalf must not reach loopback, private, link-local (cloud metadata) or other
non-public addresses, unless an allow-list setting names the host or the address. The check runs on the addresses
the name resolves to, so a public name pointing at 127.0.0.1 is refused too; webhook deliveries check again at
delivery time, after a fresh DNS resolution.
"""

from __future__ import annotations

import ipaddress
import socket


class AddressForbidden(Exception):
    """The host resolves to a non-public address that no allow-list names."""


class UnresolvableHost(Exception):
    """The host name does not resolve."""


def check_public_host(host: str, allow_hosts: list[str]) -> None:
    """Raise `AddressForbidden` or `UnresolvableHost` unless every address of `host` is public or allow-listed."""
    if host in allow_hosts:
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"cannot resolve {host!r}") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if str(address) in allow_hosts:
            continue
        if not address.is_global:
            raise AddressForbidden(f"{host} resolves to {address}, a non-public address")
