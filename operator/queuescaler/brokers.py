"""The brokers side of a tick: Secrets read into addresses, one source per broker, and one
request per broker per tick whatever the number of QueueScalers on it. I/O only."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from queuescaler.core.plan import Failure, expired
from queuescaler.core.redact import redact
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
    combine,
)
from queuescaler.fleet import Key, Scaler
from queuescaler.kube.api import KubeApi
from queuescaler.kube.client import KubeError, NotFound
from queuescaler.metrics import Metrics
from queuescaler.sources.base import ListingClients, Peeking, QueueSource
from queuescaler.sources.registry import SOURCES

log = logging.getLogger(__name__)

Broker = tuple[str, Hashable]
"""A broker kind and the address its Secret gave: equal values share one source."""
SourceFactory = Callable[[Broker], QueueSource]
Reach = Broker | Failure
"""A QueueScaler's way to its broker, or why it has none."""
SOURCE_IDLE_SECONDS = 600.0
"""A source no QueueScaler used for this long is closed (its connections with it)."""
FAILED_SECRET_RETRY_SECONDS = 10.0
"""A missing or bad Secret is read again this soon: fixing it should show quickly."""
ROUND_WAIT_SECONDS = 2.0
"""How long a tick waits for a broker's round before it acts on the QueueScalers of the
brokers that answered (`Brokers.sample`)."""
ROUND_FRESH_SECONDS = 5.0
"""A late round's answer is used by a tick this soon after it came, or not at all (the
ticks that use it run every half second; one kept while nobody asked would be stale)."""
PEEK_BACKOFF_SECONDS = 30.0
"""A broker whose peek failed is left to its regular samples this long: peeks run every
tick, and an endpoint that times out would otherwise hold every tick up by its timeout."""


def connect(broker: Broker) -> QueueSource:
    """The registry's source for a broker kind and address."""
    kind, address = broker
    return SOURCES[kind].connect(address)


class SecretCache:
    """Brokers read from Secrets, shared by every QueueScaler that names the Secret."""

    def __init__(self, kube: KubeApi, refresh_seconds: float) -> None:
        self._kube = kube
        self._refresh = refresh_seconds
        self._entries: dict[tuple[str, str, str], tuple[float, Reach]] = {}

    async def broker(self, namespace: str, name: str, kind: str, now: float) -> Reach:
        """The broker the Secret describes, or why it gives none (redacted)."""
        key = (namespace, name, kind)
        entry = self._entries.get(key)
        if entry is None or expired(entry[0], now, self._refresh):
            reach: Reach
            try:
                data = await self._kube.read_secret(namespace, name)
                reach = (kind, SOURCES[kind].parse_secret(data))
            except NotFound as error:
                reach = Failure("SecretNotFound", error.message)
            except KubeError as error:
                reach = Failure(error.reason, error.message)
            except SourceError as error:
                reach = Failure("BadSecret", error.message)
            except Exception as error:  # any other client failure is this Secret's, not the tick's
                reach = Failure("SecretUnreadable", redact(f"Secret {namespace}/{name}: {error!r}"))
            retry = self._refresh if isinstance(reach, tuple) else FAILED_SECRET_RETRY_SECONDS
            entry = self._entries[key] = (now + min(self._refresh, retry), reach)
        return entry[1]

    def invalidate(self, namespace: str, name: str, kind: str) -> None:
        self._entries.pop((namespace, name, kind), None)

    def prune(self, now: float) -> None:
        """Forget Secrets nobody has asked about for a while (QueueScalers come and go)."""
        for key, (expires, _) in list(self._entries.items()):
            if now >= expires + self._refresh:
                del self._entries[key]


class ClientListings:
    """Each broker's clients, listed at most once per tick, and only when a plan asks.

    The first QueueScaler that may scale down starts the listing of its broker (every scope
    the tick's QueueScalers on that broker use, in one go); the others await it.
    """

    def __init__(
        self, source: Callable[[Broker], QueueSource], queues: dict[Broker, set[QueueRef]]
    ):
        self._source = source
        self._queues = queues
        self._scopes = {broker: {ref.scope for ref in refs} for broker, refs in queues.items()}
        self._listings: dict[Broker, asyncio.Future[Sequence[BrokerClient]]] = {}

    def others(self, broker: Broker, mine: Iterable[QueueRef]) -> frozenset[QueueRef]:
        """The queues this tick's other QueueScalers on `broker` read."""
        return frozenset(self._queues.get(broker, set()) - set(mine))

    async def get(self, broker: Broker, scopes: Iterable[str]) -> Sequence[BrokerClient]:
        listing = self._listings.get(broker)
        if listing is None:
            source = self._source(broker)
            if not isinstance(source, ListingClients):
                raise SourceError(ErrorKind.BAD_CONFIG, "this broker cannot list its clients")
            wanted = self._scopes.get(broker, set()) | set(scopes)
            listing = asyncio.ensure_future(source.clients(wanted))
            self._listings[broker] = listing
        return await asyncio.shield(listing)


