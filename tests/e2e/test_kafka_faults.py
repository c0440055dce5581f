"""End to end on Kafka, the faults: the broker restarted, a topic that does not exist yet, a
group that never committed, and wrong credentials on the SASL listener. The real operator
process reads the session's broker through QueueScalers whose pods run nothing: the test
moves the lag itself (commits as a member-less group, produces), so every replica count
seen is the scaler's doing.

While data is missing (the broker gone, the topic missing, the password refused) a condition
says why, a Warning Event says it too, and the pool stays where it is: never scaled on
missing data, not even down to a minReplicas of zero. Once the fault is gone the operator
reads the broker again within a poll or two and sizes the pool on what it reads.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.kafka_pool import KafkaPool
from queuescaler_testkit.kafka_server import KafkaServer
from queuescaler_testkit.operator_process import (
    OperatorProcess,
    rarely_refreshing,
)
from queuescaler_testkit.pool import FAST_BEHAVIOR

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

POLL_SECONDS = int(FAST_BEHAVIOR["pollingIntervalSeconds"])
HELD_LOOKS = 4
"""Looks at the pool a poll apart while data is missing: the operator failed as often."""
PER_REPLICA = 10


def _held(pool: KafkaPool) -> list[int]:
    """The pool's replica count at HELD_LOOKS looks, a poll apart."""
    seen: list[int] = []

    def looked() -> bool:
        seen.append(pool.replicas())
        return len(seen) >= HELD_LOOKS

    wait_until(looked, timeout=HELD_LOOKS * POLL_SECONDS + 10, what="looks at the pool",
               every=POLL_SECONDS)
    return seen


def _warnings(pool: KafkaPool, reason: str) -> list[dict[str, Any]]:
    return wait_until(
        lambda: [e for e in pool.events()
                 if e.get("type") == "Warning" and e.get("reason") == reason],
        timeout=15, what=f"a Warning Event {reason}",
    )


def _lag_on(pool: KafkaPool, partitions: range, per_partition: int = PER_REPLICA) -> None:
    """`per_partition` messages waiting on each of `partitions`, the group committed at its
    current end everywhere else (it must have no member)."""
    ends = {p: end for p, (_, end) in pool.server.offsets(pool.queue).items()}
    pool.commit(ends)
    pool.produce(per_partition, partitions, tag=uuid.uuid4().hex[:4])


def test_a_broker_restart_is_told_holds_the_pool_and_is_read_again_once_back(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
) -> None:
    pool = KafkaPool(testenv, namespace, kafka=kafka_server, partitions=4).create()
    try:
        _lag_on(pool, range(2))
        pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": PER_REPLICA})
        wait_until(lambda: pool.replicas() == 2, timeout=30, what="two replicas for two lags")
        pool.wait_condition("BrokerReachable", "True")

        with kafka_server.stopped():
            gone = pool.wait_condition("BrokerReachable", "False", timeout=30)
            held = _held(pool)
            ready = pool.condition("Ready")
        back = time.monotonic()
        pool.wait_condition("BrokerReachable", "True", timeout=30)
        recovered = time.monotonic() - back
        warnings = _warnings(pool, gone["reason"])

        _lag_on(pool, range(4))  # read on the restarted broker: the pool follows it
        wait_until(lambda: pool.replicas() == 4, timeout=30, what="four replicas after it")
    finally:
        pool.delete_queue()
    print(f"kafka restart: {gone['reason']}: {gone['message']}\nreplicas while away: {held};"
          f" BrokerReachable True {recovered:.1f} s after the broker was back"
          f" (polling every {POLL_SECONDS} s)")
    assert gone["reason"] == "Unreachable", gone
    assert kafka_server.bootstrap in gone["message"], gone
    assert ready is not None and ready["status"] == "False", ready
    assert set(held) == {2}, f"the pool moved on missing data: {held}"
    assert warnings, pool.events()


def test_a_missing_topic_is_told_holds_the_pool_and_its_creation_is_read(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
) -> None:
    pool = KafkaPool(testenv, namespace, kafka=kafka_server, partitions=3, initial_replicas=1,
                     with_topic=False).create()
    try:
        pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": PER_REPLICA})
        missing = pool.wait_condition("Ready", "False", reason="QueueNotFound", timeout=30)
        reachable = pool.condition("BrokerReachable")
        held = _held(pool)
        warnings = _warnings(pool, "QueueNotFound")
        assert pool.queue not in kafka_server.topics()  # asking created nothing

        pool.create_topic()
        _lag_on(pool, range(3))
        pool.wait_condition("Ready", "True", timeout=30)
        wait_until(lambda: pool.replicas() == 3, timeout=30, what="three replicas for the lag")
    finally:
        pool.delete_queue()
    print(f"kafka missing topic: {missing['message']}\nreplicas meanwhile: {held}")
    assert f"topic {pool.queue!r} does not exist" in missing["message"], missing
    # The broker answered: it is the topic that is missing, not the broker.
    assert reachable is not None and reachable["status"] == "True", reachable
    assert set(held) == {1}, f"the pool moved on missing data: {held}"
    assert warnings, pool.events()


