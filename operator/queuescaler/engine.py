"""The tick: sample every broker once, decide for every QueueScaler on it, act, report.

This is the imperative shell around `decide()`. It owns no policy: it gathers inputs
(samples, current replica counts, the remembered state), calls the pure core, and
carries out the answer (a `/scale` patch, a status write, Events, metrics).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from queuescaler.core.decision import Decision, decide, next_state
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
from queuescaler.core.status import (
    Condition,
    TickOutcome,
    build_status,
    camel,
    conditions_for,
    needs_write,
)
from queuescaler.core.workers import CONDITION as WORKERS_CONDITION
from queuescaler.core.workers import (
    DELETION_COST,
    Marks,
    Pod,
    WorkerReport,
    cleared_marks,
    deletion_marks,
    match_workers,
    workers_condition,
)
from queuescaler.fleet import Fleet, ReplicaCache, Scaler
from queuescaler.kube.client import GROUP, KIND, VERSION, KubeClient, KubeError, NotFound, ObjectRef
from queuescaler.metrics import Metrics
from queuescaler.sources.base import ListingClients, Peeking, QueueSource
from queuescaler.sources.registry import SOURCES

log = logging.getLogger("queuescaler.engine")

Broker = tuple[str, Hashable]
"""A broker kind and the address its Secret gave: equal values share one source."""
SourceFactory = Callable[[Broker], QueueSource]
Connection = Broker | KubeError | SourceError
"""A QueueScaler's way to its broker, or why it has none."""
FAILED_SECRET_RETRY_SECONDS = 10.0
"""A missing or bad Secret is read again this soon: fixing it should show quickly."""
GOOD_WHEN_TRUE = {"Ready", "BrokerReachable", "TargetFound"}


class Announcement(NamedTuple):
    """The Events of a scale, posted after the status that records it."""

    reason: str
    message: str
    target: ObjectRef
SELECTOR_REFRESH_SECONDS = 300.0
"""A target's pod selector is read from its /scale again after this long (it rarely moves)."""


@dataclass(frozen=True)
class EngineSettings:
    """How often the engine looks, and how much it may write."""

    tick_seconds: float = 1.0
    """How often the loop wakes; each QueueScaler is sampled at its own pollingIntervalSeconds."""
    fast_path: bool = True
    """Peek (AMQP passive declare) at pools at zero every tick, so a burst wakes them at once,
    and at pools scaled moments ago, whose management counts still predate the scale."""
    fast_path_budget: int = 500
    """Pools at rest peeked per tick at most (about 0.1 s of broker time)."""
    stats_lag_seconds: float = 10.0
    """How long after a scale the management API's counts are distrusted (its statistics
    interval is 5 s by default; a burst shows there 2 to 6 s after it was published)."""
    status_refresh_seconds: float = 30.0
    """Backlog and rates alone are rewritten to status at most this often (metrics are live)."""
    secret_refresh_seconds: float = 300.0
    """Secrets are read again after this long (they are never watched: `get` by name only)."""
    concurrency: int = 32
    """QueueScalers acted on at once (each patch or write is one apiserver request)."""


class SecretCache:
    """Broker connections read from Secrets, shared by every QueueScaler that names the Secret."""

    def __init__(self, kube: KubeClient, refresh_seconds: float) -> None:
        self._kube = kube
        self._refresh = refresh_seconds
        self._entries: dict[tuple[str, str, str], tuple[float, Connection]] = {}

    async def connection(self, namespace: str, name: str, kind: str, now: float) -> Broker:
        """The Secret's connection; raises KubeError or SourceError(BAD_CONFIG), redacted."""
        key = (namespace, name, kind)
        entry = self._entries.get(key)
        if entry is None or now >= entry[0]:
            result: Connection
            try:
                data = await self._kube.read_secret(namespace, name)
                result = (kind, SOURCES[kind].parse_secret(data))
                expires = now + self._refresh
            except (KubeError, SourceError) as error:
                result = error
                expires = now + min(self._refresh, FAILED_SECRET_RETRY_SECONDS)
            entry = self._entries[key] = (expires, result)
        if isinstance(entry[1], tuple):
            return entry[1]
        raise entry[1]

    def invalidate(self, namespace: str, name: str, kind: str) -> None:
        self._entries.pop((namespace, name, kind), None)


