"""Leader election: expiry judged on this replica's own clock, and an elector no fault ends.

The rule is pure (observations and a monotonic `now` in, a verdict out) and table-tested.
The Elector runs over a fake Lease store for clock skew, and over the real kubernetes
ApiClient with faults injected where urllib3's pool manager sits, or a closed port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from kubernetes import client as k8s
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from queuescaler import leader
from queuescaler.kube.client import KubeClient, LeaseRecord
from queuescaler.leader import Elector, LeaseTiming

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

ME, OTHER = "replica-a", "replica-b"
WALL = 1_800_000_000.0
TIMING = LeaseTiming(duration_seconds=15, renew_deadline_seconds=10.0, retry_seconds=2.0)


def held(by: str | None = OTHER, version: str = "1", renewed_at: float | None = WALL,
         duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder=by, renewed_at=renewed_at, duration_seconds=duration,
                       resource_version=version, transitions=0)


Seen = list[tuple[LeaseRecord | None, float]]
"""What this replica read, and when on its monotonic clock."""


@pytest.mark.parametrize(
    ("reads", "now", "may_take"),
    [
        pytest.param([(None, 0.0)], 0.0, True, id="no-lease-yet"),
        pytest.param([(held(by=None), 0.0)], 0.0, True, id="released-lease"),
        pytest.param([(held(by=""), 0.0)], 0.0, True, id="empty-holder"),
        pytest.param([(held(by=ME), 0.0)], 0.0, True, id="mine-is-renewed"),
        pytest.param([(held(), 0.0)], 0.0, False, id="held-just-seen"),
        pytest.param([(held(), 0.0)], 14.9, False, id="held-unchanged-under-the-duration"),
        pytest.param([(held(), 0.0)], 15.0, True, id="held-unchanged-for-the-duration"),
        pytest.param([(held(), 0.0), (held(), 10.0)], 15.0, True,
                     id="rereading-the-same-record-keeps-the-first-sighting"),
        pytest.param([(held(), 0.0), (held(version="2", renewed_at=WALL + 2), 10.0)], 15.0,
                     False, id="a-renewal-restarts-the-wait"),
        pytest.param([(held(), 0.0), (held(version="2", renewed_at=WALL + 2), 10.0)], 25.0,
                     True, id="the-wait-runs-from-the-last-change"),
        pytest.param([(held(), 0.0), (held(version="2"), 10.0)], 20.0, False,
                     id="a-new-resource-version-alone-is-a-change"),
        pytest.param([(held(), 0.0), (held(by="replica-c"), 10.0)], 20.0, False,
                     id="a-new-holder-alone-is-a-change"),
        pytest.param([(held(), 0.0), (held(renewed_at=WALL + 2), 10.0)], 20.0, False,
                     id="a-new-renew-time-alone-is-a-change"),
        pytest.param([(held(duration=60), 0.0)], 45.0, False,
                     id="the-holders-own-duration-counts"),
        pytest.param([(held(renewed_at=WALL + 1800), 0.0)], 15.0, True,
                     id="holder-renewed-30-min-in-the-future-expires-on-local-time"),
        pytest.param([(held(renewed_at=WALL - 1800), 0.0)], 1.0, False,
                     id="holder-renewed-30-min-in-the-past-is-honoured-when-just-seen"),
        pytest.param([(held(renewed_at=None), 0.0)], 1.0, False,
                     id="holder-without-renew-time-is-honoured-for-the-duration"),
        pytest.param([(held(), 100.0)], 110.0, False,
                     id="a-standby-that-just-started-waits-the-full-duration"),
    ],
)
def test_who_may_take_the_lease(reads: Seen, now: float, may_take: bool) -> None:
    seen: leader.Observation | None = None
    for record, at in reads:
        seen = leader.observe(seen, record, at)
    assert seen is not None
    assert leader.can_take(seen, ME, now) is may_take


def test_an_unchanged_record_keeps_its_first_observation() -> None:
    first = leader.observe(None, held(), 1.0)
    assert leader.observe(first, dataclasses.replace(held()), 9.0) is first


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class LeaseStore:
    """KubeClient's three Lease calls over one in-memory record, written by `OTHER` too.

    Each read is one retry period of the fake monotonic clock. The other replica's clock is
    `skew` seconds off the real wall clock; while `other_alive`, it renews on every read.
    """

    def __init__(self, clock: FakeClock, skew: float, other_alive: bool) -> None:
        self.clock = clock
        self.skew = skew
        self.other_alive = other_alive
        self.version = 1
        self.record: LeaseRecord | None = self._by_other()
        self.taken_at: float | None = None

    def _by_other(self) -> LeaseRecord:
        self.version += 1
        return held(version=str(self.version), renewed_at=time.time() + self.skew)

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        self.clock.now += TIMING.retry_seconds
        if self.other_alive and self.record is not None and self.record.holder == OTHER:
            self.record = self._by_other()
        return self.record

    async def write_lease(self, namespace: str, name: str, holder: str, duration: int,
                          seen: LeaseRecord | None) -> None:
        self.version += 1
        self.record = held(by=holder, version=str(self.version), renewed_at=time.time())
        if self.taken_at is None:
            self.taken_at = self.clock.now

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        self.record = None


async def run_for(elector: Elector, clock: FakeClock, fake_seconds: float) -> None:
    stop = asyncio.Event()
    running = asyncio.create_task(elector.run(stop))
    while clock.now < fake_seconds and not running.done():
        await asyncio.sleep(0.001)
    stop.set()
    await asyncio.wait_for(running, 5)


def fast(timing: LeaseTiming) -> LeaseTiming:
    """The same timing, with real waits between attempts cut to a millisecond."""
    return dataclasses.replace(timing, retry_seconds=0.001)


@pytest.mark.parametrize("skew", [pytest.param(-1800.0, id="holder-clock-30-min-behind"),
                                  pytest.param(0.0, id="no-skew"),
                                  pytest.param(1800.0, id="holder-clock-30-min-ahead")])
async def test_a_standby_never_takes_a_lease_its_holder_keeps_renewing(skew: float) -> None:
    clock = FakeClock()
    store = LeaseStore(clock, skew, other_alive=True)
    elector = Elector(store, "ns", "lease", ME, fast(TIMING), clock=clock)

    await run_for(elector, clock, fake_seconds=120)

    assert store.taken_at is None


@pytest.mark.parametrize("skew", [pytest.param(-1800.0, id="holder-clock-30-min-behind"),
                                  pytest.param(0.0, id="no-skew"),
                                  pytest.param(1800.0, id="holder-clock-30-min-ahead")])
async def test_a_standby_takes_a_dead_holders_lease_one_duration_after_its_last_change(
    skew: float,
) -> None:
    clock = FakeClock()
    store = LeaseStore(clock, skew, other_alive=False)
    elector = Elector(store, "ns", "lease", ME, fast(TIMING), clock=clock)

    await run_for(elector, clock, fake_seconds=120)

    assert store.taken_at is not None
    first_seen = TIMING.retry_seconds
    assert (first_seen + TIMING.duration_seconds <= store.taken_at
            <= first_seen + TIMING.duration_seconds + 2 * TIMING.retry_seconds)


# --- Faults at the transport: the real ApiClient, with urllib3's pool manager replaced ---

LEASES = "/apis/coordination.k8s.io/v1/namespaces/ns/leases"


def respond(body: Any, status: int = 200) -> urllib3.HTTPResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib3.HTTPResponse(body=data, status=status, preload_content=False,
                                headers={"Content-Type": "application/json"})


class LeaseServer:
    """An apiserver's Lease endpoints in memory, in the pool manager's place.

    While `fault` is set, every request fails with it (raised, or answered if a response).
    Each request moves the fake monotonic clock on by one second.
    """

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.lease: dict[str, Any] | None = None
        self.version = 0
        self.fault: Exception | urllib3.HTTPResponse | None = None
        self.requests = 0

    def request(self, method: str, url: str, body: str | None = None,
                **kwargs: Any) -> urllib3.HTTPResponse:
        self.clock.now += 1.0
        self.requests += 1
        if isinstance(self.fault, Exception):
            raise self.fault
        if self.fault is not None:
            return self.fault
        path = urlsplit(url).path
        sent = json.loads(body) if body else {}
        if method == "GET":
            return respond(self.lease) if self.lease else respond({"code": 404}, 404)
        if method == "POST" and path == LEASES:
            if self.lease is not None:
                return respond({"code": 409}, 409)
            return self._store(sent)
        if self.lease is None:
            return respond({"code": 404}, 404)
        if sent["metadata"].get("resourceVersion") != self.lease["metadata"]["resourceVersion"]:
            return respond({"code": 409}, 409)
        if method == "PUT":
            return self._store(sent)
        spec = {k: v for k, v in {**self.lease["spec"], **sent["spec"]}.items() if v is not None}
        return self._store({**self.lease, "spec": spec})

    def _store(self, lease: dict[str, Any]) -> urllib3.HTTPResponse:
        self.version += 1
        lease["metadata"] = {**lease["metadata"], "resourceVersion": str(self.version)}
        self.lease = lease
        return respond(lease)

    def clear(self) -> None:
        """ApiClient.close() calls this."""


def api_client(pool_manager: Any = None, host: str = "https://apiserver.test:6443"
               ) -> k8s.ApiClient:
    api = k8s.ApiClient(k8s.Configuration(host=host))
    if pool_manager is not None:
        api.rest_client.pool_manager = pool_manager
    return api


NO_POOL: Any = None
"""urllib3's errors name the pool or connection that raised them; these come from none."""
TRANSPORT_FAULTS = [
    pytest.param(MaxRetryError(NO_POOL, LEASES, NewConnectionError(
        NO_POOL, "Failed to establish a new connection: [Errno 111] Connection refused")),
        id="connection-refused"),
    pytest.param(ProtocolError("Connection aborted.", ConnectionResetError(104, "reset")),
                 id="connection-reset"),
    pytest.param(ReadTimeoutError(NO_POOL, LEASES, "Read timed out."), id="read-timeout"),
    pytest.param(SSLError("certificate verify failed"), id="tls"),
    pytest.param(OSError(24, "Too many open files"), id="os-error"),
    pytest.param(respond(b"<html>502 bad gateway</html>"), id="garbled-json"),
    pytest.param(respond({"code": 500, "message": "etcd timeout"}, 500), id="http-500"),
    pytest.param(RuntimeError("anything else"), id="any-exception"),
]


