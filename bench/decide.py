"""Benchmarks of the decision engine: what one decide() costs, and how good its decisions are.

    python bench/decide.py [--worker-models-only] [--jobs N] [--seeds N]

prints three Markdown tables:
1. the cost of one decide() call (median and p99, target under 20 us), measured on the
   inputs the operator really meets: every (sample, replicas, state, now) that our policy
   saw while the simulator replayed the standard traces;
2. the simulator's comparison on those five traces: queuescaler against KEDA
   (QueueLength and MessageRate, on the HPA's behaviour), worker-pod-autoscaler and the
   oracle, each policy at its documented defaults and at its best setting for the trace
   (a small grid over its main knobs), marking where DESIGN.md's decision-quality target
   is met by queuescaler's defaults;
3. "worker models": the message-level simulator (prefetch 1/4/16/unlimited x concurrency
   1/4 x light/heavy-tailed tasks) on seven traces over ten seeds, queuescaler's defaults
   against KEDA QueueLength + HPA defaults and the oracle, marking the rows that miss
   DESIGN.md's target (issue 12). It runs on every core (`--jobs`): about 150 s of CPU,
   so about 75 s on 2 idle cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from queuescaler.core.decision import ScalerState, decide, next_state
from queuescaler.core.sample import QueueSample
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.sim.peers import (
    MANAGEMENT_API_DELAY,
    HpaBehavior,
    KedaMessageRatePolicy,
    KedaQueueLengthPolicy,
    PolicyKind,
    ScalingPolicy,
    ScalingRules,
    WorkerPodAutoscalerPolicy,
)
from queuescaler.sim.simulator import (
    OraclePolicy,
    Policy,
    QueueScalerPolicy,
    Sampling,
    SimResult,
    simulate,
)
from queuescaler.sim.traces import (
    Trace,
    bursts,
    diurnal,
    idle_then_flood,
    keda_rate,
    low_rate,
    slow_spikes,
    standard_traces,
    steady,
)
from queuescaler.sim.workers import HEAVY, LIGHT, ServiceTimes, WorkerModel
from queuescaler.sources.registry import parse_spec

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
    """One duration per call. The garbage collector is off while timing, as `timeit` has
    it: a collection of the timing list itself would otherwise land on some call's p99."""
    clock = time.perf_counter_ns
    durations: list[int] = []
    collecting = gc.isenabled()
    gc.disable()
    try:
        for _ in range(TIMING_REPEATS):
            for args in inputs:
                started = clock()
                decide(args.spec, args.sample, args.current, args.state, args.now)
                durations.append(clock() - started)
    finally:
        if collecting:
            gc.enable()
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

BEST_P95_SLO = 30.0
"""The "best setting" of a policy on a trace is its cheapest (fewest replica-seconds, then
fewest scale events) whose p95 wait is at most this many seconds, a usual objective for
background work; when no setting of the grid meets it, the one with the lowest p95."""

MakePolicy = Callable[[], Policy]


@dataclass(frozen=True, slots=True)
class Contender:
    """One policy at one setting: how to build it, and the setting in words."""

    policy: str
    setting: str
    make: MakePolicy


def _hpa(scale_down_stabilization: float) -> HpaBehavior:
    """The HPA's default behaviour with another scale-down stabilization window."""
    return HpaBehavior(
        scale_down=ScalingRules(
            scale_down_stabilization, (ScalingPolicy(PolicyKind.PERCENT, 100, 15.0),)
        )
    )


def queuescaler_at(
    trace: Trace, per_replica: int, drain: int | None, stabilization: int | None
) -> Contender:
    target: dict[str, Any] = {"messagesPerReplica": per_replica}
    if drain is not None:
        target["drainSeconds"] = drain
    overrides: dict[str, Any] = {"target": target}
    words = [f"messagesPerReplica {per_replica}"]
    if drain is not None:
        words.append(f"drainSeconds {drain}")
    if stabilization is not None:
        overrides["behavior"] = {"scaleDown": {"stabilizationSeconds": stabilization}}
        words.append(f"scaleDown.stabilizationSeconds {stabilization}")
    spec = queuescaler_spec(trace, **overrides)
    return Contender(
        "queuescaler",
        ", ".join(words),
        lambda: QueueScalerPolicy(spec, stats_delay=MANAGEMENT_API_DELAY, peek_every=PEEK_EVERY),
    )