@dataclass(frozen=True)
class WorkerLook:
    """One look at a target's pods and the broker's consumers, on a tick that may scale down."""

    pods: Sequence[Pod]
    report: WorkerReport | None
    """None when the pods or the connections could not be listed (see `problem`)."""
    problem: str | None = None


class ClientListings:
    """Each broker's consuming connections, listed at most once per tick, and only when asked.

    The first QueueScaler that may scale down starts the listing of its broker (every vhost
    the tick's protected QueueScalers on that broker use, in one go); the others await it.
    """

    def __init__(
        self,
        source: Callable[[Broker], QueueSource],
        vhosts: Mapping[Broker, set[str]],
    ) -> None:
        self._source = source
        self._vhosts = vhosts
        self._listings: dict[Broker, asyncio.Future[Sequence[BrokerClient]]] = {}

    async def get(self, connection: Broker, vhost: str) -> Sequence[BrokerClient]:
        listing = self._listings.get(connection)
        if listing is None:
            vhosts = self._vhosts.get(connection) or {vhost}
            source = self._source(connection)
            if not isinstance(source, ListingClients):
                raise SourceError(ErrorKind.BAD_CONFIG, "this broker cannot list its clients")
            listing = asyncio.ensure_future(source.clients(vhosts))
            self._listings[connection] = listing
        return await asyncio.shield(listing)


