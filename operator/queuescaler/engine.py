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
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from queuescaler.brokers import (
    ROUND_WAIT_SECONDS,
    Broker,
    Brokers,
    ClientListings,
    Reach,
    SourceFactory,
    connect,
)
from queuescaler.core import plan as planner
from queuescaler.core.plan import Event, Failure, Observations, Plan, WorkerLook
from queuescaler.core.redact import redact
from queuescaler.core.sample import QueueSample, SampleResult, SourceError
from queuescaler.core.workers import Marks, Pod
from queuescaler.fleet import Fleet, ReplicaCache, Scaler
from queuescaler.kube.api import KubeApi
from queuescaler.kube.client import (
    GROUP,
    KIND,
    VERSION,
    KubeError,
    NotFound,
    ObjectRef,
)
from queuescaler.kube.pods import Autoscalers, Pods
from queuescaler.metrics import Metrics

log = logging.getLogger(__name__)



LIVENESS_SECONDS = 120.0
"""A loop that has not gone round for this long (or ten ticks) is stuck."""


@dataclass(frozen=True)
class EngineSettings:
    """How often the engine looks, and how much it may write."""

    tick_seconds: float = 0.5
    """How often the loop wakes; each QueueScaler is sampled at its own pollingIntervalSeconds."""
    fast_path: bool = True
    """Peek (live counts) between samples at pools that may grow (at zero, or below their
    maximum), so a burst is acted on within a tick, and at pools scaled moments ago, whose
    management counts still predate the scale."""
    fast_path_budget: int = 500
    """Pools peeked per tick at most, over every broker (500 pipelined declares: about 15 ms
    of the broker's CPU): those due first, the others taking turns beyond it."""
    plan: planner.PlanSettings = dataclasses.field(default_factory=planner.PlanSettings)
    """The knobs the planner's rules read (status refresh, statistics lag)."""
    secret_refresh_seconds: float = 60.0
    """Secrets are read again after this long (they are never watched: `get` by name only)."""
    concurrency: int = 32
    """QueueScalers acted on at once (each patch or write is one apiserver request)."""
    round_wait_seconds: float = ROUND_WAIT_SECONDS
    """How long a tick waits for a broker's answer before deciding for the brokers that
    answered; a later tick decides for the one still answering (`Brokers.sample`)."""


