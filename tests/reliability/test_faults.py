"""Faults during a scaling run with real consumers, in the separate `faults` environment.

Each scenario runs two pools under load (reconnecting pika workers, every message id
tracked): `hold` has no fallback count (the pool must hold, never drop to zero), `fallback`
has `fallback: {afterFailures: 2, replicas: 2}` (it must go to exactly 2). While the fault
lasts the pools must say so (BrokerReachable=False with the fault's reason, a Warning Event);
when it ends they recover, every message is processed at least once, and the distinctive
password shows up nowhere.
"""

from __future__ import annotations

import itertools
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.faultproxy import FaultProxy, Mode
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory
from reliability.envctl import OperatorFactory, faultenv_sh, kwokctl
from reliability.scenario import (
    BrokerUser,
    Run,
    ScaleEvent,
    describe,
    leaks,
    parse_time,
    record,
    scale_events,
    start_run,
    tracebacks,
    warning_reasons,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

POLL = 2
"""pollingIntervalSeconds of every pool here (FAST_BEHAVIOR's)."""
LOAD: dict[str, Any] = {"maxReplicas": 4, "target": {"messagesPerReplica": 20}}
HOLD: dict[str, Any] = {**LOAD, "minReplicas": 0, "fallback": {"afterFailures": 2}}
FALLBACK_REPLICAS = 2
FALLBACK: dict[str, Any] = {
    **LOAD, "minReplicas": 1, "fallback": {"afterFailures": 2, "replicas": FALLBACK_REPLICAS},
    # A fallback below the current count needs the protection off: while the broker cannot
    # be sampled, busy workers cannot be told apart, and protection fails closed (holds).
    "behavior": {"scaleDown": {"protectBusyWorkers": False}},
}


def _two_pools(
    env: TestEnv, namespace: str, user: BrokerUser, runners: PodRunnerFactory, tmp: Path,
    *, management_port: int | None = None, messages: int = 300,
) -> tuple[Run, Run]:
    runs = tuple(
        start_run(env, namespace, user, runners, tmp, name, management_port=management_port,
                  work_seconds=0.3, **spec)
        for name, spec in (("hold", HOLD), ("fallback", FALLBACK))
    )
    if messages:
        _loaded(runs, messages)
    return runs[0], runs[1]


def _loaded(runs: tuple[Run, ...], messages: int) -> None:
    """Publish `messages` to each pool and wait until each works with 2 replicas or more."""
    for run in runs:
        run.publish(messages)
    for run in runs:
        wait_until(lambda r=run: r.pool.replicas() >= 2, timeout=60,  # type: ignore[misc]
                   what=f"{run.pool.name} scaling up under load")


def _through_fault(runs: tuple[Run, Run], reason: str, *, failed_ticks: int = 3) -> int:
    """While the fault lasts, for both pools at once: the condition, the Warning Event, and
    a hold (`hold`) or the fallback count (`fallback`).

    Returns the replica count `hold` kept.
    """
    hold, fallback = (run.pool for run in runs)
    hold.wait_condition("BrokerReachable", "False", reason=reason, timeout=90)
    hold.wait_condition("Ready", "False", reason=reason, timeout=30)
    # Read at hold's first failed tick: from then on its count must not move.
    kept = {hold.name: hold.replicas(), fallback.name: FALLBACK_REPLICAS}
    assert kept[hold.name] > 0, "a pool went to zero because the broker could not be sampled"
    seen: dict[str, set[int]] = {hold.name: set(), fallback.name: set()}
    fallback.wait_condition("BrokerReachable", "False", reason=reason, timeout=90)
    fallback.wait_condition("Ready", "False", reason=reason, timeout=30)

    def at_fallback() -> bool:
        seen[hold.name].add(hold.replicas())
        return bool(fallback.replicas() == FALLBACK_REPLICAS
                    and fallback.status()["lastDecision"]["reason"] == "fallback")

    wait_until(at_fallback, timeout=60,
               what=f"{fallback.name} at its fallback count {FALLBACK_REPLICAS}")
    failures = {pool.name: pool.status()["consecutiveFailures"] for pool in (hold, fallback)}

    def more_failed_ticks() -> bool:
        for pool in (hold, fallback):
            seen[pool.name].add(pool.replicas())
        return all(pool.status()["consecutiveFailures"] >= failures[pool.name] + failed_ticks
                   for pool in (hold, fallback))

    try:
        wait_until(more_failed_ticks, timeout=90, what=f"{failed_ticks} more failed ticks")
    except AssertionError as error:
        # The count is a slow field, rewritten every 30 s while nothing else changes.
        raise AssertionError(f"{error} (consecutiveFailures was {failures})"
                             f"{describe(hold)}{describe(fallback)}") from None
    for pool, expected in ((hold, {"no-data"}), (fallback, {"fallback"})):
        assert seen[pool.name] == {kept[pool.name]}, (
            f"{pool.name} changed from {kept[pool.name]} to {seen[pool.name]} while blind")
        decision = pool.status()["lastDecision"]
        assert decision["reason"] in expected, f"{pool.name}: {decision}"
        wait_until(lambda p=pool: reason in warning_reasons(p), timeout=30,  # type: ignore[misc]
                   what=f"a Warning Event {reason} on {pool.name} "
                        f"(Warnings seen: {sorted(warning_reasons(pool))})")
    return kept[hold.name]


def _recovery_seconds(runs: tuple[Run, ...], ended: float) -> float:
    """Seconds from the fault's end until every pool's broker is reachable again."""
    for run in runs:
        try:
            run.pool.wait_condition("BrokerReachable", "True", timeout=60)
            run.pool.wait_condition("Ready", "True", timeout=30)
        except AssertionError as error:
            raise AssertionError(f"{error}{describe(run.pool)}") from None
    return time.monotonic() - ended


def _finish(
    scenario: str, env: TestEnv, user: BrokerUser, namespace: str,
    operators: list[OperatorProcess], runs: tuple[Run, ...], **numbers: Any,
) -> None:
    for run in runs:
        run.wait_all_processed()
    lost = sum(len(run.lost()) for run in runs)
    found, places = leaks(env, user, [namespace], operators)
    traces = [t for process in operators for t in tracebacks(process.log())]
    record(scenario, messages=sum(len(r.ids) for r in runs), lost=lost,
           redelivered=sum(r.redelivered() for r in runs), leak_places_scanned=places,
           leaks=len(found), tracebacks=len(traces), **numbers)
    for run in runs:
        run.close()
    assert lost == 0
    assert not found, found
    assert not traces, traces


def test_broker_stopped_and_restarted_holds_or_falls_back_then_recovers_losing_nothing(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory, pod_runners: PodRunnerFactory, tmp_path: Path,
) -> None:
    operator = start_operator(fault_namespace)
    hold, fallback = _two_pools(faultenv, fault_namespace, broker_user, pod_runners, tmp_path)
    try:
        faultenv_sh("down", "rabbitmq")
        kept = _through_fault((hold, fallback), "Unreachable")
    finally:
        faultenv_sh("up", "rabbitmq")  # returns once the management API answers
    recovered = _recovery_seconds((hold, fallback), time.monotonic())
    for run in (hold, fallback):
        run.publish(40)  # work after the restart is picked up too
    _finish("broker stopped and restarted", faultenv, broker_user, fault_namespace, [operator],
            (hold, fallback), held_at=kept, recovery_seconds=round(recovered, 1),
            recovery_ticks=round(recovered / POLL, 1))


def test_slow_and_failing_management_api_gives_timeout_then_bad_response_and_recovers(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory, pod_runners: PodRunnerFactory, tmp_path: Path,
) -> None:
    operator = start_operator(fault_namespace)
    with FaultProxy("127.0.0.1", broker_user.management_port) as proxy:
        runs = _two_pools(faultenv, fault_namespace, broker_user, pod_runners, tmp_path,
                          management_port=proxy.port, messages=0)
        recoveries: dict[str, float] = {}
        for mode, reason, ticks in ((Mode.SLOW, "Timeout", 2), (Mode.ERROR, "BadResponse", 3)):
            _loaded(runs, 150)  # each fault hits a pool at work
            # Right before the fault, one answer without statistics (as for a queue too new to
            # have any): the live counts that stand in for it must not outlast it.
            answered_without = proxy.count(Mode.NO_STATS)
            proxy.mode = Mode.NO_STATS
            wait_until(lambda n=answered_without: proxy.count(Mode.NO_STATS) > n,  # type: ignore[misc]
                       timeout=30, what="the operator to sample the queues without statistics")
            proxy.mode = mode
            _through_fault(runs, reason, failed_ticks=ticks)
            proxy.mode = Mode.PASS
            recoveries[reason] = _recovery_seconds(runs, time.monotonic())
        answered = {mode.value: proxy.count(mode) for mode in Mode}
    _finish("management API slow (8 s) then HTTP 500 echoing credentials", faultenv,
            broker_user, fault_namespace, [operator], runs, proxy_answers=answered,
            recovery_seconds={k: round(v, 1) for k, v in recoveries.items()})
    assert answered["slow"] > 0 and answered["error"] > 0


def test_apiserver_stopped_and_started_loses_no_state_and_acts_again(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory, pod_runners: PodRunnerFactory, tmp_path: Path,
    cluster_restarted: Callable[[], float],
) -> None:
    operator = start_operator(fault_namespace)
    run = start_run(faultenv, fault_namespace, broker_user, pod_runners, tmp_path, "api",
                    work_seconds=0.3, minReplicas=1, maxReplicas=2,
                    target={"messagesPerReplica": 20})
    run.publish(300)
    wait_until(lambda: run.pool.replicas() == 2, timeout=60, what="the pool at its maximum")
    before = run.pool.scaler()
    try:
        kwokctl(faultenv, "stop", "cluster")
        run.publish(100)  # the broker is up: work arrives while the apiserver is away
        wait_until(lambda: faultenv.kubectl("get", "--raw", "/readyz", check=False).returncode,
                   timeout=30, what="the apiserver to be down")
        # Bounded wait on something observable: the operator's own failing request to the
        # apiserver (kopf's retried watch, a failed write) shows in its log. Any other new
        # line would not say the operator noticed.
        size = len(operator.log())
        wait_until(lambda: APISERVER_GONE.search(operator.log()[size:]), timeout=60,
                   what="the operator to notice the apiserver is gone")
    finally:
        kwokctl(faultenv, "start", "cluster")
    ended = cluster_restarted()
    after = run.pool.scaler()
    assert after["metadata"]["uid"] == before["metadata"]["uid"], "the QueueScaler was lost"
    assert after["status"]["lastScaleTime"] == before["status"]["lastScaleTime"]
    assert run.pool.replicas() == 2, "scaled while the apiserver was away?"
    # Acting again: a spec change made after the restart is seen and carried out.
    run.pool.apply_scaler(minReplicas=1, maxReplicas=4, target={"messagesPerReplica": 20})
    generation = run.pool.scaler()["metadata"]["generation"]
    wait_until(lambda: run.pool.status().get("observedGeneration") == generation, timeout=90,
               what="the operator to observe the new generation after the restart")
    recovered = time.monotonic() - ended
    # Work published now needs the new maximum (what arrived during the outage may be
    # done already: the workers never stopped).
    run.publish(300)
    wait_until(lambda: run.pool.replicas() > 2, timeout=60, what="scaling after the restart")
    _finish("apiserver stopped and started (kwokctl)", faultenv, broker_user,
            fault_namespace, [operator], (run,), recovery_seconds=round(recovered, 1),
            recovery_ticks=round(recovered / POLL, 1))


COOLDOWN = 10
APISERVER_GONE = re.compile(r"Request attempt \d+ failed|not written|[Rr]efused|Unreachable")
"""What the operator logs when a request to the apiserver fails."""


def test_operator_killed_repeatedly_never_scales_before_the_stored_cooldown(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory, pod_runners: PodRunnerFactory, tmp_path: Path,
) -> None:
    operator = start_operator(fault_namespace)
    run = start_run(
        faultenv, fault_namespace, broker_user, pod_runners, tmp_path, "killed",
        work_seconds=0.3, minReplicas=1, maxReplicas=5, target={"messagesPerReplica": 10},
        behavior={"scaleUp": {"cooldownSeconds": COOLDOWN, "maxStepReplicas": 1,
                              "maxStepPercent": 1}},
    )
    run.publish(600)
    kills = 0
    gaps: list[float] = []

    def ups() -> list[ScaleEvent]:
        return [e for e in scale_events(run.pool) if e.reason == "ScaledUp"]

    stored: float | None = None
    at_kill = 0
    while kills < 3:
        seen = len(ups())
        try:
            wait_until(lambda s=seen: len(ups()) > s or run.pool.replicas() == 5,  # type: ignore[misc]
                       timeout=60, what="the next scale-up (or the maximum)")
        except AssertionError as error:
            raise AssertionError(f"{error}{describe(run.pool)}") from None
        if stored is not None and len(ups()) > at_kill:
            # The restarted operator's first scale-up, against the lastScaleTime it read back.
            gap = ups()[at_kill].at - stored
            gaps.append(gap)
            assert gap >= COOLDOWN, f"stored {stored}, scale-ups {ups()}{describe(run.pool)}"
        if len(ups()) == seen:
            break  # at the maximum: no scale-up left to interrupt
        # Killed the moment the scale is seen: whatever reached status is all it keeps.
        assert operator.stop(kill=True) == -9
        kills += 1
        at_kill = len(ups())
        stored = parse_time(run.pool.status()["lastScaleTime"])
        operator.start()
    assert kills >= 2, describe(run.pool)
    assert all(gap >= COOLDOWN for gap in gaps), (
        f"a restarted operator scaled {min(gaps):.0f}s after the stored lastScaleTime, inside "
        f"the {COOLDOWN}s cooldown"
    )
    every_up = ups()
    # An Event is stamped after the tick's sampling, lastScaleTime at the tick's start (both
    # in whole seconds): two Events of scales COOLDOWN apart may read one second closer.
    for first, second in itertools.pairwise(every_up):
        assert second.at - first.at >= COOLDOWN - 1, every_up
    chain = [(e.old, e.new) for e in scale_events(run.pool)]
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chain)), chain
    _finish("operator SIGKILLed mid-run and restarted", faultenv, broker_user,
            fault_namespace, [operator], (run,), kills=kills,
            scale_ups=len(every_up), seconds_from_stored_scale_to_next=[round(g) for g in gaps])