@pytest.mark.parametrize(
    ("policy", "backlog", "replicas", "said"),
    [
        pytest.param("latest", 0, 0, "count as read (offsetResetPolicy latest)",
                     id="latest-no-lag"),
        pytest.param("earliest", 30, 3, "count from the log start (offsetResetPolicy earliest)",
                     id="earliest-lag-from-the-log-start"),
    ],
)
def test_a_group_that_never_committed_lags_as_its_reset_policy_says(
    testenv: TestEnv, namespace: str, operator: OperatorProcess, kafka_server: KafkaServer,
    policy: str, backlog: int, replicas: int, said: str,
) -> None:
    """30 messages on three partitions, the group has never committed: a consumer of it would
    start at the end (latest: nothing to do) or at the log start (earliest: all 30)."""
    pool = KafkaPool(testenv, namespace, kafka=kafka_server, partitions=3).create()
    try:
        pool.produce(10)
        pool.apply_scaler(minReplicas=0, target={"messagesPerReplica": PER_REPLICA},
                          source={"kafka": {"offsetResetPolicy": policy}})
        ready = pool.wait_condition("Ready", "True", timeout=30)
        if replicas:
            wait_until(lambda: pool.replicas() == replicas, timeout=30,
                       what=f"{replicas} replicas")
            held = [pool.replicas()]
        else:
            held = _held(pool)
        status = pool.status()
    finally:
        pool.delete_queue()
    print(f"kafka never committed, {policy}: backlog {status.get('backlog')}, replicas {held}")
    assert said in ready["message"], ready
    assert status["backlog"]["total"] == backlog, status
    assert set(held) == {replicas}, held
    assert pool.server.committed(pool.group) == {}  # the scaler committed nothing either


LONG_REFRESH_PREFIX = "kr-"
"""The namespaces of this module's own operator (the session's watches t-*)."""


@pytest.fixture(scope="module")
def long_refresh_operator(
    testenv: TestEnv, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    log_dir = tmp_path_factory.mktemp(f"operator-{LONG_REFRESH_PREFIX}")
    yield from rarely_refreshing(testenv, log_dir, LONG_REFRESH_PREFIX)


@pytest.fixture
def refresh_namespace(testenv: TestEnv, long_refresh_operator: OperatorProcess) -> Iterator[str]:
    name = f"{LONG_REFRESH_PREFIX}{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", name)
    yield name
    testenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_wrong_sasl_credentials_are_told_hold_the_pool_and_the_fixed_secret_is_read_at_once(
    testenv: TestEnv, refresh_namespace: str, long_refresh_operator: OperatorProcess,
    kafka_server: KafkaServer,
) -> None:
    """SCRAM-SHA-512 with a wrong password on the SASL listener. The operator refreshes
    Secrets every 300 s: only the auth failure, which drops the Secret from its cache, brings
    the fixed one in at the next poll."""
    operator, namespace = long_refresh_operator, refresh_namespace
    user, password = kafka_server.credentials("SCRAM-SHA-512")
    wrong = "qs-wrong-" + uuid.uuid4().hex
    secret = {"bootstrapServers": kafka_server.sasl_bootstrap, "sasl": "scram-sha-512",
              "username": user}
    pool = KafkaPool(testenv, namespace, kafka=kafka_server, partitions=3, initial_replicas=1,
                     secret_data=secret | {"password": wrong}).create()
    try:
        _lag_on(pool, range(3))
        pool.apply_scaler(minReplicas=1, target={"messagesPerReplica": PER_REPLICA})
        refused = pool.wait_condition("BrokerReachable", "False", timeout=30)
        held = _held(pool)
        warnings = _warnings(pool, "Auth")
        ready = pool.condition("Ready")
        seen = str(pool.events()) + str(pool.scaler()) + operator.log()

        pool.kafka_secret(secret | {"password": password})
        fixed = time.monotonic()
        pool.wait_condition("BrokerReachable", "True", timeout=30)
        recovered = time.monotonic() - fixed
        wait_until(lambda: pool.replicas() == 3, timeout=30, what="the lag read: 3 replicas")
    finally:
        pool.delete_queue()
    print(f"kafka wrong password: {refused['reason']}: {refused['message']}\n"
          f"replicas meanwhile: {held}; fixed Secret -> BrokerReachable True in"
          f" {recovered:.1f} s (polling every {POLL_SECONDS} s)")
    assert refused["reason"] == "Auth", refused
    assert "refused the credentials" in refused["message"], refused
    assert ready is not None and ready["status"] == "False", ready
    assert set(held) == {1}, f"the pool moved on missing data: {held}"
    assert warnings, pool.events()
    assert wrong not in seen and password not in seen, "a password in the Events, status or log"
    # Read back within wait_condition's 30 s, not the 300 s refresh: the auth failure dropped
    # the Secret from the cache (measured: about a poll).