def keda_queue_length_at(value: int, stabilization: float | None) -> Contender:
    behavior = None if stabilization is None else _hpa(stabilization)
    words = f"value {value}" + (
        "" if stabilization is None else f", HPA scaleDown {stabilization:.0f} s"
    )
    return Contender(
        "keda-queue-length",
        words,
        lambda: KedaQueueLengthPolicy(
            value=value, max_replica_count=MAX_REPLICAS, behavior=behavior
        ),
    )


def keda_message_rate_at(value: float, stabilization: float | None) -> Contender:
    behavior = None if stabilization is None else _hpa(stabilization)
    words = f"value {value:g}/s" + (
        "" if stabilization is None else f", HPA scaleDown {stabilization:.0f} s"
    )
    return Contender(
        "keda-message-rate",
        words,
        lambda: KedaMessageRatePolicy(
            value=value, max_replica_count=MAX_REPLICAS, behavior=behavior
        ),
    )


def wpa_at(trace: Trace, target: int, disruption: str) -> Contender:
    return Contender(
        "worker-pod-autoscaler",
        f"targetMessagesPerWorker {target}, maxDisruption {disruption}",
        lambda: WorkerPodAutoscalerPolicy(
            target_messages_per_worker=target,
            seconds_to_process_one_job=1 / trace.service_rate,
            max_replicas=MAX_REPLICAS,
            max_disruption=disruption,
        ),
    )


def defaults(trace: Trace) -> list[Contender]:
    """Every policy at its documented defaults, on the shared target (none has a default
    for the target itself: KEDA's `value` and WPA's targetMessagesPerWorker are required)."""
    per_replica = messages_per_replica(trace)
    return [
        queuescaler_at(trace, per_replica, None, None),
        keda_queue_length_at(per_replica, None),
        keda_message_rate_at(RATE_UTILISATION * trace.service_rate, None),
        wpa_at(trace, per_replica, "100%"),
    ]


def _scaled(per_replica: int, factors: tuple[float, ...]) -> list[int]:
    return sorted({max(1, round(per_replica * factor)) for factor in factors})


TARGET_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)
"""The backlog targets tried, as multiples of the shared one."""
STABILIZATIONS = (0, 60, 300)
"""HPA scale-down windows tried for KEDA (seconds); 300 is the HPA's default."""


def grid(trace: Trace) -> dict[str, list[Contender]]:
    """Each policy's main knobs, for the best-setting search."""
    per_replica = messages_per_replica(trace)
    targets = _scaled(per_replica, TARGET_FACTORS)
    rates = [round(f * trace.service_rate, 3) for f in (0.5, 0.7, 0.8, 0.9, 1.0)]
    return {
        "queuescaler": [
            queuescaler_at(trace, target, drain, stabilization)
            for target in targets
            for drain in (None, 30, 120)
            for stabilization in (150, 300, 600)
        ],
        "keda-queue-length": [
            keda_queue_length_at(target, float(window))
            for target in targets
            for window in STABILIZATIONS
        ],
        "keda-message-rate": [
            keda_message_rate_at(rate, float(window)) for rate in rates for window in STABILIZATIONS
        ],
        "worker-pod-autoscaler": [
            wpa_at(trace, target, disruption)
            for target in targets
            for disruption in ("100%", "50%", "10%")
        ],
    }


def run(trace: Trace, contender: Contender, start: int) -> SimResult:
    return simulate(
        trace, contender.make(), pod_start_delay=POD_START_DELAY, initial_replicas=start
    )


def best(trace: Trace, contenders: list[Contender], start: int) -> tuple[Contender, SimResult]:
    results = [(c, run(trace, c, start)) for c in contenders]
    meeting = [pair for pair in results if pair[1].p95_wait <= BEST_P95_SLO]
    if meeting:
        return min(meeting, key=lambda p: (p[1].replica_seconds, p[1].scale_events))
    return min(results, key=lambda p: (p[1].p95_wait, p[1].replica_seconds))


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


