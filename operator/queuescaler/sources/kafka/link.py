"""One connection to one broker, and what it needs to be opened and spoken to."""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queuescaler.core.sample import ErrorKind, SourceError
from queuescaler.sources.kafka.errors import redacted
from queuescaler.sources.kafka.protocol import pick
from queuescaler.sources.kafka.secret import KafkaBroker

Connect = Callable[..., Awaitable[Any]]
"""aiokafka's `create_conn(host, port, **options)`, or a stand-in with its signature."""



class _Prepared:
    """A request struct built for a version the broker serves: aiokafka's `send` asks its
    request to prepare itself for the connection's versions, and this one already is."""

    def __init__(self, request: Any) -> None:
        self._request = request

    def prepare(self, versions: object) -> Any:
        return self._request


@dataclass
class Link:
    """One connection to one broker, with the API versions it serves."""

    conn: Any
    host: str
    port: int
    failed: SourceError | None = None
    """Why it was closed (a request not answered in time): every request still waiting on it
    fails with this, not with 'connection closed'."""

    @property
    def versions(self) -> Mapping[int, tuple[int, int]]:
        # Read by aiokafka's connect (its ApiVersions exchange); not public, but the only copy.
        found = getattr(self.conn, "_versions", None)
        return found if isinstance(found, Mapping) else {}

    def alive(self) -> bool:
        return self.failed is None and bool(self.conn.connected())

    async def send(self, request: Any) -> Any:
        return await self.conn.send(_Prepared(request))

    def close(self) -> None:
        self.conn.close()


def api_version(link: Link, api_key: int, spoken: Sequence[int], what: str) -> int:
    version = pick(link.versions, api_key, spoken)
    if version is None:
        raise redacted(
            ErrorKind.BAD_RESPONSE,
            f"the broker at {link.host}:{link.port} serves no {what} version this operator "
            f"speaks ({', '.join(map(str, spoken))})",
        )
    return version


def ssl_context(broker: KafkaBroker) -> ssl.SSLContext | None:
    if not broker.tls:
        return None
    return ssl.create_default_context(cadata=broker.ca_cert) if broker.ca_cert else (
        ssl.create_default_context())

