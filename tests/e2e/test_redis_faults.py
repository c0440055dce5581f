"""End to end on Redis, the Secret's faults: a wrong password, and the wrong CA for the TLS
listener. The real operator process reads the session's redis-server (password and TLS
listener) through a QueueScaler whose queue holds a backlog worth three replicas.

While the Secret is wrong: BrokerReachable is False with a reason (auth) or a message (TLS)
that says why, a Warning Event says it too, the pool stays where it is (no scale on missing
data), and no password or CA text is in the Events, the status or the operator's log. Then
the Secret is fixed and the operator reads Redis again at its next samples: on an auth
failure the engine drops the Secret from its cache, so the fixed one is read at the next
poll; a TLS failure is not the Secret's by its kind (unreachable), so the fixed Secret is
read when the cache refreshes it (every 3 s in the session's operator) and then at the next
poll.

The session's operator refreshes Secrets every 3 s, which hides which of the two brought the
fixed one in. An operator of this module's own refreshes them every 300 s (as the chart
does; the CLI's default is 60): there, the auth fix is read within a poll (the cache was
dropped), and the TLS fix is not (an expected failure: nothing drops the cache on a TLS
failure yet).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.operator_process import (
    LONG_REFRESH_SECONDS,
    OperatorProcess,
    rarely_refreshing,
)
from queuescaler_testkit.pool import FAST_BEHAVIOR, Pool, deep_merge
from queuescaler_testkit.redis_server import RedisServer, session_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

DATABASE = 20
"""An e2e database (20 to 23); each test's queue has a name of its own, nothing is flushed."""
BACKLOG = 30
PER_REPLICA = 10
"""The backlog is worth three replicas; the pool starts at one."""
POLL_SECONDS = int(FAST_BEHAVIOR["pollingIntervalSeconds"])
SECRET_REFRESH_SECONDS = 3
"""The session operator's --secret-refresh-seconds (tests/conftest.py)."""
WATCH_SLACK = 3.0
"""From a status write to this test seeing it (kubectl round trips every 0.5 s, the write);
2.6 to 3.7 s from the fix to BrokerReachable True were measured at a 2 s poll."""
HELD_LOOKS = 5


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server, shared with the other Redis tests' fixtures."""
    with session_server() as server:
        yield server


@dataclass
class FaultPool(Pool):
    """A Deployment at one replica, a Celery queue with a backlog, a redis Secret."""

    redis: RedisServer | None = None

    def create(self, *, amqp_url: str | None = None, management_url: str | None = None) -> Pool:
        assert self.redis is not None
        self.queue = f"faults-{uuid.uuid4().hex[:8]}"
        with redis.Redis(port=self.redis.port, password=self.redis.password,
                         db=DATABASE) as admin:
            admin.rpush(self.queue, *[f"task-{n}" for n in range(BACKLOG)])
        self.apply({
            "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": self.name},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": {"app": self.name}},
                "template": {
                    "metadata": {"labels": {"app": self.name}},
                    "spec": {"containers": [{"name": "worker", "image": "worker:fake"}]},
                },
            },
        })
        return self

    def redis_secret(self, data: dict[str, str]) -> None:
        self.apply({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "redis"},
                    "stringData": data})

    def apply_scaler(self, **spec: Any) -> None:
        base: dict[str, Any] = {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": self.name},
            "minReplicas": 1,
            "maxReplicas": 4,
            "target": {"messagesPerReplica": PER_REPLICA},
            "source": {"redis": {"queue": self.queue, "connectionSecretRef": {"name": "redis"}}},
        }
        self.apply({
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": self.name},
            "spec": deep_merge(deep_merge(base, FAST_BEHAVIOR), spec),
        })

    def delete_queue(self) -> None:
        assert self.redis is not None
        with redis.Redis(port=self.redis.port, password=self.redis.password,
                         db=DATABASE) as admin:
            admin.delete(self.queue)


@pytest.fixture
def pool(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, redis_server: RedisServer
) -> Iterator[FaultPool]:
    created = FaultPool(testenv, namespace, redis=redis_server)
    created.create()
    try:
        yield created
    finally:
        created.delete_queue()


