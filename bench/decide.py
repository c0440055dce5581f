"""Benchmarks of the decision engine: what one decide() costs, and how good its decisions are.

    python bench/decide.py

prints two Markdown tables:
1. the cost of one decide() call (median and p99, target under 20 us), measured on the
   inputs the operator really meets: every (sample, replicas, state, now) that our policy
   saw while the simulator replayed the standard traces;
2. the simulator's comparison on those five traces: queuescaler's defaults against KEDA
   (QueueLength and MessageRate, on the HPA's defaults), worker-pod-autoscaler and the
   oracle, marking where DESIGN.md's decision-quality target is met.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from queuescaler.decision import ScalerState, decide, next_state
from queuescaler.peers import (
    MANAGEMENT_API_DELAY,
    KedaMessageRatePolicy,
    KedaQueueLengthPolicy,
    WorkerPodAutoscalerPolicy,
)
from queuescaler.sample import QueueSample
from queuescaler.simulator import (
    OraclePolicy,
    Policy,
    QueueScalerPolicy,
    Sampling,
    SimResult,
    simulate,
)
from queuescaler.spec import QueueScalerSpec, parse_spec
from queuescaler.traces import Trace, standard_traces

POD_START_DELAY = 10.0
MAX_REPLICAS = 100
"""KEDA's default maxReplicaCount; every policy gets the same ceiling."""
DRAIN_SECONDS_EQUIVALENT = 10.0
"""The fair target: messagesPerReplica (and KEDA's QueueLength `value`, and WPA's
targetMessagesPerWorker) = the backlog one replica clears in this many seconds."""
RATE_UTILISATION = 0.8
"""KEDA MessageRate's `value`: this fraction of one replica's throughput."""
TIMING_REPEATS = 20
DECIDE_TARGET_US = 20.0
ORACLE_RATIO_LIMIT = 1.5


def messages_per_replica(trace: Trace) -> int:
    return max(1, round(trace.service_rate * DRAIN_SECONDS_EQUIVALENT))


def queuescaler_spec(trace: Trace, **overrides: Any) -> dict[str, Any]:
    """Only what a user must write, plus the shared target and bounds: defaults elsewhere."""
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": MAX_REPLICAS,
        "source": {"rabbitmq": {"queue": trace.name, "connectionSecretRef": {"name": "rabbit"}}},
        "target": {"messagesPerReplica": messages_per_replica(trace)},
    }
    spec.update(overrides)
    return spec


# --- 1. the cost of decide() ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DecideInput:
    spec: QueueScalerSpec
    sample: QueueSample
    current: int
    state: ScalerState
    now: float


class RecordingQueueScaler:
    """Our policy, keeping every input it hands to decide() for the timing loop."""

    def __init__(self, spec: Mapping[str, Any], inputs: list[DecideInput]) -> None:
        self.name = "queuescaler"
        self.removes_idle_first = False
        self.initial_replicas = 0
        self._spec = parse_spec(spec)
        self._state = ScalerState()
        self._inputs = inputs
        self.sampling = Sampling(
            polling_interval=float(self._spec.polling_interval_seconds),
            stats_delay=MANAGEMENT_API_DELAY,
        )

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        self._inputs.append(DecideInput(self._spec, sample, current, self._state, now))
        decision = decide(self._spec, sample, current, self._state, now)
        scaled = decision.replicas != current
        self._state = next_state(self._spec, self._state, sample, current, decision, now, scaled)
        return decision.replicas


SpecFor = Callable[[Trace], dict[str, Any]]


def with_drain(trace: Trace) -> dict[str, Any]:
    """The rate policy on, ticking every second: the most history decide() ever reads."""
    target = {"messagesPerReplica": messages_per_replica(trace), "drainSeconds": 60}
    return queuescaler_spec(trace, target=target, pollingIntervalSeconds=1)


DECIDE_CASES: tuple[tuple[str, SpecFor], ...] = (
    ("defaults (poll 15 s)", queuescaler_spec),
    ("drainSeconds 60, poll 1 s", with_drain),
)


def record_inputs(traces: tuple[Trace, ...], spec_for: SpecFor) -> list[DecideInput]:
    inputs: list[DecideInput] = []
    for trace in traces:
        policy = RecordingQueueScaler(spec_for(trace), inputs)
        simulate(trace, policy, pod_start_delay=POD_START_DELAY)
    return inputs


def time_decide(inputs: list[DecideInput]) -> list[int]:
    clock = time.perf_counter_ns
    durations: list[int] = []
    for _ in range(TIMING_REPEATS):
        for args in inputs:
            started = clock()
            decide(args.spec, args.sample, args.current, args.state, args.now)
            durations.append(clock() - started)
    return durations


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def decide_table(traces: tuple[Trace, ...]) -> list[str]:
    lines = [
        "| inputs | calls | median (us) | p99 (us) | target | met |",
        "|---|---:|---:|---:|---:|:---:|",
    ]
    for label, spec_for in DECIDE_CASES:
        durations = time_decide(record_inputs(traces, spec_for))
        median = statistics.median(durations) / 1000
        p99 = percentile(durations, 0.99) / 1000
        met = "yes" if p99 < DECIDE_TARGET_US else "no"
        lines.append(
            f"| {label} | {len(durations):,} | {median:.1f} | {p99:.1f} "
            f"| < {DECIDE_TARGET_US:.0f} | {met} |"
        )
    return lines