@dataclass(frozen=True)
class _Round:
    """One broker's sample in progress (or done, not yet used), and the queues it asks."""

    queues: frozenset[QueueRef]
    task: asyncio.Task[SampleResult | SourceError]
    finished: list[float]
    """When it answered (time.monotonic()), once it has."""


class Brokers:
    """Every broker the operator samples, with one source each, kept across ticks."""

    def __init__(
        self, kube: KubeApi, metrics: Metrics, make_source: SourceFactory = connect,
        secret_refresh_seconds: float = 300.0,
    ) -> None:
        self._metrics = metrics
        self._make_source = make_source
        self._sources: dict[Broker, QueueSource] = {}
        self._peek_resumes: dict[Broker, float] = {}
        """Brokers whose last peek failed are not peeked again before this time."""
        self._used: dict[Broker, float] = {}
        """When each source last served a tick: one idle for long is closed (a rotated
        Secret leaves its old address behind, with its connections)."""
        self._closing: set[asyncio.Task[None]] = set()
        self._rounds: dict[Broker, _Round] = {}
        """Rounds a tick stopped waiting for: they go on, bounded by their source's own
        timeout, and a later tick uses their answer."""
        self._late: set[Broker] = set()
        """Brokers whose last round outlasted the wait: the next is not waited for at all
        (a hung broker would otherwise hold every tick it starts a round in)."""
        self.secrets = SecretCache(kube, secret_refresh_seconds)

    def source(self, broker: Broker) -> QueueSource:
        source = self._sources.get(broker)
        if source is None:
            source = self._sources[broker] = self._make_source(broker)
        self._used[broker] = time.monotonic()
        return source

    def prune(self, now: float) -> None:
        """Close the sources no QueueScaler used lately; forget Secrets nobody reads."""
        self.secrets.prune(now)
        idle = time.monotonic() - SOURCE_IDLE_SECONDS
        for broker, used in list(self._used.items()):
            if used < idle:
                del self._used[broker]
                source = self._sources.pop(broker, None)
                late = self._rounds.pop(broker, None)
                if late is not None:
                    late.task.cancel()
                self._late.discard(broker)
                if source is not None:
                    task = asyncio.ensure_future(_close(source))
                    self._closing.add(task)
                    task.add_done_callback(self._closing.discard)

    def can_list_clients(self, broker: Broker) -> bool:
        return _lists_clients(type(self.source(broker)))

    async def reaches(self, scalers: Iterable[Scaler], now: float) -> dict[Key, Reach]:
        """Each QueueScaler's broker (or why there is none), one Secret read each."""
        found: dict[Key, Reach] = {}
        for scaler in scalers:
            if scaler.spec is not None:
                source = scaler.spec.source
                found[scaler.key] = await self.secrets.broker(
                    scaler.namespace, source.secret_ref.name, source.broker, now
                )
        return found

    async def sample(
        self, scalers: Iterable[Scaler], reaches: Mapping[Key, Reach],
        wait: float = ROUND_WAIT_SECONDS,
    ) -> dict[Broker, SampleResult | SourceError]:
        """One request per broker: every queue any of `scalers` on it watches.

        Waits at most `wait` seconds for the rounds it starts; a broker still answering
        then is absent from the result (its QueueScalers wait for a later tick, which uses
        the round's answer once it came), so one slow or hung broker delays its own
        QueueScalers only. A round still running is not started again.
        """
        wanted = _wanted(scalers, reaches)

        async def one(
            broker: Broker, queues: set[QueueRef], finished: list[float]
        ) -> SampleResult | SourceError:
            started = time.perf_counter()
            try:
                result: SampleResult | SourceError = await self.source(broker).sample(queues)
            except SourceError as error:
                result = error
            except Exception as error:  # a source bug must not look like a healthy broker
                result = SourceError(ErrorKind.BAD_RESPONSE, redact(repr(error)))
            took = time.perf_counter() - started
            self._metrics.sampled(took, result)
            if took > wait:
                self._late.add(broker)
            else:
                self._late.discard(broker)
            finished.append(time.monotonic())
            return result

        # A round nobody asks for any more goes (a QueueScaler deleted or moved while its
        # broker was answering): its answer, used later, would be a stale one.
        for broker in [b for b in self._rounds if b not in wanted]:
            self._rounds.pop(broker).task.cancel()
        started: list[asyncio.Task[SampleResult | SourceError]] = []
        for broker, queues in wanted.items():
            going = self._rounds.get(broker)
            if going is not None and not going.task.done():
                continue  # still answering: not asked twice
            if going is not None and _usable(going, queues):
                continue  # answered since the last tick, for these queues
            finished: list[float] = []
            task = asyncio.create_task(one(broker, queues, finished))
            self._rounds[broker] = _Round(frozenset(queues), task, finished)
            if broker not in self._late:
                started.append(task)
        if started:
            await asyncio.wait(started, timeout=wait)
        answers: dict[Broker, SampleResult | SourceError] = {}
        for broker, queues in wanted.items():
            going = self._rounds[broker]
            if not going.task.done():
                continue
            del self._rounds[broker]
            # Cancelled, or begun before a queue was added (its answer would call the new
            # queue missing): asked again next tick.
            if _usable(going, queues):
                answers[broker] = going.task.result()
        return answers

    async def peek(self, scalers: Sequence[Scaler], now: float) -> dict[Key, QueueSample]:
        """Live counts (no statistics delay) of every queue of `scalers`, by QueueScaler,
        from the sources that can peek; a failed peek is left to the regular sample."""
        if not scalers:
            return {}
        reaches = await self.reaches(scalers, now)
        for broker, resumes in self._peek_resumes.items():
            # a clock that stepped back: one back-off from the step (ending it at once let a
            # clock stepping back and forth peek a failing broker at every step: review 38)
            self._peek_resumes[broker] = min(resumes, now + PEEK_BACKOFF_SECONDS)
        wanted = {
            broker: queues for broker, queues in _wanted(scalers, reaches).items()
            if self._peek_resumes.get(broker, -math.inf) <= now
        }

        async def one(broker: Broker, queues: set[QueueRef]) -> SampleResult:
            try:
                source = self.source(broker)
                if not isinstance(source, Peeking):
                    return {}
                return await source.peek(queues)
            except Exception as error:  # the regular sample reports the broker's failures
                log.debug("peek failed: %s", redact(repr(error)))
                self._peek_resumes[broker] = now + PEEK_BACKOFF_SECONDS
                return {}

        brokers = list(wanted)
        results = await asyncio.gather(*(one(b, wanted[b]) for b in brokers))
        peeked = dict(zip(brokers, results, strict=True))
        live: dict[Key, QueueSample] = {}
        for scaler in scalers:
            # Only through its own Secret's broker: a queue of the same name another
            # QueueScaler peeked (on another broker, or with credentials this one lacks)
            # is none of its business.
            reach = reaches.get(scaler.key)
            result = peeked.get(reach) if isinstance(reach, tuple) else None
            if not result:
                continue
            parts = [result.get(ref) for ref in scaler.queues()]
            if parts and all(isinstance(p, QueueSample) for p in parts):
                live[scaler.key] = combine(p for p in parts if isinstance(p, QueueSample))
        return live

    def listings(self, scalers: Iterable[Scaler], reaches: Mapping[Key, Reach]) -> ClientListings:
        """This tick's client listings, each covering every scope its broker serves."""
        return ClientListings(self.source, _wanted(scalers, reaches))

    async def close(self) -> None:
        rounds, self._rounds = self._rounds, {}
        for going in rounds.values():
            going.task.cancel()
        await asyncio.gather(*(going.task for going in rounds.values()), return_exceptions=True)
        sources, self._sources = self._sources, {}
        for source in sources.values():
            await _close(source)
        await asyncio.gather(*self._closing, return_exceptions=True)


def _usable(going: _Round, queues: set[QueueRef]) -> bool:
    """Whether a finished round answers this tick: not cancelled, about every queue, and
    lately (`ROUND_FRESH_SECONDS`)."""
    return (
        not going.task.cancelled() and queues <= going.queues and bool(going.finished)
        and time.monotonic() - going.finished[0] <= ROUND_FRESH_SECONDS
    )


async def _close(source: QueueSource) -> None:
    try:
        await source.close()
    except Exception:  # closing is best effort
        log.debug("closing a source failed", exc_info=True)


@functools.cache
def _lists_clients(kind: type) -> bool:
    """Whether a source class can list clients (asked per QueueScaler per tick: a protocol's
    isinstance check reads its methods every time)."""
    return issubclass(kind, ListingClients)


def _wanted(scalers: Iterable[Scaler], reaches: Mapping[Key, Reach]) -> dict[Broker, set[QueueRef]]:
    wanted: dict[Broker, set[QueueRef]] = defaultdict(set)
    for scaler in scalers:
        reach = reaches.get(scaler.key)
        if isinstance(reach, tuple):
            wanted[reach].update(scaler.queues())
    return wanted
