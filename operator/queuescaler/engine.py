"""The tick: sample every broker once, plan every due QueueScaler, carry the plans out.

The I/O shell around `core.plan`: it gathers observations (Secrets, broker answers, live
counts, replica counts, pods and clients), asks the planner what to do, and does it (pod
marks, `/scale`, status, Events, metrics). Every rule is the planner's.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from queuescaler.core import plan as planner
from queuescaler.core.plan import Event, Failure, Observations, Plan, WorkerLook
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
from queuescaler.core.workers import DELETION_COST, Marks, Pod
from queuescaler.fleet import Fleet, ReplicaCache, Scaler
from queuescaler.kube.client import GROUP, KIND, VERSION, KubeClient, KubeError, NotFound, ObjectRef
from queuescaler.metrics import Metrics
from queuescaler.sources.base import ListingClients, Peeking, QueueSource
from queuescaler.sources.registry import SOURCES

log = logging.getLogger(__name__)

Broker = tuple[str, Hashable]
"""A broker kind and the address its Secret gave: equal values share one source."""
SourceFactory = Callable[[Broker], QueueSource]
Reach = Broker | Failure
"""A QueueScaler's way to its broker, or why it has none."""
FAILED_SECRET_RETRY_SECONDS = 10.0
"""A missing or bad Secret is read again this soon: fixing it should show quickly."""
SELECTOR_REFRESH_SECONDS = 300.0
"""A target's pod selector is read from its /scale again after this long (it rarely moves)."""


def connect(broker: Broker) -> QueueSource:
    """The registry's source for a broker kind and address."""
    kind, address = broker
    return SOURCES[kind].connect(address)


@dataclass(frozen=True)
class EngineSettings:
    """How often the engine looks, and how much it may write."""

    tick_seconds: float = 1.0
    """How often the loop wakes; each QueueScaler is sampled at its own pollingIntervalSeconds."""
    fast_path: bool = True
    """Peek (live counts) at pools at zero every tick, so a burst wakes them at once, and at
    pools scaled moments ago, whose management counts still predate the scale."""
    fast_path_budget: int = 500
    """Pools at rest peeked per tick at most (about 0.1 s of broker time)."""
    plan: planner.PlanSettings = dataclasses.field(default_factory=planner.PlanSettings)
    """The knobs the planner's rules read (status refresh, statistics lag)."""
    secret_refresh_seconds: float = 300.0
    """Secrets are read again after this long (they are never watched: `get` by name only)."""
    concurrency: int = 32
    """QueueScalers acted on at once (each patch or write is one apiserver request)."""


class SecretCache:
    """Brokers read from Secrets, shared by every QueueScaler that names the Secret."""

    def __init__(self, kube: KubeClient, refresh_seconds: float) -> None:
        self._kube = kube
        self._refresh = refresh_seconds
        self._entries: dict[tuple[str, str, str], tuple[float, Reach]] = {}

    async def broker(self, namespace: str, name: str, kind: str, now: float) -> Reach:
        """The broker the Secret describes, or why it gives none (redacted)."""
        key = (namespace, name, kind)
        entry = self._entries.get(key)
        if entry is None or now >= entry[0]:
            reach: Reach
            try:
                data = await self._kube.read_secret(namespace, name)
                reach = (kind, SOURCES[kind].parse_secret(data))
                expires = now + self._refresh
            except NotFound as error:
                reach = Failure("SecretNotFound", error.message)
                expires = now + min(self._refresh, FAILED_SECRET_RETRY_SECONDS)
            except KubeError as error:
                reach = Failure(error.reason, error.message)
                expires = now + min(self._refresh, FAILED_SECRET_RETRY_SECONDS)
            except SourceError as error:
                reach = Failure("BadSecret", error.message)
                expires = now + min(self._refresh, FAILED_SECRET_RETRY_SECONDS)
            entry = self._entries[key] = (expires, reach)
        return entry[1]

    def invalidate(self, namespace: str, name: str, kind: str) -> None:
        self._entries.pop((namespace, name, kind), None)


