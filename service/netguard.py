"""The outbound address guard shared by `image_url` fetches and webhook deliveries.

A URL the service calls on a client's behalf must not reach loopback, private, link-local (cloud metadata) or other
non-public addresses, unless an allow-list setting names the host or the address. The check runs on the addresses
the name resolves to, so a public name pointing at 127.0.0.1 is refused too; webhook deliveries check again at
delivery time, after a fresh DNS resolution.

The connection then goes to the address that was checked, not to a second resolution of the name (a name whose
answer changes in between, DNS rebinding, would otherwise reach an address nobody checked): `pinned` rewrites the
URL to that address and keeps the name for the `Host` header and for TLS (httpx's `sni_hostname` extension, which
also verifies the certificate against the name).
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit


class AddressForbidden(Exception):
    """The host resolves to a non-public address that no allow-list names."""


class UnresolvableHost(Exception):
    """The host name does not resolve."""


def check_public_host(host: str, allow_hosts: list[str]) -> str:
    """The address to connect to for `host`: raise `AddressForbidden` or `UnresolvableHost` unless every address it
    resolves to is public or allow-listed."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise UnresolvableHost(f"cannot resolve {host!r}") from exc
    addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if host not in allow_hosts:
        for address in addresses:
            if str(address) not in allow_hosts and not address.is_global:
                raise AddressForbidden(f"{host} resolves to {address}, a non-public address")
    if not addresses:
        raise UnresolvableHost(f"{host!r} resolves to no address")
    return str(addresses[0])


@dataclass(frozen=True)
class Pinned:
    """A request to a checked address: the URL naming it, and what keeps the original name (`Host`, TLS)."""

    url: str
    headers: dict[str, str]
    extensions: dict[str, Any]


def pinned(url: str, address: str) -> Pinned:
    """`url` with its host replaced by `address`, which `check_public_host` returned for that host."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    literal = f"[{address}]" if ":" in address else address
    userinfo, _, hostport = parts.netloc.rpartition("@")
    netloc = (f"{userinfo}@" if userinfo else "") + (f"{literal}:{parts.port}" if parts.port else literal)
    headers = {"Host": hostport}
    extensions = {"sni_hostname": host} if parts.scheme == "https" else {}
    return Pinned(urlunsplit(parts._replace(netloc=netloc)), headers, extensions)
