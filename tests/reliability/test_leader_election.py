"""High availability: two operator processes with `--leader-election`, one Lease, one actor.

SIGKILL of the leader hands over once the Lease expires (15 s); SIGTERM releases the Lease,
so the standby takes over without waiting. Every scale is made once: the scale Events on the
QueueScaler, those on the Deployment and the acting replicas' log lines agree one to one,
and they chain (each starts where the previous ended). With the apiserver gone (connections
refused), every replica reports it does not lead, and one leads again once it is back.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory
from reliability.envctl import OperatorFactory, kwokctl
from reliability.scenario import (
    BrokerUser,
    describe,
    leaks,
    parse_time,
    record,
    scale_events,
    start_run,
    tracebacks,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

LEASE = "queuescaler"
LEADER = re.compile(r"^queuescaler_leader (\S+)$", re.M)


def identity(process: OperatorProcess) -> str:
    """What cli.py names a replica without POD_NAME: host and PID."""
    assert process.process is not None
    return f"{socket.gethostname()}-{process.process.pid}"


def leads(process: OperatorProcess) -> bool:
    if process.process is None or process.process.poll() is not None:
        return False
    match = LEADER.search(process.metrics())
    return bool(match and float(match.group(1)) == 1.0)


def lease(env: TestEnv, namespace: str) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(
        env.kubectl("get", "lease", LEASE, "-n", namespace, "-o", "json").stdout
    )["spec"]
    return spec


def the_leader(replicas: list[OperatorProcess]) -> OperatorProcess | None:
    leading = [r for r in replicas if leads(r)]
    assert len(leading) <= 1, "two replicas lead at once"
    return leading[0] if leading else None


def scale_lines(process: OperatorProcess, namespace: str, name: str) -> int:
    return process.log().count(f"{namespace}/{name} scaled ")


def test_two_replicas_one_acts_kill_and_term_hand_over_and_nothing_scales_twice(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory, pod_runners: PodRunnerFactory, tmp_path: Path,
) -> None:
    ns = fault_namespace
    args = ("--leader-election", "--leader-election-namespace", ns,
            "--leader-election-name", LEASE)
    first, second = start_operator(ns, args=args), start_operator(ns, args=args)
    replicas = [first, second]
    leader = wait_until(lambda: the_leader(replicas), timeout=30, what="one leader")
    standby = second if leader is first else first
    assert not leads(standby)
    assert lease(faultenv, ns)["holderIdentity"] == identity(leader)

    run = start_run(faultenv, ns, broker_user, pod_runners, tmp_path, "ha", work_seconds=0.2,
                    minReplicas=1, maxReplicas=4, target={"messagesPerReplica": 20})
    run.publish(150)
    wait_until(lambda: scale_lines(leader, ns, "ha") >= 2, timeout=60,
               what="the leader scaling the pool")
    assert scale_lines(standby, ns, "ha") == 0, "the standby scaled"

    # SIGKILL: nobody releases the Lease; the standby takes it once it expires.
    before_kill = lease(faultenv, ns)
    leader.stop(kill=True)
    wait_until(lambda: the_leader(replicas) is standby, timeout=60,
               what="the standby to take over after the Lease expired")
    after_kill = lease(faultenv, ns)
    assert after_kill["holderIdentity"] == identity(standby)
    assert after_kill["leaseTransitions"] == before_kill.get("leaseTransitions", 0) + 1
    waited_after_kill = parse_time(after_kill["acquireTime"]) - parse_time(
        before_kill["renewTime"])
    assert waited_after_kill >= before_kill["leaseDurationSeconds"] - 1, (
        "the Lease was taken before it expired"
    )
    run.publish(150)
    try:
        wait_until(lambda: scale_lines(standby, ns, "ha") >= 1, timeout=120,
                   what="the new leader scaling (up with the new work, or down once drained)")
    except AssertionError as error:
        raise AssertionError(f"{error}{describe(run.pool)}\n{standby.log()[-3000:]}") from None

    # A third replica joins as standby; SIGTERM of the leader releases the Lease at once.
    third = start_operator(ns, args=args)
    replicas.append(third)
    assert the_leader(replicas) is standby
    before_term = lease(faultenv, ns)
    assert standby.stop() == 0
    wait_until(lambda: the_leader(replicas) is third, timeout=60,
               what="the third replica to take over after SIGTERM")
    after_term = lease(faultenv, ns)
    assert after_term["holderIdentity"] == identity(third)
    waited_after_term = parse_time(after_term["acquireTime"]) - parse_time(
        before_term["renewTime"])
    assert waited_after_term < before_term["leaseDurationSeconds"], (
        "the standby waited for expiry: the Lease was not released on SIGTERM"
    )
    run.publish(150)
    wait_until(lambda: scale_lines(third, ns, "ha") >= 1, timeout=90,
               what="the third replica scaling")
    run.wait_all_processed()

    # Nothing scaled twice: Events on both objects and log lines agree, and they chain.
    on_scaler = scale_events(run.pool)
    on_target = scale_events(run.pool, "Deployment")
    logged = sum(scale_lines(r, ns, "ha") for r in replicas)
    assert len(on_scaler) == len(on_target) == logged, (on_scaler, on_target, logged)
    steps = [(e.old, e.new) for e in on_scaler]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(steps)), steps
    found, places = leaks(faultenv, broker_user, [ns], replicas)
    traces = [t for r in replicas for t in tracebacks(r.log())]
    record("leader election: SIGKILL then SIGTERM of the leader", messages=len(run.ids),
           lost=len(run.lost()), redelivered=run.redelivered(), scale_events=len(on_scaler),
           handovers=2, takeover_after_kill_seconds=round(waited_after_kill, 1),
           takeover_after_term_seconds=round(waited_after_term, 1),
           leak_places_scanned=places, leaks=len(found), tracebacks=len(traces))
    run.close()
    assert not run.lost()
    assert not found, found
    assert not traces, traces


def test_with_the_apiserver_gone_no_replica_leads_and_one_leads_again_once_it_is_back(
    faultenv: TestEnv, fault_namespace: str, start_operator: OperatorFactory,
    cluster_restarted: Callable[[], float],
) -> None:
    """A refused connection is no API error: it once ended the elector, and nobody led again."""
    ns = fault_namespace
    args = ("--leader-election", "--leader-election-namespace", ns,
            "--leader-election-name", LEASE)
    replicas = [start_operator(ns, args=args), start_operator(ns, args=args)]
    wait_until(lambda: the_leader(replicas), timeout=30, what="one leader")
    try:
        try:
            kwokctl(faultenv, "stop", "cluster")
            stopped = time.monotonic()
            wait_until(lambda: not any(leads(r) for r in replicas), timeout=30,
                       what="the leader to report 0 once it could not renew (deadline 10 s)")
            gauge_zero_after = time.monotonic() - stopped
            assert all(r.process is not None and r.process.poll() is None for r in replicas)
        finally:
            kwokctl(faultenv, "start", "cluster")
        wait_until(lambda: faultenv.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
                   timeout=120, what="the faults apiserver to be ready")
        answered = time.monotonic()
        leader = wait_until(lambda: the_leader(replicas), timeout=60,
                            what="one replica to lead again after the apiserver came back")
        led_again_after = time.monotonic() - answered
    finally:
        cluster_restarted()  # the node Leases handed over, for the tests after this one
    assert lease(faultenv, ns)["holderIdentity"] == identity(leader)
    traces = [t for r in replicas for t in tracebacks(r.log())]
    record("leader election: apiserver stopped and started", handovers=1,
           gauge_zero_after_seconds=round(gauge_zero_after, 1),
           led_again_after_seconds=round(led_again_after, 1), tracebacks=len(traces))
    assert not traces, traces