class Engine:
    """Runs ticks until stopped. One per operator process."""

    def __init__(
        self,
        kube: KubeClient,
        fleet: Fleet,
        replicas: ReplicaCache,
        metrics: Metrics,
        make_source: SourceFactory,
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
        self.ticks = 0
        self._peek_turn = 0
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
            resting = self._budgeted(
                [s for s in scalers if s.next_due > now and _at_rest_at_zero(s)]
            )
            settling = [s for s in due if self._settling(s, now) or s.stats_pending]
            live = await self._peek([*resting, *settling], now)
            due.extend(
                s for s in resting
                if s.key in live and s.spec is not None
                and live[s.key].backlog >= s.spec.activation.messages
            )
        if due:
            for scaler in due:
                interval = scaler.spec.polling_interval_seconds if scaler.spec else 60
                # Aligned to the interval, so QueueScalers on one broker share one request.
                scaler.next_due = (math.floor(now / interval) + 1) * interval
            connections = await self._connections(due, now)
            samples = await self._sample(connections, now)
            listings = ClientListings(self._source, self._protected_vhosts(due, connections))
            await asyncio.gather(
                *(self._guarded(self._act(
                    s, connections.get(s.key), samples, live.get(s.key), now, listings
                )) for s in due)
            )
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

    def _settling(self, scaler: Scaler, now: float) -> bool:
        """Scaled moments ago: the management API's counts still predate the change."""
        last = scaler.state.last_scale_time
        return last is not None and now - last < self.settings.stats_lag_seconds

    def _protected_vhosts(
        self, scalers: Iterable[Scaler], connections: Mapping[tuple[str, str], Connection]
    ) -> dict[Broker, set[str]]:
        """Per broker, the vhosts of the QueueScalers that protect busy workers."""
        wanted: dict[Broker, set[str]] = defaultdict(set)
        for scaler in scalers:
            spec, connection = scaler.spec, connections.get(scaler.key)
            if (
                spec is not None and isinstance(connection, tuple)
                and spec.behavior.scale_down.protect_busy_workers and not spec.paused
            ):
                wanted[connection].update(ref.scope for ref in spec.source.queues)
        return wanted

    async def _guarded(self, work: Awaitable[None]) -> None:
        async with self._gate:
            try:
                await work
            except Exception:  # one QueueScaler's failure never stops the others
                log.exception("acting on a QueueScaler failed")

    async def _connections(
        self, scalers: Iterable[Scaler], now: float
    ) -> dict[tuple[str, str], Connection]:
        """Each QueueScaler's broker connection (or why there is none), one Secret read each."""
        found: dict[tuple[str, str], Connection] = {}
        for scaler in scalers:
            if scaler.spec is None:
                continue
            secret = scaler.spec.source.secret_ref.name
            kind = scaler.spec.source.broker
            try:
                found[scaler.key] = await self._secrets.connection(
                    scaler.namespace, secret, kind, now
                )
            except (KubeError, SourceError) as error:
                found[scaler.key] = error
        return found

    def _source(self, connection: Broker) -> QueueSource:
        source = self._sources.get(connection)
        if source is None:
            source = self._sources[connection] = self._make_source(connection)
        return source

    async def _sample(
        self, connections: dict[tuple[str, str], Connection],
        now: float,
    ) -> dict[Broker, SampleResult | SourceError]:
        """One request per broker: every queue any due QueueScaler on it watches."""
        wanted: dict[Broker, set[QueueRef]] = defaultdict(set)
        for key, connection in connections.items():
            scaler = self.fleet.get(*key)
            if isinstance(connection, tuple) and scaler is not None:
                wanted[connection].update(scaler.queues())

        async def one(
            connection: Broker, queues: set[QueueRef]
        ) -> SampleResult | SourceError:
            started = time.perf_counter()
            try:
                result: SampleResult | SourceError = await self._source(connection).sample(queues)
            except SourceError as error:
                result = error
            except Exception as error:  # a source bug must not look like a healthy broker
                result = SourceError(ErrorKind.BAD_RESPONSE, redact(repr(error)))
            self.metrics.sampled(time.perf_counter() - started, result)
            return result

        brokers = list(wanted)
        results = await asyncio.gather(*(one(b, wanted[b]) for b in brokers))
        return dict(zip(brokers, results, strict=True))

    async def _peek(
        self, scalers: list[Scaler], now: float
    ) -> dict[tuple[str, str], QueueSample]:
        """Live ready and consumer counts (AMQP passive declares, no statistics delay).

        Asked only for pools at rest at zero (so a burst wakes them at once) and for pools
        scaled moments ago (whose management counts still predate the scale).
        """
        if not scalers:
            return {}
        connections = await self._connections(scalers, now)
        wanted: dict[Broker, set[QueueRef]] = defaultdict(set)
        for scaler in scalers:
            connection = connections.get(scaler.key)
            if isinstance(connection, tuple):
                wanted[connection].update(scaler.queues())
        peeked: dict[QueueRef, QueueSample] = {}
        for connection, queues in wanted.items():
            source = self._source(connection)
            if not isinstance(source, Peeking):
                continue
            try:
                result = await source.peek(queues)
            except SourceError:
                continue  # the regular sample reports broker failures
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
        connection: Connection | None,
        samples: dict[Broker, SampleResult | SourceError],
        peeked: QueueSample | None,
        now: float,
        listings: ClientListings | None = None,
    ) -> None:
        spec = scaler.spec
        if spec is None:
            error = scaler.spec_error
            message = str(error) if error else "the spec could not be read"
            conditions = [Condition("Ready", False, "InvalidSpec", message)]
            self.metrics.observe(scaler, None, None, None, conditions)
            await self._report(scaler, now, TickOutcome(
                scaler.generation, True, None, None, None, scaler.state, conditions,
            ), decision=None)
            return
        config_error: tuple[str, str] | None = None
        broker_error: tuple[str, str] | None = None
        sample: QueueSample | None = None
        if isinstance(connection, KubeError):
            missing = isinstance(connection, NotFound)
            config_error = ("SecretNotFound" if missing else camel(connection.reason),
                            connection.message)
            self.metrics.sample_failed("secret")
        elif isinstance(connection, SourceError):
            config_error = ("BadSecret", connection.message)
            self.metrics.sample_failed(str(connection.kind))
        elif connection is not None:
            sample, broker_error = self._sample_for(scaler, samples.get(connection))
            if broker_error and broker_error[0] == "Auth":
                # Credentials may have been rotated: read the Secret again next time.
                self._secrets.invalidate(
                    scaler.namespace, spec.source.secret_ref.name, spec.source.broker
                )
        if peeked is not None and (sample is not None or scaler.stats_pending
                                   or scaler.current_replicas == 0):
            sample = _with_live_counts(sample, peeked)
        elif sample is None and broker_error is None and config_error is None:
            broker_error = ("StatsPending", "the queue's statistics are not out yet")
        target_error: tuple[str, str] | None = None
        current: int | None = None
        try:
            current = await self._current_replicas(scaler)
        except KubeError as error:
            missing = isinstance(error, NotFound)
            target_error = ("TargetNotFound" if missing else camel(error.reason), error.message)
        scaler.current_replicas = current
        decision: Decision | None = None
        announcement: Announcement | None = None
        state = scaler.state
        look: WorkerLook | None = None
        protect = spec.behavior.scale_down.protect_busy_workers
        if not protect and scaler.marks:
            await self._clear_marks(scaler)  # protection was turned off: its marks go too
        if current is not None:
            decision = decide(spec, sample, current, state, now)
            if protect and decision.replicas < current and listings is not None:
                # Only a tick that may scale down asks who is busy (two broker requests
                # per broker, one pod listing per QueueScaler).
                look = await self._look_at_workers(scaler, connection, listings, now)
                if look.report is not None and look.report.matched:
                    decision = decide(spec, sample, current, state, now, look.report.busy)
            if decision.replicas != current and not spec.paused:
                if spec.dry_run:
                    await self._announce_dry_run(scaler, current, decision)
                else:
                    if decision.replicas < current and look is not None:
                        await self._mark(scaler, look)
                    announcement = await self._scale(scaler, current, decision, sample)
                    if announcement is not None:
                        scaler.current_replicas = decision.replicas
            scaled = announcement is not None
            state = next_state(spec, state, sample, current, decision, now, scaled)
        scaler.state = state  # without a target nothing was decided: the state waits
        conditions = conditions_for(
            paused=spec.paused, dry_run=spec.dry_run, broker_error=broker_error,
            target_error=target_error, config_error=config_error, decision=decision,
            current_replicas=scaler.current_replicas,
        )
        matched = self._workers_condition(scaler, look)
        if matched is not None:
            conditions.append(matched)
        report = look.report if look is not None else None
        outcome = TickOutcome(
            scaler.generation, spec.source.include_in_flight, sample,
            scaler.current_replicas, decision, state, conditions,
            (report.matched, report.busy) if report is not None else None,
        )
        self.metrics.observe(scaler, sample, decision, scaler.current_replicas, conditions)
        await self._report(scaler, now, outcome, decision)
        if announcement is not None:
            await self._announce(scaler, announcement)

    def _sample_for(
        self, scaler: Scaler, result: SampleResult | SourceError | None
    ) -> tuple[QueueSample | None, tuple[str, str] | None]:
        # Only the latest answer says whether statistics are pending: a flag left over from
        # before a failed request would let the live counts stand in for it.
        scaler.stats_pending = False
        if result is None:
            return None, ("Unreachable", "the broker was not sampled")
        if isinstance(result, SourceError):
            return None, (camel(str(result.kind)), result.message)
        parts: list[QueueSample] = []
        for ref in scaler.queues():
            part = result.get(ref)
            if isinstance(part, QueueSample):
                parts.append(part)
            elif isinstance(part, SourceError) and part.kind is ErrorKind.STATS_PENDING:
                scaler.stats_pending = True  # live counts stand in: see _with_live_counts
                return None, None
            elif isinstance(part, SourceError):
                self.metrics.sample_failed(str(part.kind))
                return None, (camel(str(part.kind)), part.message)
            else:
                return None, ("QueueNotFound", f"queue {ref.name!r} was not in the broker's answer")
        return combine(parts), None

    # --- busy workers ---

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

    async def _look_at_workers(
        self, scaler: Scaler, connection: Connection | None, listings: ClientListings,
        now: float,
    ) -> WorkerLook:
        """The target's pods and the broker's consumers, matched; or why they are not."""
        assert scaler.spec is not None
        vhost = scaler.spec.source.queues[0].scope
        if not isinstance(connection, tuple):
            return WorkerLook((), None, "the broker connection is not configured")

        async def pods() -> list[Pod]:
            return await self.kube.list_pods(scaler.namespace, await self._selector(scaler, now))

        found, clients = await asyncio.gather(
            pods(), listings.get(connection, vhost), return_exceptions=True
        )
        if isinstance(found, KubeError):
            return WorkerLook((), None, f"the target's pods could not be listed: {found.message}")
        if isinstance(clients, SourceError):
            return WorkerLook(
                (), None, f"the broker's consumers could not be listed: {clients.message}"
            )
        for outcome in (found, clients):
            if isinstance(outcome, BaseException):
                if not isinstance(outcome, Exception):
                    raise outcome  # cancellation and the like
                return WorkerLook((), None, redact(f"listing failed: {outcome!r}"))
        assert not isinstance(found, BaseException) and not isinstance(clients, BaseException)
        return WorkerLook(found, match_workers(found, clients, {vhost}))

    async def _mark(self, scaler: Scaler, look: WorkerLook) -> None:
        """Set pod-deletion-cost on the pods whose mark changed, so idle pods go first."""
        if look.report is None:
            return
        present = {pod.name for pod in look.pods}
        scaler.marks = {pod: cost for pod, cost in scaler.marks.items() if pod in present}
        await self._annotate(scaler, deletion_marks(look.pods, look.report, scaler.name))

    async def _clear_marks(self, scaler: Scaler) -> None:
        """Remove the marks this QueueScaler set (best effort; a failed listing falls back to
        the pods remembered)."""
        remembered = [Pod(name, marked_by=scaler.name) for name in scaler.marks]
        pods: Sequence[Pod] = remembered
        if scaler.spec is not None:
            with contextlib.suppress(KubeError):
                pods = await self.kube.list_pods(
                    scaler.namespace, await self._selector(scaler, self._clock())
                )
        await self._annotate(scaler, cleared_marks(pods, scaler.name))
        scaler.marks = {}  # best effort: what could not be cleared now is not retried
        scaler.marks = {}

    async def _annotate(self, scaler: Scaler, marks: Marks) -> None:
        if not marks:
            return
        results = await asyncio.gather(
            *(self.kube.annotate_pod(scaler.namespace, pod, annotations)
              for pod, annotations in marks.items()),
            return_exceptions=True,
        )
        for (pod, wanted), result in zip(marks.items(), results, strict=True):
            if isinstance(result, NotFound):
                scaler.marks.pop(pod, None)  # gone already
            elif isinstance(result, KubeError):
                log.warning("pod %s/%s not marked: %s", scaler.namespace, pod, result.message)
            elif isinstance(result, BaseException):
                raise result
            elif wanted.get(DELETION_COST) is None:
                scaler.marks.pop(pod, None)
            else:
                scaler.marks[pod] = wanted[DELETION_COST]

    def _workers_condition(self, scaler: Scaler, look: WorkerLook | None) -> Condition | None:
        """WorkersMatched: this tick's look, else the one last written (looks are only made
        on ticks that may scale down); absent until the first look."""
        assert scaler.spec is not None
        enabled = scaler.spec.behavior.scale_down.protect_busy_workers
        vhost = scaler.spec.source.queues[0].scope
        if not enabled or look is not None:
            report = look.report if look is not None else None
            problem = look.problem if look is not None else None
            return workers_condition(report, vhost, enabled=enabled, problem=problem)
        for previous in scaler.status.get("conditions") or ():
            if isinstance(previous, Mapping) and previous.get("type") == WORKERS_CONDITION:
                if previous.get("reason") == "ProtectionDisabled":
                    return None
                return Condition(
                    WORKERS_CONDITION, previous.get("status") == "True",
                    str(previous.get("reason") or "Unknown"), str(previous.get("message") or ""),
                )
        return None

    async def _current_replicas(self, scaler: Scaler) -> int:
        assert scaler.spec is not None
        target = scaler.spec.scale_target_ref
        if target.api_version == "apps/v1" and target.kind == "Deployment":
            cached = self.replicas.get(scaler.namespace, target.name)
            if cached is not None:
                return cached
        return await self.kube.read_replicas(scaler.namespace, target)

    async def _scale(
        self, scaler: Scaler, current: int, decision: Decision, sample: QueueSample | None
    ) -> Announcement | None:
        """Patch /scale; on success, what to announce once the status (with lastScaleTime)
        is written: a crash between the two then never loses the cooldown."""
        assert scaler.spec is not None
        target = scaler.spec.scale_target_ref
        try:
            await self.kube.scale(scaler.namespace, target, decision.replicas)
        except KubeError as error:
            await self._event(scaler, "Warning", "ScaleFailed",
                              f"could not scale {target.kind} {target.name} to "
                              f"{decision.replicas}: {error.message}")
            return None
        if target.api_version == "apps/v1" and target.kind == "Deployment":
            self.replicas.set(scaler.namespace, target.name, decision.replicas)
        direction = "up" if decision.replicas > current else "down"
        reason = "ScaledUp" if direction == "up" else "ScaledDown"
        backlog = f" (backlog {sample.backlog})" if sample is not None else ""
        message = (f"scaled {target.kind} {target.name} from {current} to {decision.replicas}: "
                   f"{decision.reason}{backlog}: {decision.message}")
        log.info("%s/%s %s", scaler.namespace, scaler.name, message)
        self.metrics.scaled(scaler, direction, str(decision.reason))
        about_target = ObjectRef(target.api_version, target.kind, scaler.namespace, target.name)
        return Announcement(reason, message, about_target)

    async def _announce(self, scaler: Scaler, announcement: Announcement) -> None:
        """A scale's Events, on the QueueScaler and on its target."""
        reason, message, target = announcement
        await self._event(scaler, "Normal", reason, message)
        await self._emit(target, "Normal", reason, f"queuescaler {scaler.name} {message}")

    async def _announce_dry_run(self, scaler: Scaler, current: int, decision: Decision) -> None:
        if scaler.announced_desired == decision.replicas:
            return
        scaler.announced_desired = decision.replicas
        await self._event(scaler, "Normal", "WouldScale",
                          f"dry run: would scale from {current} to {decision.replicas}: "
                          f"{decision.reason}: {decision.message}")

    async def _report(
        self, scaler: Scaler, now: float, outcome: TickOutcome, decision: Decision | None
    ) -> None:
        known = {c.get("type") for c in scaler.status.get("conditions") or ()}
        status, flipped = build_status(scaler.status, outcome, now)
        stale = now - scaler.status_written_at >= self.settings.status_refresh_seconds
        if not needs_write(scaler.status, status, stale=stale):
            return
        try:
            await self.kube.patch_status(scaler.namespace, scaler.name, status)
        except NotFound:
            self.fleet.remove(scaler.namespace, scaler.name)  # deleted meanwhile: gone
            return
        except KubeError as error:
            log.warning("status of %s/%s not written: %s", scaler.namespace, scaler.name,
                        error.message)
            return
        scaler.status = status
        scaler.status_written_at = now
        for condition in flipped:
            bad = condition.type in GOOD_WHEN_TRUE and not condition.status
            if condition.type not in known and not bad:
                continue  # a new QueueScaler's first, healthy conditions are not news
            event_type = "Warning" if bad else "Normal"
            verb = "True" if condition.status else "False"
            await self._event(scaler, event_type, condition.reason,
                              f"{condition.type} is {verb}: {condition.message}")

    async def _event(self, scaler: Scaler, event_type: str, reason: str, message: str) -> None:
        about = ObjectRef(f"{GROUP}/{VERSION}", KIND, scaler.namespace, scaler.name, scaler.uid)
        await self._emit(about, event_type, reason, message)

    async def _emit(self, about: ObjectRef, event_type: str, reason: str, message: str) -> None:
        try:
            await self.kube.emit_event(about, event_type, reason, message)
        except KubeError as error:
            log.warning("event not posted: %s", error.message)


def _at_rest_at_zero(scaler: Scaler) -> bool:
    spec = scaler.spec
    return (
        spec is not None and scaler.current_replicas == 0 and spec.min_replicas == 0
        and not spec.paused
    )


def _with_live_counts(sample: QueueSample | None, live: QueueSample) -> QueueSample:
    """The management sample with its ready and consumer counts replaced by live ones.

    The management API's counts lag by up to its statistics interval (seconds); a passive
    declare's do not. Unacked counts and rates exist only in the management sample, so
    they stay. The live counts stand alone only for a pool at zero (nothing can be in
    flight) or a queue too new to have statistics: never in place of a failed request for
    a pool at work, whose unacknowledged messages they cannot see.
    """
    if sample is None:
        return live
    return dataclasses.replace(sample, ready=live.ready, consumers=live.consumers)
