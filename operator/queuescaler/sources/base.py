"""The one narrow interface every broker source satisfies, and the capabilities it may add.

A source turns a broker into `QueueSample`s. The operator keeps one source per broker
(brokers are identified by the hashable configuration their Secret describes, so every
QueueScaler on one broker shares it) and asks it, once per tick, about every queue any of
those QueueScalers watches. Like KEDA's `PushScaler` extending `Scaler`, a source may
also offer a live peek (counts with no statistics delay) and a listing of the clients
that hold messages; the engine asks `isinstance(source, Peeking)` before using either.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol, runtime_checkable

from queuescaler.core.sample import BrokerClient, QueueRef, SampleResult


@runtime_checkable
class QueueSource(Protocol):
    """A broker's queues as samples. One instance per broker; async; never raises per queue."""

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Sample every queue in one round trip where the broker allows it.

        Raises SourceError when the broker as a whole cannot be sampled (unreachable,
        auth, timeout); a single missing queue is reported in the result instead.
        """
        ...

    async def close(self) -> None:
        """Release connections; the source is not used afterwards."""
        ...


@runtime_checkable
class Peeking(Protocol):
    """A source that can read live counts (ready, consumers) with no statistics delay."""

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        """Live ready and consumer counts; no rates, and in-flight work is not seen."""
        ...


@runtime_checkable
class ListingClients(Protocol):
    """A source that can tell which clients hold messages (busy-worker protection)."""

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        """The clients in `scopes` that consume or hold messages, with their in-flight counts
        and the queues they consume (None where the broker cannot say).

        A few requests per call; raises SourceError when the broker cannot list them (no
        management API, no permission to see other users' clients, ...).
        """
        ...