class Engine:
    """Runs ticks until stopped. One per operator process."""

    def __init__(
        self,
        kube: KubeApi,
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
        self.brokers = Brokers(kube, metrics, make_source, settings.secret_refresh_seconds)
        self._clock = clock
        self.leading = leading
        """Whether this replica acts now (leader election); a standby only watches."""
        self._gate = asyncio.Semaphore(settings.concurrency)
        self.pods = Pods(kube)
        self._peek_turn = 0
        self.autoscalers = Autoscalers(kube)
        self._unwritten: set[tuple[str, str]] = set()
        """QueueScalers whose last status write failed (logged once, not every tick)."""
        self.ticks = 0
        """Ticks completed: the operator is ready once the first one ran."""
        self._looped_at = time.monotonic()
        self._last_tick = -math.inf
        """The previous tick's `now` (wall clock): one later than this one is a step back."""

    def alive(self) -> bool:
        """Whether the loop still goes round (the liveness probe): a hung call past every
        timeout, or a wedged loop, fails it and the kubelet restarts the pod."""
        bound = max(LIVENESS_SECONDS, 10 * self.settings.tick_seconds)
        return time.monotonic() - self._looped_at < bound

    async def run(self, stop: asyncio.Event) -> None:
        """Tick every `tick_seconds` until `stop` is set; a failing tick is logged, never fatal."""
        led = False
        while not stop.is_set():
            self._looped_at = time.monotonic()
            started = self._clock()
            leading = self.leading()
            if leading and not led:
                # Taking over: the state comes from the status as it is now, so the
                # stabilization windows and cooldowns run from here, not from when the
                # watch delivered it to a standby.
                self.fleet.restore_all(started)
            led = leading
            if leading:
                try:
                    await self.tick(started)
                except Exception:  # the loop must outlive any one bad tick
                    log.exception("tick failed")
            self.ticks += 1
            elapsed = self._clock() - started
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self.settings.tick_seconds - elapsed))
        await self.brokers.close()

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
        if now < self._last_tick:  # the clock stepped back: so did every schedule
            for scaler in scalers:
                scaler.next_due = planner.rescheduled(scaler.next_due, now, _interval(scaler))
        self._last_tick = now
        due = [s for s in scalers if s.next_due <= now]
        live: dict[tuple[str, str], QueueSample] = {}
        early: list[Scaler] = []
        if self.settings.fast_path:
            may_grow = [s for s in scalers if planner.peeked(s.spec, s.memory, now)]
            watched, self._peek_turn = planner.to_peek(
                [s for s in may_grow if s.next_due <= now],
                [s for s in may_grow if s.next_due > now and s.memory.current_replicas == 0],
                [s for s in may_grow if s.next_due > now and s.memory.current_replicas != 0],
                self.settings.fast_path_budget, self._peek_turn,
            )
            settling = [
                s for s in due
                if planner.settling(s.memory.state, now, self.settings.plan)
                or s.memory.stats_pending
            ]
            peeking = {s.key: s for s in (*watched, *settling)}
            live = await self.brokers.peek(list(peeking.values()), now)
            early = [
                s for s in watched
                if s.next_due > now and s.key in live and s.spec is not None
                and planner.calls_now(s.spec, live[s.key], s.memory, now)
            ]
        if due or early:
            # Early pools are decided on their live counts alone: no management request.
            early_keys = {s.key for s in early}
            reaches = await self.brokers.reaches([*due, *early], now)
            answers = (
                await self.brokers.sample(due, reaches, self.settings.round_wait_seconds)
                if due else {}
            )
            # A broker still answering: its QueueScalers stay due, for the tick it answers in.
            due = [s for s in due if not _answer_pending(reaches.get(s.key), answers)]
            listings = self.brokers.listings(due, reaches)
            for scaler in due:
                scaler.next_due = planner.next_due(now, _interval(scaler))
            hpas = await self.autoscalers.around((s.namespace for s in (*due, *early)), now)
            owners = planner.conflicts(
                [(s.namespace, s.name, s.spec.scale_target_ref) for s in scalers if s.spec],
                hpas,
            )
            await asyncio.gather(*(
                self._guarded(self._act(
                    s, reaches.get(s.key), answers, live.get(s.key), now, listings,
                    owners.get(s.key), early=s.key in early_keys,
                )) for s in (*due, *early)
            ))
            self.brokers.prune(now)
            self.pods.prune(now)
        self.metrics.ticked(time.perf_counter() - started)

    async def _guarded(self, work: Awaitable[None]) -> None:
        async with self._gate:
            try:
                await work
            except Exception:  # one QueueScaler's failure never stops the others
                log.exception("acting on a QueueScaler failed")

    # --- acting on one QueueScaler ---

    async def _act(
        self,
        scaler: Scaler,
        reach: Reach | None,
        answers: Mapping[Broker, SampleResult | SourceError],
        live: QueueSample | None,
        now: float,
        listings: ClientListings,
        conflict: str | None = None,
        early: bool = False,
    ) -> None:
        seen = Observations(now=now, live=live, conflict=conflict, early=early)
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
                and self.brokers.can_list_clients(broker),
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
        if not self.leading():
            return  # the Lease lapsed during this tick: a standby may be acting already
        if made.reread_secret and scaler.spec is not None:
            source = scaler.spec.source
            self.brokers.secrets.invalidate(scaler.namespace, source.secret_ref.name, source.broker)
        if made.clear_marks:
            await self._clear_marks(scaler)
        failure: Failure | None = None
        if made.marks:
            unmarked = await self._mark(scaler, seen.workers, made.marks)
            if unmarked:  # an old mark may still call a busy pod idle: no scale-down now
                failure = Failure("MarkFailed", f"pods {', '.join(unmarked)} not marked")
        if made.scale_to is not None:
            failure = failure or await self._scale(scaler, made.scale_to)
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
            # Logged with the status that records them: a failure that a write did not
            # record would be logged again on every tick.
            for line in made.warnings:
                log.warning("%s/%s %s", scaler.namespace, scaler.name, line)
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

    async def _look(self, scaler: Scaler, broker: Broker, listings: ClientListings) -> WorkerLook:
        """The target's pods and the broker's clients; or why they could not be listed."""
        scopes = {ref.scope for ref in scaler.queues()}

        assert scaler.spec is not None
        pods = self.pods.list(scaler.namespace, scaler.spec.scale_target_ref, self._clock())
        found, clients = await asyncio.gather(
            pods, listings.get(broker, scopes), return_exceptions=True
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
        return WorkerLook(
            tuple(found), tuple(clients), others=listings.others(broker, scaler.queues())
        )

    # --- writing ---

    async def _mark(self, scaler: Scaler, look: WorkerLook | None, marks: Marks) -> list[str]:
        """Set pod-deletion-cost on the pods whose mark changed, so idle pods go first;
        the pods that could not be marked."""
        present = {pod.name for pod in look.pods} if look is not None else set()
        kept = {pod: cost for pod, cost in scaler.memory.marks.items() if pod in present}
        held, failed = await self.pods.annotate(scaler.namespace, marks, kept)
        scaler.memory = dataclasses.replace(scaler.memory, marks=held)
        return failed

    async def _clear_marks(self, scaler: Scaler) -> None:
        """Remove the marks this QueueScaler set (best effort; a failed listing falls back to
        the pods remembered)."""
        pods: Sequence[Pod] = ()
        if scaler.spec is not None:
            with contextlib.suppress(KubeError):
                pods = await self.pods.list(
                    scaler.namespace, scaler.spec.scale_target_ref, self._clock()
                )
        marks = planner.clearing_marks(pods, scaler.memory, scaler.name)
        _, failed = await self.pods.annotate(scaler.namespace, marks, {})
        if failed:  # kept, to be cleared next time
            scaler.memory = dataclasses.replace(scaler.memory, marks=dict.fromkeys(failed, ""))
            return
        scaler.memory = dataclasses.replace(scaler.memory, marks={})

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
        except NotFound:  # deleted meanwhile: gone, with its series and marks
            gone = self.fleet.remove(scaler.namespace, scaler.name)
            if gone is not None:
                await self.release(gone)
            return False
        except KubeError as error:
            # Once when writes start failing, once when they work again; not every tick.
            level = logging.DEBUG if scaler.key in self._unwritten else logging.WARNING
            self._unwritten.add(scaler.key)
            log.log(level, "status of %s/%s not written: %s", scaler.namespace, scaler.name,
                    error.message)
            return False
        if scaler.key in self._unwritten:
            self._unwritten.discard(scaler.key)
            log.warning("status of %s/%s written again", scaler.namespace, scaler.name)
        scaler.memory = scaler.memory.wrote(made.status, now)
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


def _interval(scaler: Scaler) -> float:
    """Seconds between a QueueScaler's full samples (a minute while its spec is invalid)."""
    return scaler.spec.polling_interval_seconds if scaler.spec else 60


def _answer_pending(reach: Reach | None, answers: Mapping[Broker, object]) -> bool:
    return isinstance(reach, tuple) and reach not in answers