@pytest.mark.parametrize("fault", TRANSPORT_FAULTS)
async def test_a_transport_fault_costs_the_lease_for_a_while_never_the_elector(
    fault: Exception | urllib3.HTTPResponse,
) -> None:
    """Leads; the fault strikes; it reports 0 at the renew deadline; leads again once healed."""
    clock = FakeClock()
    server = LeaseServer(clock)
    api = api_client(server)
    stop = asyncio.Event()
    changes: list[bool] = []

    def on_change(leading: bool) -> None:
        changes.append(leading)
        if changes == [True]:
            server.fault = fault
        elif changes == [True, False]:
            server.fault = None
        else:
            stop.set()

    elector = Elector(KubeClient(api), "ns", "lease", ME, fast(TIMING), clock=clock,
                      on_change=on_change)
    running = asyncio.create_task(elector.run(stop))
    try:
        await asyncio.wait_for(stop.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.shield(running), 10)
        api.close()

    assert changes == [True, False, True, False]
    assert server.lease is not None and "holderIdentity" not in server.lease["spec"], (
        "the lease was not released on stop"
    )


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_the_elector_keeps_trying_while_the_apiserver_refuses_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="queuescaler.leader")
    api = api_client(host=f"http://127.0.0.1:{closed_port()}")
    stop = asyncio.Event()
    changes: list[bool] = []
    elector = Elector(KubeClient(api), "ns", "lease", ME,
                      LeaseTiming(duration_seconds=1, renew_deadline_seconds=0.5,
                                  retry_seconds=0.01),
                      on_change=changes.append)
    running = asyncio.create_task(elector.run(stop))

    await asyncio.sleep(0.5)

    assert not running.done(), running.exception()
    assert not elector.is_leader()
    stop.set()
    await asyncio.wait_for(running, 5)
    assert changes == []
    refused = [r.getMessage() for r in caplog.records if "Unreachable" in r.getMessage()
               or "refused" in r.getMessage()]
    assert len(refused) >= 3, caplog.text
    api.close()


