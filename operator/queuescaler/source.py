"""The one narrow interface every broker source satisfies, and its closed set of errors.

A source turns a broker into `QueueSample`s. The operator keeps one source per broker
(brokers are identified by `BrokerConnection`, so every QueueScaler on one broker shares
it) and asks it, once per tick, about every queue any of those QueueScalers watches.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from queuescaler.sample import QueueSample


class ErrorKind(enum.StrEnum):
    """Why sampling failed: becomes a condition reason and a metric label, so it stays closed."""

    UNREACHABLE = "unreachable"
    TIMEOUT = "timeout"
    AUTH = "auth"
    VHOST_NOT_FOUND = "vhost-not-found"
    QUEUE_NOT_FOUND = "queue-not-found"
    BAD_RESPONSE = "bad-response"
    STATS_PENDING = "stats-pending"
    """A new queue the management API lists by name only: its statistics are not out yet."""
    BAD_CONFIG = "bad-config"


class SourceError(Exception):
    """A sampling failure of a known kind, with a message already free of credentials."""

    def __init__(self, kind: ErrorKind, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class QueueRef:
    """A queue on a broker: the vhost matters, two vhosts may hold queues of one name."""

    vhost: str
    name: str


@dataclass(frozen=True, slots=True)
class BrokerConnection:
    """How to reach one broker, read from a Secret. Equal connections share one source.

    The credentials live in the URLs; `repr` never shows them (see `redact`).
    """

    amqp_url: str
    management_url: str | None = None
    ca_cert: str | None = field(default=None, repr=False)
    client_cert: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        from queuescaler.redact import redact  # local: redact is tiny and pure

        management = redact(self.management_url) if self.management_url else None
        amqp = redact(self.amqp_url)
        return f"BrokerConnection(amqp_url={amqp!r}, management_url={management!r})"


SampleResult = Mapping[QueueRef, QueueSample | SourceError]
"""Per queue: its sample, or why it has none (a missing queue fails alone)."""


@dataclass(frozen=True, slots=True)
class ClientConnection:
    """One client connected to the broker, as far as telling busy workers apart needs.

    Counts add up over the connection's channels. `client_name` is the name the client
    gave its connection (workers set it to their pod's name); `peer_host` the address it
    connects from.
    """

    vhost: str
    client_name: str | None
    peer_host: str | None
    consumers: int
    """Consumers on the connection's channels."""
    unacked: int
    """Messages delivered on its channels and not yet acknowledged."""


class QueueSource(Protocol):
    """A broker's queues as samples. One instance per broker; async; never raises per queue."""

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Sample every queue in one round trip where the broker allows it.

        Raises SourceError when the broker as a whole cannot be sampled (unreachable,
        auth, timeout); a single missing queue is reported in the result instead.
        """
        ...

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        """The fast path: live ready and consumer counts with no statistics delay (no rates)."""
        ...

    async def clients(self, vhosts: Collection[str]) -> Sequence[ClientConnection]:
        """The connections in `vhosts` that consume or hold messages, with their in-flight counts.

        At most a couple of requests per call; raises SourceError when the broker cannot
        list them (no management API, no permission to see other users' connections, ...).
        """
        ...

    async def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...