class ClientListings:
    """Each broker's clients, listed at most once per tick, and only when a plan asks.

    The first QueueScaler that may scale down starts the listing of its broker (every scope
    the tick's QueueScalers on that broker use, in one go); the others await it.
    """

    def __init__(self, source: Callable[[Broker], QueueSource]) -> None:
        self._source = source
        self.scopes: dict[Broker, set[str]] = defaultdict(set)
        self._listings: dict[Broker, asyncio.Future[Sequence[BrokerClient]]] = {}

    async def get(self, broker: Broker, scopes: Iterable[str]) -> Sequence[BrokerClient]:
        listing = self._listings.get(broker)
        if listing is None:
            source = self._source(broker)
            assert isinstance(source, ListingClients)
            wanted = self.scopes[broker] | set(scopes)
            listing = asyncio.ensure_future(source.clients(wanted))
            self._listings[broker] = listing
        return await asyncio.shield(listing)


class Engine:
    """Runs ticks until stopped. One per operator process."""

    def __init__(
        self,
        kube: KubeClient,
        fleet: Fleet,
        replicas: ReplicaCache,
        metrics: Metrics,
        make_source: SourceFactory = connect,
        settings: EngineSettings = EngineSettings(),
        clock: Callable[[], float] = time.time,
        leading: Callable[[], bool] = lambda: True,
    ) -> None:
        self.kube = kube
        self.fleet = fleet
        self.replicas = replicas
        self.metrics = metrics
        self.settings = settings
        self._make_source = make_source
        self._sources: dict[Broker, QueueSource] = {}
        self._secrets = SecretCache(kube, settings.secret_refresh_seconds)
        self._clock = clock
        self.leading = leading
        """Whether this replica acts now (leader election); a standby only watches."""
        self._gate = asyncio.Semaphore(settings.concurrency)
        self._selectors: dict[tuple[str, str, str, str], tuple[float, str]] = {}
        self._peek_turn = 0
        self.ticks = 0
        """Ticks completed: the operator is ready once the first one ran."""

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every `tick_seconds` until `stop` is set; a failing tick is logged, never fatal."""
        while not stop.is_set():
            started = self._clock()
            if self.leading():
                try:
                    await self.tick(started)
                except Exception:  # the loop must outlive any one bad tick
                    log.exception("tick failed")
            self.ticks += 1
            elapsed = self._clock() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self.settings.tick_seconds - elapsed))
        await self.close()

    async def close(self) -> None:
        sources, self._sources = self._sources, {}
        for source in sources.values():
            try:
                await source.close()
            except Exception:  # closing is best effort
                log.debug("closing a source failed", exc_info=True)

    def forget(self, scaler: Scaler) -> None:
        """A QueueScaler was deleted: drop its metrics."""
        self.metrics.forget(scaler.namespace, scaler.name)

    async def release(self, scaler: Scaler) -> None:
        """A QueueScaler was deleted: drop its metrics and, when leading, clear its pod marks."""
        self.forget(scaler)
        if self.leading():
            try:
                await self._clear_marks(scaler)
            except Exception:  # best effort: a stale mark only orders a later scale-down
                log.warning("marks of %s/%s not cleared", scaler.namespace, scaler.name,
                            exc_info=True)

    # --- one tick ---

    async def tick(self, now: float) -> None:
        started = time.perf_counter()
        scalers = list(self.fleet)
        due = [s for s in scalers if s.next_due <= now]
        live: dict[tuple[str, str], QueueSample] = {}
        if self.settings.fast_path:
            resting = self._budgeted([
                s for s in scalers
                if s.next_due > now and planner.at_rest_at_zero(s.spec, s.memory.current_replicas)
            ])
            settling = [
                s for s in due
                if planner.settling(s.memory.state, now, self.settings.plan)
                or s.memory.stats_pending
            ]
            live = await self._peek([*resting, *settling], now)
            due.extend(
                s for s in resting
                if s.key in live and s.spec is not None and planner.wakes(s.spec, live[s.key])
            )
        if due:
            for scaler in due:
                interval = scaler.spec.polling_interval_seconds if scaler.spec else 60
                scaler.next_due = planner.next_due(now, interval)
            reaches = await self._reaches(due, now)
            answers = await self._sample(reaches)
            listings = ClientListings(self._source)
            for scaler in due:
                reach = reaches.get(scaler.key)
                if isinstance(reach, tuple) and scaler.spec is not None:
                    listings.scopes[reach].update(ref.scope for ref in scaler.queues())
            await asyncio.gather(*(
                self._guarded(self._act(
                    s, reaches.get(s.key), answers, live.get(s.key), now, listings
                )) for s in due
            ))
        self.metrics.ticked(time.perf_counter() - started)

    def _budgeted(self, resting: list[Scaler]) -> list[Scaler]:
        """At most `fast_path_budget` pools at rest per tick, taking turns.

        A passive declare costs the broker about 0.2 ms; beyond the budget each pool at
        zero is still peeked every len/budget ticks, and sampled at its interval anyway.
        """
        budget = self.settings.fast_path_budget
        if len(resting) <= budget:
            return resting
        start = self._peek_turn % len(resting)
        self._peek_turn = start + budget
        return (resting + resting)[start:start + budget]

    async def _guarded(self, work: Awaitable[None]) -> None:
        async with self._gate:
            try:
                await work
            except Exception:  # one QueueScaler's failure never stops the others
                log.exception("acting on a QueueScaler failed")

    async def _reaches(self, scalers: Iterable[Scaler], now: float) -> dict[tuple[str, str], Reach]:
        """Each QueueScaler's broker (or why there is none), one Secret read each."""
        found: dict[tuple[str, str], Reach] = {}
        for scaler in scalers:
            if scaler.spec is not None:
                source = scaler.spec.source
                found[scaler.key] = await self._secrets.broker(
                    scaler.namespace, source.secret_ref.name, source.broker, now
                )
        return found

    def _source(self, broker: Broker) -> QueueSource:
        source = self._sources.get(broker)
        if source is None:
            source = self._sources[broker] = self._make_source(broker)
        return source

    def _wanted(
        self, scalers: Iterable[Scaler], reaches: Mapping[tuple[str, str], Reach]
    ) -> dict[Broker, set[QueueRef]]:
        wanted: dict[Broker, set[QueueRef]] = defaultdict(set)
        for scaler in scalers:
            reach = reaches.get(scaler.key)
            if isinstance(reach, tuple):
                wanted[reach].update(scaler.queues())
        return wanted

    async def _sample(
        self, reaches: Mapping[tuple[str, str], Reach]
    ) -> dict[Broker, SampleResult | SourceError]:
        """One request per broker: every queue any due QueueScaler on it watches."""
        scalers = [s for key in reaches if (s := self.fleet.get(*key)) is not None]
        wanted = self._wanted(scalers, reaches)

        async def one(broker: Broker, queues: set[QueueRef]) -> SampleResult | SourceError:
            started = time.perf_counter()
            try:
                result: SampleResult | SourceError = await self._source(broker).sample(queues)
            except SourceError as error:
                result = error
            except Exception as error:  # a source bug must not look like a healthy broker
                result = SourceError(ErrorKind.BAD_RESPONSE, redact(repr(error)))
            self.metrics.sampled(time.perf_counter() - started, result)
            return result

        brokers = list(wanted)
        results = await asyncio.gather(*(one(b, wanted[b]) for b in brokers))
        return dict(zip(brokers, results, strict=True))

    async def _peek(self, scalers: list[Scaler], now: float) -> dict[tuple[str, str], QueueSample]:
        """Live counts (no statistics delay) of every queue of `scalers`, by QueueScaler,
        from the sources that can peek; a failed peek is left to the regular sample."""
        if not scalers:
            return {}
        reaches = await self._reaches(scalers, now)
        peeked: dict[QueueRef, QueueSample] = {}
        for broker, queues in self._wanted(scalers, reaches).items():
            source = self._source(broker)
            if not isinstance(source, Peeking):
                continue
            try:
                result = await source.peek(queues)
            except SourceError:
                continue
            peeked.update((ref, s) for ref, s in result.items() if isinstance(s, QueueSample))
        live: dict[tuple[str, str], QueueSample] = {}
        for scaler in scalers:
            parts = [peeked.get(ref) for ref in scaler.queues()]
            if parts and all(p is not None for p in parts):
                live[scaler.key] = combine(p for p in parts if p is not None)
        return live

    # --- acting on one QueueScaler ---

    async def _act(
        self,
        scaler: Scaler,
        reach: Reach | None,
        answers: Mapping[Broker, SampleResult | SourceError],
        live: QueueSample | None,
        now: float,
        listings: ClientListings,
    ) -> None:
        seen = Observations(now=now, live=live)
        broker = reach if isinstance(reach, tuple) else None
        if scaler.spec is not None:
            result = answers.get(broker) if broker is not None else None
            answer = (
                {ref: result.get(ref) for ref in scaler.queues()}
                if isinstance(result, Mapping) else result
            )
            seen = dataclasses.replace(
                seen,
                broker=reach if isinstance(reach, Failure) else None,
                answer=answer,
                current=await self._current_replicas(scaler),
                can_list_workers=broker is not None
                and isinstance(self._source(broker), ListingClients),
            )
        made = self._plan(scaler, seen)
        if made.wants_workers and broker is not None:
            seen = dataclasses.replace(seen, workers=await self._look(scaler, broker, listings))
            made = self._plan(scaler, seen)
        await self._execute(scaler, seen, made)

    def _plan(self, scaler: Scaler, seen: Observations) -> Plan:
        error = scaler.spec_error
        return planner.plan(
            scaler.spec, scaler.memory, seen, generation=scaler.generation,
            settings=self.settings.plan, spec_problem=str(error) if error else None,
            name=scaler.name,
        )

    async def _execute(self, scaler: Scaler, seen: Observations, made: Plan) -> None:
        if made.reread_secret and scaler.spec is not None:
            source = scaler.spec.source
            self._secrets.invalidate(scaler.namespace, source.secret_ref.name, source.broker)
        if made.clear_marks:
            await self._clear_marks(scaler)
        if made.marks:
            await self._mark(scaler, seen.workers, made.marks)
        if made.scale_to is not None:
            failure = await self._scale(scaler, made.scale_to)
            if failure is not None:
                made = self._plan(scaler, dataclasses.replace(seen, scale_failure=failure))
        for kind in made.sample_failures:
            self.metrics.sample_failed(kind)
        marks = scaler.memory.marks
        scaler.memory = dataclasses.replace(made.memory, marks=marks)
        if made.log:
            log.info("%s/%s %s", scaler.namespace, scaler.name, made.log)
        if made.scale_to is not None and made.previous_replicas is not None:
            self.metrics.scaled(scaler, "up" if made.scale_to > made.previous_replicas else "down")
        self.metrics.record(scaler, made)
        await self._post(scaler, made.events)
        if made.status is not None and await self._write_status(scaler, made, seen.now):
            await self._post(scaler, made.status_events)
        await self._post(scaler, made.scale_events)

    # --- reading ---

    async def _current_replicas(self, scaler: Scaler) -> int | Failure:
        assert scaler.spec is not None
        target = scaler.spec.scale_target_ref
        if planner.watched_target(target):
            cached = self.replicas.get(scaler.namespace, target.name)
            if cached is not None:
                return cached
        try:
            return await self.kube.read_replicas(scaler.namespace, target)
        except NotFound as error:
            return Failure("TargetNotFound", error.message)
        except KubeError as error:
            return Failure(error.reason, error.message)

    async def _selector(self, scaler: Scaler, now: float) -> str:
        """The target's pod selector, from its /scale (cached: selectors rarely change)."""
        assert scaler.spec is not None
        target = scaler.spec.scale_target_ref
        key = (scaler.namespace, target.api_version, target.kind, target.name)
        cached = self._selectors.get(key)
        if cached is not None and now < cached[0]:
            return cached[1]
        selector = await self.kube.read_selector(scaler.namespace, target)
        self._selectors[key] = (now + SELECTOR_REFRESH_SECONDS, selector)
        return selector

    async def _look(self, scaler: Scaler, broker: Broker, listings: ClientListings) -> WorkerLook:
        """The target's pods and the broker's clients; or why they could not be listed."""
        scopes = {ref.scope for ref in scaler.queues()}

        async def pods() -> list[Pod]:
            selector = await self._selector(scaler, self._clock())
            return await self.kube.list_pods(scaler.namespace, selector)

        found, clients = await asyncio.gather(
            pods(), listings.get(broker, scopes), return_exceptions=True
        )
        if isinstance(found, KubeError):
            return WorkerLook(problem=f"the target's pods could not be listed: {found.message}")
        if isinstance(clients, SourceError):
            return WorkerLook(
                problem=f"the broker's consumers could not be listed: {clients.message}"
            )
        for outcome in (found, clients):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancellation and the like
                return WorkerLook(problem=redact(f"listing failed: {outcome!r}"))
        assert not isinstance(found, BaseException) and not isinstance(clients, BaseException)
        return WorkerLook(tuple(found), tuple(clients))

    # --- writing ---

    async def _mark(self, scaler: Scaler, look: WorkerLook | None, marks: Marks) -> None:
        """Set pod-deletion-cost on the pods whose mark changed, so idle pods go first."""
        present = {pod.name for pod in look.pods} if look is not None else set()
        kept = {pod: cost for pod, cost in scaler.memory.marks.items() if pod in present}
        scaler.memory = dataclasses.replace(scaler.memory, marks=kept)
        await self._annotate(scaler, marks)

    async def _clear_marks(self, scaler: Scaler) -> None:
        """Remove the marks this QueueScaler set (best effort; a failed listing falls back to
        the pods remembered)."""
        pods: Sequence[Pod] = ()
        if scaler.spec is not None:
            with contextlib.suppress(KubeError):
                pods = await self.kube.list_pods(
                    scaler.namespace, await self._selector(scaler, self._clock())
                )
        await self._annotate(scaler, planner.clearing_marks(pods, scaler.memory, scaler.name))
        scaler.memory = dataclasses.replace(scaler.memory, marks={})

    async def _annotate(self, scaler: Scaler, marks: Marks) -> None:
        if not marks:
            return
        results = await asyncio.gather(
            *(self.kube.annotate_pod(scaler.namespace, pod, annotations)
              for pod, annotations in marks.items()),
            return_exceptions=True,
        )
        held = dict(scaler.memory.marks)
        for (pod, wanted), result in zip(marks.items(), results, strict=True):
            if isinstance(result, NotFound):
                held.pop(pod, None)  # gone already
            elif isinstance(result, KubeError):
                log.warning("pod %s/%s not marked: %s", scaler.namespace, pod, result.message)
            elif isinstance(result, BaseException):
                raise result
            elif (cost := wanted.get(DELETION_COST)) is None:
                held.pop(pod, None)
            else:
                held[pod] = cost
        scaler.memory = dataclasses.replace(scaler.memory, marks=held)

    async def _scale(self, scaler: Scaler, replicas: int) -> Failure | None:
        """Patch /scale; None when it took, else why not."""
        assert scaler.spec is not None
        target = scaler.spec.scale_target_ref
        try:
            await self.kube.scale(scaler.namespace, target, replicas)
        except KubeError as error:
            return Failure(error.reason, error.message)
        if planner.watched_target(target):
            self.replicas.set(scaler.namespace, target.name, replicas)
        return None

    async def _write_status(self, scaler: Scaler, made: Plan, now: float) -> bool:
        """Write the plan's status; True when it was written."""
        assert made.status is not None
        try:
            await self.kube.patch_status(scaler.namespace, scaler.name, made.status)
        except NotFound:
            self.fleet.remove(scaler.namespace, scaler.name)  # deleted meanwhile: gone
            return False
        except KubeError as error:
            log.warning("status of %s/%s not written: %s", scaler.namespace, scaler.name,
                        error.message)
            return False
        scaler.memory = dataclasses.replace(
            scaler.memory, status=made.status, status_written_at=now
        )
        return True

    async def _post(self, scaler: Scaler, events: Sequence[Event]) -> None:
        for event in events:
            about = ObjectRef(f"{GROUP}/{VERSION}", KIND, scaler.namespace, scaler.name, scaler.uid)
            await self._emit(about, event.type, event.reason, event.message)
            if event.on_target and scaler.spec is not None:
                target = scaler.spec.scale_target_ref
                on_target = ObjectRef(target.api_version, target.kind, scaler.namespace,
                                      target.name)
                await self._emit(on_target, event.type, event.reason,
                                 f"queuescaler {scaler.name} {event.message}")

    async def _emit(self, about: ObjectRef, event_type: str, reason: str, message: str) -> None:
        try:
            await self.kube.emit_event(about, event_type, reason, message)
        except KubeError as error:
            log.warning("event not posted: %s", error.message)