LONG_REFRESH_PREFIX = "rf-"
"""The namespaces of this module's own operator (the session's watches t-*)."""


@pytest.fixture(scope="module")
def long_refresh_operator(
    testenv: TestEnv, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_dir = tmp_path_factory.mktemp(f"operator-{LONG_REFRESH_PREFIX}")
    yield from rarely_refreshing(testenv, log_dir, LONG_REFRESH_PREFIX)


@pytest.fixture
def long_refresh_pool(
    testenv: TestEnv, long_refresh_operator: OperatorProcess, redis_server: RedisServer
) -> Iterator[FaultPool]:
    namespace = f"{LONG_REFRESH_PREFIX}{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", namespace)
    created = FaultPool(testenv, namespace, redis=redis_server)
    created.create()
    try:
        yield created
    finally:
        created.delete_queue()
        testenv.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


@dataclass
class Fault:
    condition: dict[str, Any]
    warnings: list[dict[str, Any]]
    held: list[int]
    recovered_seconds: float
    """From the fixed Secret's apply to BrokerReachable True seen."""
    scaled_seconds: float
    """From the fixed Secret's apply to the pool at three replicas."""


def _fault_then_fix(
    pool: FaultPool, wrong: dict[str, str], right: dict[str, str], secrets: list[str],
    operator: OperatorProcess, recover_within: float = 30.0,
    refresh: int = SECRET_REFRESH_SECONDS,
) -> Fault:
    pool.redis_secret(wrong)
    pool.apply_scaler()
    condition = pool.wait_condition("BrokerReachable", "False", timeout=30)
    held: list[int] = []

    def looked() -> bool:
        held.append(pool.replicas())
        return len(held) >= HELD_LOOKS

    # Five looks a poll apart: the operator sampled (and failed) about five more times.
    wait_until(looked, timeout=30, what="looks at the pool while the Secret is wrong",
               every=POLL_SECONDS)
    warnings = wait_until(
        lambda: [e for e in pool.events() if e.get("type") == "Warning"], timeout=15,
        what="a Warning Event",
    )
    ready = pool.condition("Ready")
    assert ready is not None and ready["status"] == "False", ready
    seen = str(pool.events()) + str(pool.scaler()) + operator.log()
    leaked = [n for n, text in enumerate(secrets) if text in seen]
    assert leaked == [], f"secret texts {leaked} found in the Events, status or log"

    pool.redis_secret(right)
    fixed = time.monotonic()
    pool.wait_condition("BrokerReachable", "True", timeout=recover_within)
    recovered = time.monotonic() - fixed
    wait_until(lambda: pool.replicas() == 3, timeout=30, what="the backlog read: 3 replicas",
               every=0.2)
    scaled = time.monotonic() - fixed
    fault = Fault(condition, warnings, held, recovered, scaled)
    print(
        f"BrokerReachable while wrong: {condition.get('reason')}: {condition.get('message')}\n"
        f"warnings: {[(e.get('reason'), e.get('message')) for e in warnings]}\n"
        f"replicas while wrong: {held}; fixed Secret -> BrokerReachable True in "
        f"{recovered:.1f} s, -> 3 replicas in {scaled:.1f} s (polling every {POLL_SECONDS} s,"
        f" Secrets refreshed every {refresh} s)"
    )
    return fault


def test_a_wrong_redis_password_is_told_holds_the_pool_and_the_fixed_secret_is_read_at_once(
    pool: FaultPool, redis_server: RedisServer, operator: OperatorProcess,
) -> None:
    url = f"redis://127.0.0.1:{redis_server.port}/{DATABASE}"
    wrong_password = "qs-wrong-" + uuid.uuid4().hex
    fault = _fault_then_fix(
        pool, {"redisUrl": url, "password": wrong_password},
        {"redisUrl": url, "password": redis_server.password},
        [wrong_password, redis_server.password], operator,
    )
    assert fault.condition["reason"] == "Auth", fault.condition
    assert "credentials" in fault.condition["message"], fault.condition
    assert any(e.get("reason") == "Auth" for e in fault.warnings), fault.warnings
    assert set(fault.held) == {1}, f"the pool moved on missing data: {fault.held}"
    # The auth failure dropped the Secret from the cache: the next poll reads the fixed one.
    assert fault.recovered_seconds <= POLL_SECONDS + WATCH_SLACK, fault
    final = pool.condition("BrokerReachable")
    assert final is not None and final["status"] == "True", final