class HangingPool:
    """A pool manager whose requests never return once `hang` is set (until `release`)."""

    def __init__(self, server: LeaseServer) -> None:
        self.server = server
        self.hang = threading.Event()
        self.release = threading.Event()

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        if self.hang.is_set():
            self.release.wait(30)
        return self.server.request(method, url, **kwargs)

    def clear(self) -> None:
        """ApiClient.close() calls this."""


@pytest.fixture
def hanging_pool() -> Iterator[HangingPool]:
    pool = HangingPool(LeaseServer(FakeClock()))
    yield pool
    pool.release.set()


async def test_a_call_that_hangs_does_not_keep_the_leader_gauge_at_one(
    hanging_pool: HangingPool,
) -> None:
    """Nothing in the call returns; at the renew deadline the elector says it no longer leads."""
    api = api_client(hanging_pool)
    stop = asyncio.Event()
    changes: list[bool] = []
    changed = asyncio.Event()

    def on_change(leading: bool) -> None:
        changes.append(leading)
        hanging_pool.hang.set()
        changed.set()

    timing = LeaseTiming(duration_seconds=2, renew_deadline_seconds=0.5, retry_seconds=0.05)
    elector = Elector(KubeClient(api), "ns", "lease", ME, timing, on_change=on_change)
    running = asyncio.create_task(elector.run(stop))
    await asyncio.wait_for(changed.wait(), 5)
    changed.clear()
    hung_at = time.monotonic()

    try:
        await asyncio.wait_for(changed.wait(), 5)
    finally:
        waited = time.monotonic() - hung_at
        hanging_pool.release.set()
        stop.set()
        await asyncio.wait_for(running, 10)
        api.close()

    assert changes[:2] == [True, False]
    assert waited < timing.renew_deadline_seconds + 2 * timing.retry_seconds + 0.5


def test_on_change_failing_does_not_end_the_elector() -> None:
    """A broken gauge must not stop the Lease loop: that is how leadership is lost for good."""
    clock = FakeClock()
    store = LeaseStore(clock, 0.0, other_alive=False)

    def broken(leading: bool) -> None:
        raise RuntimeError("gauge exploded")

    elector = Elector(store, "ns", "lease", ME, fast(TIMING), clock=clock,
                      on_change=broken)

    asyncio.run(run_for(elector, clock, fake_seconds=60))

    assert store.taken_at is not None

