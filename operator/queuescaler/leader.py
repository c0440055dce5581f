"""Leader election on a coordination.k8s.io Lease: one replica acts, the others stand by warm.

Every replica watches and keeps its registry current; only the holder of the Lease ticks.
A standby therefore takes over with a full picture as soon as the Lease expires (or at
once, when the leader stops cleanly and releases it). A leader that cannot renew stops
acting before its Lease can expire, so two replicas never act at the same time.

The rules are pure (`LeaseRecord` in, verdict out); `Elector` does the I/O through
`kube.py`'s Lease calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from queuescaler.kube.client import KubeClient, KubeError, LeaseRecord

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


def can_take(record: LeaseRecord | None, me: str, now: float) -> bool:
    """Whether `me` may write itself into the Lease now: free, expired, or already mine."""
    if record is None or not record.holder or record.holder == me:
        return True
    if record.renewed_at is None:
        return True
    return now > record.renewed_at + record.duration_seconds


class Elector:
    """Holds (or waits for) the Lease; `is_leader()` is what the tick loop asks."""

    def __init__(
        self,
        kube: KubeClient,
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
        self._renewed_at: float | None = None  # monotonic time of our last successful write
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
            await self._attempt()
            self._notify()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.timing.retry_seconds)
        if self.is_leader():
            try:
                await self.kube.release_lease(self.namespace, self.name, self.identity)
                log.info("released the lease %s/%s", self.namespace, self.name)
            except KubeError as error:
                log.warning("could not release the lease: %s", error.message)
        self._renewed_at = None
        self._notify()

    async def _attempt(self) -> None:
        try:
            record = await self.kube.read_lease(self.namespace, self.name)
            if not can_take(record, self.identity, time.time()):
                if self._renewed_at is not None:
                    log.warning("lost the lease to %s", record.holder if record else None)
                self._renewed_at = None
                return
            await self.kube.write_lease(
                self.namespace, self.name, self.identity, self.timing.duration_seconds, record
            )
            self._renewed_at = self._clock()
        except KubeError as error:
            # A conflict means someone else wrote first: they lead. Anything else: we
            # cannot renew, and is_leader() turns False when the deadline passes.
            log.info("lease %s/%s not written: %s", self.namespace, self.name, error.message)

    def _notify(self) -> None:
        leading = self.is_leader()
        if leading != self._leading:
            self._leading = leading
            log.info("%s the lease %s/%s as %s",
                     "acquired" if leading else "gave up", self.namespace, self.name,
                     self.identity)
            if self._on_change is not None:
                self._on_change(leading)
