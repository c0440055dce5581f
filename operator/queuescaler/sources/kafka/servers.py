"""Bootstrap server lists, as a spec or a Secret writes them. Pure.

`host:port`, `[v6-address]:port`, or a host alone (Kafka's port 9092); several separated by
commas (Kafka's own `bootstrap.servers`) or given as a list. Normalized to `host:port` strings,
sorted and without repeats: two lists that name the same servers are one cluster.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from typing import Final

DEFAULT_PORT: Final = 9092
MAX_SERVERS: Final = 32
MAX_SERVER_LENGTH: Final = 261
"""A 253-character host name, a colon and a five-digit port, with brackets to spare."""
_LABEL: Final = r"[A-Za-z0-9_]([A-Za-z0-9_\-]*[A-Za-z0-9_])?"
_HOST: Final = re.compile(rf"^{_LABEL}(\.{_LABEL})*\.?$")


class BadServer(ValueError):
    """A server that is not `host[:port]`; the message names no value (it may come from a
    Secret) but says which one in the list."""


def split(text: str) -> list[str]:
    """The servers of a comma-separated list (spaces around them ignored, empty ones kept so
    they are refused)."""
    return [part.strip() for part in text.split(",")]


def server(text: str) -> tuple[str, int]:
    """(host, port) of one server; BadServer when it is not one."""
    if not text or len(text) > MAX_SERVER_LENGTH or not text.isascii():
        raise BadServer("is not host:port")
    if "://" in text:
        raise BadServer("is a URL: give host:port, without a scheme")
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise BadServer("has an unclosed [")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadServer("is not an IPv6 address inside [ ]") from None
        port_text = rest.removeprefix(":") if rest else ""
        if rest and not rest.startswith(":"):
            raise BadServer("is not [address]:port")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
        if ":" in host:
            raise BadServer("is an IPv6 address: write it in [ ] with its port, [::1]:9092")
        if not _HOST.match(host) or len(host) > 253:
            raise BadServer("has no valid host name")
    if not port_text:
        return host, DEFAULT_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise BadServer("has no valid port (1 to 65535)")
    return host, int(port_text)


def normalize(servers: Iterable[str], where: str) -> tuple[str, ...]:
    """The servers as sorted, distinct `host:port` strings; BadServer saying which one
    (`where` names the field or key, never the value)."""
    found: set[str] = set()
    given = list(servers)
    if not given:
        raise BadServer(f"{where} names no server")
    if len(given) > MAX_SERVERS:
        raise BadServer(f"{where} names more than {MAX_SERVERS} servers")
    for index, text in enumerate(given):
        try:
            host, port = server(text.strip() if isinstance(text, str) else "")
        except BadServer as error:
            raise BadServer(f"{where}: server {index + 1} {error}") from None
        found.add(f"[{host}]:{port}" if ":" in host else f"{host.lower()}:{port}")
    return tuple(sorted(found))


def address(text: str) -> tuple[str, int]:
    """(host, port) of a normalized server."""
    return server(text)