def _row(
    trace: Trace, label: str, setting: str, result: SimResult, oracle: SimResult, mark: str
) -> str:
    ratio = result.replica_seconds / oracle.replica_seconds
    return (
        f"| {trace.name} | {label} | {setting} "
        f"| {result.p50_wait:.0f} | {result.p95_wait:.0f} "
        f"| {result.replica_seconds:,.0f} | {result.scale_events} "
        f"| {result.redelivered:.0f} | {ratio:.2f} | {mark} |"
    )


def quality_table(traces: tuple[Trace, ...]) -> tuple[list[str], list[str]]:
    lines = [
        "| trace | policy | setting | p50 wait (s) | p95 wait (s) | replica-s "
        "| scale events | redelivered | x oracle | DESIGN target |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    verdicts = []
    for trace in traces:
        oracle_policy = OraclePolicy(
            trace, pod_start_delay=POD_START_DELAY, max_replicas=MAX_REPLICAS
        )
        start = oracle_policy.initial_replicas
        oracle = simulate(trace, oracle_policy, pod_start_delay=POD_START_DELAY)
        at_defaults = [(c, run(trace, c, start)) for c in defaults(trace)]
        ours, keda = at_defaults[0][1], at_defaults[1][1]
        outcome = verdict(ours, keda, oracle)
        verdicts.append(f"{trace.name}: {outcome}")
        searched = grid(trace)
        for contender, result in at_defaults:
            mark = outcome if result is ours else ""
            lines.append(
                _row(
                    trace, f"{contender.policy} (defaults)", contender.setting, result, oracle, mark
                )
            )
            tuned, tuned_result = best(trace, searched[contender.policy], start)
            lines.append(
                _row(trace, f"{contender.policy} (best)", tuned.setting, tuned_result, oracle, "")
            )
        lines.append(_row(trace, "oracle", "knows the trace", oracle, oracle, ""))
    return lines, verdicts


# --- 3. worker models (issue 12) -----------------------------------------------------------

WORKER_SEEDS = tuple(range(1, 11))
PEEK_EVERY: float | None = float(os.environ.get("QS_PEEK", "1")) or None
"""How often the operator's fast path looks at live counts between samples (its default
tick is 0.5 s; the simulator steps whole seconds)."""
WARM_UP = 300
"""Seconds replayed before anything is counted: every policy has settled (the HPA's 300 s
scale-down window included) and none is judged on a broker that has just started."""
START_DELAY = (10.0, 30.0)
"""Each new pod's start delay, drawn uniformly per pod (seeded)."""
WORKER_ORACLE_RATIO_LIMIT = 1.3
"""DESIGN.md's "within 1.3x the oracle's replica-seconds"."""
PREFETCHES: tuple[int | None, ...] = (1, 4, 16, None)
CONCURRENCIES = (1, 4)
SERVICES = (LIGHT, HEAVY)


def worker_traces(seed: int) -> tuple[Trace, ...]:
    """The seven traces of the worker-model table. A replay costs a few microseconds a
    message, and the table replays each trace 480 times (16 worker models, 10 seeds, 3
    policies), so the traces are kept to about 115,000 messages together: each is a
    `WARM_UP` (not counted) and then 900 to 1,500 measured seconds, and steady and diurnal
    carry the standard traces' load (10 and 2 to 20 workers' worth) as 500 ms tasks at a
    fifth of their rate. Bursts (200 msg/s) and the flood (150 msg/s) keep 100 ms tasks and
    their rates, the busy end of the range; low-rate (0.2 msg/s) is the quiet end."""
    measured = 900
    duration = WARM_UP + measured
    return (
        steady(rate=20.0, service_rate=2.0, duration=duration, seed=seed),
        diurnal(
            low=4.0, high=40.0, period=duration, service_rate=2.0, duration=duration, seed=seed
        ),
        bursts(duration=duration, first_at=WARM_UP + 60, every=450, seed=seed),
        slow_spikes(duration=duration, first_at=WARM_UP + 60, every=450, seed=seed),
        idle_then_flood(
            duration=duration, idle_seconds=WARM_UP + 300, flood_seconds=200, seed=seed
        ),
        low_rate(duration=WARM_UP + 1500, seed=seed),
        keda_rate(duration=duration),
    )


TRACE_WORDS = {
    "steady": "20 msg/s, 500 ms tasks, 900 s",
    "diurnal": "4 -> 40 -> 4 msg/s over the whole 1,200 s (the warm-up climbs to 22), 500 ms tasks",
    "bursts": "5 msg/s, plus 200 msg/s for 60 s at 60 s and 510 s, 100 ms tasks, 900 s",
    "slow-spikes": "0.5 msg/s, plus 300 at once at 60 s and 510 s, 5 s tasks, 900 s",
    "idle-then-flood": "300 s idle, 150 msg/s for 200 s, 400 s idle, 100 ms tasks",
    "low-rate": "0.2 msg/s, 8 s tasks, 1,500 s",
    "keda-rate": "5 messages every 2 s, 1 s tasks, 900 s",
}
"""What each trace replays after its warm-up (times from the end of the warm-up)."""


@dataclass(frozen=True, slots=True)
class Outcome:
    """One policy on one trace, worker model and seed: what the table averages."""

    p95_wait: float
    replica_seconds: float
    scale_events: float
    """A count for one replay; a mean over seeds in a row."""
    redelivered: float


@dataclass(frozen=True, slots=True)
class Replay:
    trace: str
    prefetch: int | None
    concurrency: int
    service: str
    seed: int
    ours: Outcome
    keda: Outcome
    oracle: Outcome


def _outcome(result: SimResult) -> Outcome:
    return Outcome(result.p95_wait, result.replica_seconds, result.scale_events, result.redelivered)


def worker_target(trace: Trace, concurrency: int) -> int:
    """The shared target: the backlog one replica (`concurrency` tasks at once) clears in
    `DRAIN_SECONDS_EQUIVALENT` seconds."""
    return max(1, round(concurrency * trace.service_rate * DRAIN_SECONDS_EQUIVALENT))


def replay_worker_models(job: tuple[int, int, ServiceTimes]) -> list[Replay]:
    """One trace, one seed, one task-time law: every prefetch and concurrency, three
    policies each (the trace's messages are drawn once and shared)."""
    index, seed, service = job
    trace = worker_traces(seed)[index]
    replays = []
    for concurrency in CONCURRENCIES:
        for prefetch in PREFETCHES:
            model = WorkerModel(
                prefetch=prefetch,
                concurrency=concurrency,
                service=service,
                start_delay=START_DELAY,
                seed=seed,
            )
            per_replica = worker_target(trace, concurrency)
            oracle_policy = OraclePolicy(
                trace, pod_start_delay=START_DELAY[1], max_replicas=MAX_REPLICAS, workers=model
            )
            start = oracle_policy.initial_replicas
            policies: tuple[Policy, ...] = (
                QueueScalerPolicy(
                    queuescaler_spec(trace, target={"messagesPerReplica": per_replica}),
                    stats_delay=MANAGEMENT_API_DELAY,
                    peek_every=PEEK_EVERY,
                ),
                KedaQueueLengthPolicy(value=per_replica, max_replica_count=MAX_REPLICAS),
                oracle_policy,
            )
            ours, keda, oracle = (
                _outcome(
                    simulate(
                        trace,
                        policy,
                        workers=model,
                        initial_replicas=start,
                        measure_from=WARM_UP,
                    )
                )
                for policy in policies
            )
            replays.append(
                Replay(trace.name, prefetch, concurrency, service.label, seed, ours, keda, oracle)
            )
    return replays


def misses(ours: Outcome, keda: Outcome, oracle: Outcome) -> list[str]:
    """DESIGN.md's target, each criterion missed with its size: the excess over KEDA's
    figure (and the ratio when KEDA's is not zero), and the ratio to the oracle's cost."""

    def over(mine: float, theirs: float, unit: str, digits: int) -> str:
        excess = f"+{mine - theirs:,.{digits}f}{unit}"
        return f"{excess} ({mine / theirs:.2f}x)" if theirs > 0 else excess

    missed = []
    if ours.p95_wait > keda.p95_wait:
        missed.append(f"p95 {over(ours.p95_wait, keda.p95_wait, ' s', 1)} vs KEDA")
    if ours.replica_seconds > keda.replica_seconds:
        missed.append(
            f"replica-s {over(ours.replica_seconds, keda.replica_seconds, '', 0)} vs KEDA"
        )
    if ours.scale_events > keda.scale_events:
        missed.append(f"events {over(ours.scale_events, keda.scale_events, '', 1)} vs KEDA")
    if ours.replica_seconds > WORKER_ORACLE_RATIO_LIMIT * oracle.replica_seconds:
        ratio = ours.replica_seconds / oracle.replica_seconds
        missed.append(f"replica-s {ratio:.2f}x oracle")
    return missed


def _mean(outcomes: Sequence[Outcome]) -> Outcome:
    count = len(outcomes)
    return Outcome(
        sum(o.p95_wait for o in outcomes) / count,
        sum(o.replica_seconds for o in outcomes) / count,
        sum(o.scale_events for o in outcomes) / count,
        sum(o.redelivered for o in outcomes) / count,
    )


def _events(value: float) -> str:
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


ModelKey = tuple[str, int, int | None, str]
"""(trace, concurrency, prefetch, tasks): one row of the worker-model table."""


def replay_rows(jobs: int, seeds: Sequence[int]) -> dict[ModelKey, list[Replay]]:
    """Every trace, task law, worker model and seed replayed on `jobs` processes, by row."""
    work = [
        (index, seed, service)
        for index in range(len(worker_traces(1)))
        for service in SERVICES
        for seed in seeds
    ]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        replays = [r for batch in pool.map(replay_worker_models, work) for r in batch]
    rows: dict[ModelKey, list[Replay]] = {}
    for replay in replays:
        key = (replay.trace, replay.concurrency, replay.prefetch, replay.service)
        rows.setdefault(key, []).append(replay)
    return rows


def worker_models_table(
    jobs: int, seeds: Sequence[int] = WORKER_SEEDS
) -> tuple[list[str], list[str], float]:
    """The table's lines, a summary of the rows that miss, and the seconds it took."""
    started = time.perf_counter()
    rows = replay_rows(jobs, seeds)
    lines = [
        "| trace | prefetch | conc. | tasks | p95 wait (s) ours / KEDA / oracle "
        "| replica-s ours / KEDA / oracle | scale events ours / KEDA / oracle "
        "| ours x oracle | seeds met | target |",
        "|---|---:|---:|---|---|---|---|---:|---:|---|",
    ]
    summary: list[str] = []
    trace_order = [t.name for t in worker_traces(1)]
    for key in sorted(rows, key=lambda k: (trace_order.index(k[0]), *_model_order(k))):
        group = rows[key]
        ours = _mean([r.ours for r in group])
        keda = _mean([r.keda for r in group])
        oracle = _mean([r.oracle for r in group])
        missed = misses(ours, keda, oracle)
        met = sum(not misses(r.ours, r.keda, r.oracle) for r in group)
        verdict = "met" if not missed else "**MISS**: " + ", ".join(missed)
        name, concurrency, prefetch, service = key
        prefetch_words = "unlimited" if prefetch is None else str(prefetch)
        lines.append(
            f"| {name} | {prefetch_words} | {concurrency} | {service} "
            f"| {ours.p95_wait:.1f} / {keda.p95_wait:.1f} / {oracle.p95_wait:.1f} "
            f"| {ours.replica_seconds:,.0f} / {keda.replica_seconds:,.0f} "
            f"/ {oracle.replica_seconds:,.0f} "
            f"| {_events(ours.scale_events)} / {_events(keda.scale_events)} "
            f"/ {_events(oracle.scale_events)} "
            f"| {ours.replica_seconds / oracle.replica_seconds:.2f} "
            f"| {met}/{len(group)} | {verdict} |"
        )
        if missed:
            summary.append(
                f"{name}, prefetch {prefetch_words}, concurrency {concurrency}, {service}: "
                + ", ".join(missed)
            )
    return lines, summary, time.perf_counter() - started


def _model_order(key: ModelKey) -> tuple[int, int, int]:
    _, concurrency, prefetch, service = key
    prefetch_rank = PREFETCHES.index(prefetch)
    service_rank = [s.label for s in SERVICES].index(service)
    return concurrency, prefetch_rank, service_rank


def print_worker_models(jobs: int, seeds: Sequence[int] = WORKER_SEEDS) -> None:
    print("\n## Worker models: prefetch, concurrency and uneven tasks (issue 12)\n")
    print(
        "The message-level simulator (`queuescaler.sim.workers`): one consumer per replica "
        "holding up to prefetch x concurrency unacknowledged messages, `concurrency` of them "
        "in progress and the rest parked where no other replica can take them; a stopping "
        "worker requeues its parked messages and finishes its tasks within a 30 s grace "
        "period, paid for; a task still running then is killed and requeued. Light tasks: "
        f"exponential; heavy-tailed: {HEAVY.label} (p99 about 10x the mean). Pod start "
        f"delay drawn per pod from {START_DELAY[0]:.0f} to {START_DELAY[1]:.0f} s. "
        f"Management API figures (unacked, rates) {MANAGEMENT_API_DELAY:.0f} s old, rates "
        "over 5 s; queuescaler reads ready and consumers live over AMQP, KEDA everything "
        "through the management API. Target per replica, for both: the backlog one replica "
        f"(`concurrency` tasks at once) clears in {DRAIN_SECONDS_EQUIVALENT:.0f} s. "
        "maxReplicas 100, minReplicas 0; every pool starts at the oracle's first size.\n"
    )
    print(
        f"Each trace starts with a {WARM_UP} s warm-up that is replayed but not counted; "
        "then (measured):\n"
    )
    for name, words in TRACE_WORDS.items():
        print(f"- {name}: {words}")
    print(
        "\nThe oracle knows every message's arrival and duration and gives each second the "
        "replicas its work needs (task-seconds / concurrency, rounded up), asked the longest "
        f"start delay ({START_DELAY[1]:.0f} s) ahead: a reference cost, not a strict lower "
        "bound (its messages may wait a second in a burst, or behind a long task when "
        "prefetched). Figures are means over seeds "
        f"{seeds[0]}-{seeds[-1]}; the target (DESIGN.md) holds when "
        "queuescaler's defaults have at most KEDA QueueLength + HPA defaults' p95 wait, "
        "replica-seconds and scale events all at once, and replica-seconds within "
        f"{WORKER_ORACLE_RATIO_LIMIT}x the oracle's, judged on the means; `seeds met` "
        "counts the seeds on which it holds alone. A miss names each criterion and by how "
        "much.\n"
    )
    lines, summary, took = worker_models_table(jobs, seeds)
    print("\n".join(lines))
    rows = len(lines) - 2
    print(f"\nRows missing the target: {len(summary)} of {rows}.")
    for line in summary:
        print(f"- {line}")
    print(f"\n(worker models: {took:.1f} s on {jobs} processes)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--worker-models-only", action="store_true", help="print only the worker-model table"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes for the worker models"
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=len(WORKER_SEEDS),
        help="seeds 1..N for the worker models (DESIGN.md's target: 10)",
    )
    args = parser.parse_args()
    started = time.perf_counter()
    if not args.worker_models_only:
        print_standard_tables()
    print_worker_models(args.jobs, tuple(range(1, args.seeds + 1)))
    print(f"\n(bench ran in {time.perf_counter() - started:.1f} s)")


def print_standard_tables() -> None:
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
    print(
        "Rows marked (defaults) run each policy at its documented defaults on that shared "
        "target. Rows marked (best) come from a small grid per policy and trace over its main "
        "knobs (targets at 1/4 to 4x the shared one; queuescaler also drainSeconds and "
        "scaleDown.stabilizationSeconds, KEDA the HPA's scale-down window, WPA maxDisruption): "
        f"the cheapest setting whose p95 wait is at most {BEST_P95_SLO:.0f} s, else the one "
        "with the lowest p95. The oracle is the fewest replica-seconds at the least wait "
        "possible, knowing the trace and the pod start delay: a lower bound, not a policy.\n"
    )
    lines, verdicts = quality_table(traces)
    print("\n".join(lines))
    print("\nqueuescaler defaults against the target:")
    for line in verdicts:
        print(f"- {line}")


if __name__ == "__main__":
    main()