# --- 2. decision quality ------------------------------------------------------------------


def contenders(trace: Trace) -> list[Callable[[], Policy]]:
    per_replica = messages_per_replica(trace)
    return [
        lambda: QueueScalerPolicy(queuescaler_spec(trace), stats_delay=MANAGEMENT_API_DELAY),
        lambda: KedaQueueLengthPolicy(value=per_replica, max_replica_count=MAX_REPLICAS),
        lambda: KedaMessageRatePolicy(
            value=RATE_UTILISATION * trace.service_rate, max_replica_count=MAX_REPLICAS
        ),
        lambda: WorkerPodAutoscalerPolicy(
            target_messages_per_worker=per_replica,
            seconds_to_process_one_job=1 / trace.service_rate,
            max_replicas=MAX_REPLICAS,
        ),
    ]


def verdict(ours: SimResult, keda: SimResult, oracle: SimResult) -> str:
    """DESIGN.md's decision-quality target, naming every criterion missed."""
    missed = []
    if ours.p95_wait > keda.p95_wait:
        missed.append("p95 > KEDA")
    if ours.replica_seconds > keda.replica_seconds:
        missed.append("replica-s > KEDA")
    if ours.scale_events > keda.scale_events:
        missed.append("events > KEDA")
    if ours.replica_seconds > ORACLE_RATIO_LIMIT * oracle.replica_seconds:
        missed.append(f"> {ORACLE_RATIO_LIMIT}x oracle")
    return "**met**" if not missed else "missed: " + ", ".join(missed)


def quality_table(traces: tuple[Trace, ...]) -> tuple[list[str], list[str]]:
    lines = [
        "| trace | target (msg/replica) | policy | p50 wait (s) | p95 wait (s) | replica-s "
        "| scale events | redelivered | x oracle | DESIGN target |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for trace in traces:
        oracle_policy = OraclePolicy(
            trace, pod_start_delay=POD_START_DELAY, max_replicas=MAX_REPLICAS
        )
        start = oracle_policy.initial_replicas
        oracle = simulate(trace, oracle_policy, pod_start_delay=POD_START_DELAY)
        results = [
            simulate(trace, make(), pod_start_delay=POD_START_DELAY, initial_replicas=start)
            for make in contenders(trace)
        ]
        ours, keda = results[0], results[1]
        outcome = verdict(ours, keda, oracle)
        verdicts.append(f"{trace.name}: {outcome}")
        for result in [*results, oracle]:
            ratio = result.replica_seconds / oracle.replica_seconds
            mark = outcome if result is ours else ""
            lines.append(
                f"| {trace.name} | {messages_per_replica(trace)} | {result.policy} "
                f"| {result.p50_wait:.0f} | {result.p95_wait:.0f} "
                f"| {result.replica_seconds:,.0f} | {result.scale_events} "
                f"| {result.redelivered:.0f} | {ratio:.2f} | {mark} |"
            )
    return lines, verdicts


def main() -> None:
    started = time.perf_counter()
    traces = standard_traces()
    print("## decide(): cost of one call\n")
    print(
        "Inputs: every tick our policy met while replaying the five standard traces "
        f"(repeated {TIMING_REPEATS}x), timed one call at a time with perf_counter_ns.\n"
    )
    print("\n".join(decide_table(traces)))
    print("\n## Decision quality: the simulator on the standard traces\n")
    print(
        f"Pod start delay {POD_START_DELAY:.0f} s; management API figures "
        f"{MANAGEMENT_API_DELAY:.0f} s old (queuescaler reads ready counts over AMQP, live); "
        f"maxReplicas {MAX_REPLICAS} and minReplicas 0 for all; every pool starts at the "
        "oracle's first size. Shared target: messagesPerReplica = KEDA QueueLength `value` = "
        "WPA targetMessagesPerWorker = the backlog one replica clears in "
        f"{DRAIN_SECONDS_EQUIVALENT:.0f} s; KEDA MessageRate `value` = "
        f"{RATE_UTILISATION:.0%} of one replica's throughput; WPA secondsToProcessOneJob = "
        "the true task time. Waits of messages still queued at the end count as waited so "
        "far. The target (DESIGN.md): p95 wait, replica-seconds and scale events all at most "
        f"KEDA QueueLength's, and replica-seconds within {ORACLE_RATIO_LIMIT}x the oracle's.\n"
    )
    lines, verdicts = quality_table(traces)
    print("\n".join(lines))
    print("\nqueuescaler defaults against the target:")
    for line in verdicts:
        print(f"- {line}")
    print(f"\n(bench ran in {time.perf_counter() - started:.1f} s)")


if __name__ == "__main__":
    main()
