"""Leader election on a coordination.k8s.io Lease: one replica acts, the others stand by warm.

Every replica watches and keeps its registry current; only the holder of the Lease ticks.
A standby therefore takes over with a full picture as soon as the Lease expires (or at
once, when the leader stops cleanly and releases it). A leader that cannot renew stops
acting before its Lease can expire, so two replicas never act at the same time.

Expiry is judged as client-go judges it: by how long ago THIS replica saw the record
change, on its own monotonic clock. The holder's `renewTime` is another machine's wall
clock; comparing it with ours lets a fast standby steal a healthy Lease and a slow one
delay failover. The rule is pure (`observe`, `can_take`); `Elector` does the I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from queuescaler.kube.client import LeaseRecord

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeaseTiming:
    """The usual client-go timings, scaled for an operator that ticks every second."""

    duration_seconds: int = 15
    """How long a Lease is honoured after its last renewal."""
    renew_deadline_seconds: float = 10.0
    """A leader that has not renewed for this long stops acting (well before expiry)."""
    retry_seconds: float = 2.0
    """How often leaders renew and standbys try to acquire."""


@dataclass(frozen=True, slots=True)
class Observation:
    """A Lease record as last read, and when (this replica's monotonic clock) it last changed."""

    record: LeaseRecord | None
    changed_at: float


def _same(a: LeaseRecord | None, b: LeaseRecord | None) -> bool:
    if a is None or b is None:
        return a is b
    return (a.holder, a.renewed_at, a.resource_version) == (
        b.holder, b.renewed_at, b.resource_version)


def observe(last: Observation | None, record: LeaseRecord | None, now: float) -> Observation:
    """The observation after reading `record` at monotonic `now`: kept while nothing changed."""
    if last is not None and _same(last.record, record):
        return last
    return Observation(record, now)


def can_take(seen: Observation, me: str, now: float) -> bool:
    """Whether `me` may write itself into the Lease: free, mine, or unchanged for its duration."""
    record = seen.record
    if record is None or not record.holder or record.holder == me:
        return True
    return now - seen.changed_at >= record.duration_seconds


class LeaseApi(Protocol):
    """The Lease calls of `KubeClient` the elector needs."""

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None: ...

    async def write_lease(
        self, namespace: str, name: str, holder: str, duration: int, seen: LeaseRecord | None
    ) -> None: ...

    async def release_lease(self, namespace: str, name: str, holder: str) -> None: ...


class Elector:
    """Holds (or waits for) the Lease; `is_leader()` is what the tick loop asks.

    No exception from the Lease calls or from `on_change` ends `run`: one that escaped
    would leave this replica a standby for good, and with every replica so, nobody acts.
    """

    def __init__(
        self,
        kube: LeaseApi,
        namespace: str,
        name: str,
        identity: str,
        timing: LeaseTiming = LeaseTiming(),
        clock: Callable[[], float] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timing = timing
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._renewed_at: float | None = None  # monotonic time we sent our last good write
        self._seen: Observation | None = None
        self._on_change = on_change
        self._leading = False

    def is_leader(self) -> bool:
        """True while our last renewal is younger than the renew deadline."""
        if self._renewed_at is None:
            return False
        return self._clock() - self._renewed_at < self.timing.renew_deadline_seconds

    async def run(self, stop: asyncio.Event) -> None:
        """Acquire and renew until `stop`; then release, so a standby takes over at once."""
        while not stop.is_set():
            await self.step()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._pause())
        if self.is_leader():
            try:
                await self.kube.release_lease(self.namespace, self.name, self.identity)
                log.info("released the lease %s/%s", self.namespace, self.name)
            except Exception as error:
                log.warning("could not release the lease: %s", _describe(error))
        self._renewed_at = None
        self._notify()

    async def step(self) -> None:
        """One acquire-or-renew attempt, bounded so that a hung call cannot outlast our lead."""
        try:
            await asyncio.wait_for(self._attempt(), self._budget())
        except TimeoutError:
            log.info("lease %s/%s: no answer in time", self.namespace, self.name)
        except Exception as error:
            # A conflict means someone else wrote first: they lead. Anything else: we
            # cannot renew, and is_leader() turns False when the deadline passes.
            log.info("lease %s/%s not written: %s", self.namespace, self.name, _describe(error))
        self._notify()

    def _lead_left(self) -> float | None:
        """Seconds until our lead lapses without a renewal; None while not leading."""
        if self._renewed_at is None:
            return None
        left = self._renewed_at + self.timing.renew_deadline_seconds - self._clock()
        return left if left > 0 else None

    def _budget(self) -> float:
        """A leader's attempt ends with its lead; a standby's after one renew deadline."""
        left = self._lead_left()
        return self.timing.renew_deadline_seconds if left is None else left

    def _pause(self) -> float:
        """The retry period, cut short to report a lead that lapses meanwhile."""
        left = self._lead_left()
        return self.timing.retry_seconds if left is None else min(self.timing.retry_seconds, left)

    async def _attempt(self) -> None:
        started = self._clock()
        record = await self.kube.read_lease(self.namespace, self.name)
        self._seen = observe(self._seen, record, self._clock())
        if not can_take(self._seen, self.identity, self._clock()):
            if self._renewed_at is not None:
                log.warning("lost the lease to %s", record.holder if record else None)
            self._renewed_at = None
            return
        await self.kube.write_lease(
            self.namespace, self.name, self.identity, self.timing.duration_seconds, record
        )
        self._renewed_at = started  # not later: the Lease may have been renewed at once

    def _notify(self) -> None:
        leading = self.is_leader()
        if leading == self._leading:
            return
        self._leading = leading
        log.info("%s the lease %s/%s as %s", "acquired" if leading else "gave up",
                 self.namespace, self.name, self.identity)
        if self._on_change is None:
            return
        try:
            self._on_change(leading)
        except Exception:
            log.exception("reporting leadership (%s) failed", leading)


def _describe(error: Exception) -> str:
    message = getattr(error, "message", None)
    return message if isinstance(message, str) else f"{type(error).__name__}: {error}"