def test_the_wrong_ca_for_redis_tls_is_told_holds_the_pool_and_the_fixed_secret_is_read(
    pool: FaultPool, redis_server: RedisServer, operator: OperatorProcess,
) -> None:
    url = f"{redis_server.tls_url}/{DATABASE}"
    base = {"redisUrl": url, "password": redis_server.password}
    fault = _fault_then_fix(
        pool, base | {"ca.crt": redis_server.wrong_ca_cert},
        base | {"ca.crt": redis_server.ca_cert},
        [redis_server.password, *_pem_lines(redis_server.wrong_ca_cert),
         *_pem_lines(redis_server.ca_cert)],
        operator,
    )
    # A TLS failure has its own kind, fixed in the Secret like a refused password.
    assert fault.condition["reason"] == "TlsFailed", fault.condition
    assert "TLS failed" in fault.condition["message"], fault.condition
    assert "certificate verify failed" in fault.condition["message"], fault.condition
    assert any("TLS failed" in str(e.get("message")) for e in fault.warnings), fault.warnings
    assert set(fault.held) == {1}, f"the pool moved on missing data: {fault.held}"
    # The Secret is read again at once (Plan.reread_secret), as for a refused password.
    assert fault.recovered_seconds <= POLL_SECONDS + WATCH_SLACK, fault


def _pem_lines(pem: str) -> list[str]:
    """The base64 lines of a PEM certificate (its header and footer are no secret)."""
    return [line for line in pem.splitlines() if line and not line.startswith("-----")]


def test_an_auth_failure_drops_the_secret_from_the_cache_so_the_fix_is_read_at_the_next_poll(
    long_refresh_pool: FaultPool, redis_server: RedisServer,
    long_refresh_operator: OperatorProcess,
) -> None:
    """With Secrets refreshed every 300 s, only the cache dropped on the auth failure can
    bring the fixed Secret in within a poll."""
    url = f"redis://127.0.0.1:{redis_server.port}/{DATABASE}"
    wrong_password = "qs-wrong-" + uuid.uuid4().hex
    fault = _fault_then_fix(
        long_refresh_pool, {"redisUrl": url, "password": wrong_password},
        {"redisUrl": url, "password": redis_server.password},
        [wrong_password, redis_server.password], long_refresh_operator,
        refresh=LONG_REFRESH_SECONDS,
    )
    assert fault.condition["reason"] == "Auth", fault.condition
    assert set(fault.held) == {1}, f"the pool moved on missing data: {fault.held}"
    assert fault.recovered_seconds <= POLL_SECONDS + WATCH_SLACK, fault


def test_a_tls_failure_drops_the_secret_from_the_cache_so_the_fix_is_read_at_the_next_poll(
    long_refresh_pool: FaultPool, redis_server: RedisServer,
    long_refresh_operator: OperatorProcess,
) -> None:
    url = f"{redis_server.tls_url}/{DATABASE}"
    base = {"redisUrl": url, "password": redis_server.password}
    fault = _fault_then_fix(
        long_refresh_pool, base | {"ca.crt": redis_server.wrong_ca_cert},
        base | {"ca.crt": redis_server.ca_cert},
        [redis_server.password, *_pem_lines(redis_server.wrong_ca_cert)],
        long_refresh_operator, recover_within=3 * (POLL_SECONDS + WATCH_SLACK),
        refresh=LONG_REFRESH_SECONDS,
    )
    assert fault.recovered_seconds <= POLL_SECONDS + WATCH_SLACK, fault
