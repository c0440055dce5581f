"""Can any policy meet the worker-model target where queuescaler's defaults miss it?

    python bench/frontier.py [--jobs N] [--seeds N] [--rows TRACE:PREFETCH:CONC:TASKS ...]

The worker-model table (`python bench/decide.py --worker-models-only`) judges
queuescaler's defaults against KEDA QueueLength + HPA defaults and a clairvoyant oracle.
Where a row misses, this asks whether the miss is the policy's or the target's: it
replays each missing row (same traces, seeds and worker models) with three families of
other policies and reports the one that comes closest to the target box (p95 wait, scale
events and replica-seconds at most KEDA's, replica-seconds within 1.3x the oracle's, all
judged on the means over the seeds, as the table does):

- **fixed N**: N replicas the whole run, no scaling at all (no events, no start delays
  after the first); on a steady load the cheapest wait per replica-second there is;
- **queuescaler, other knobs**: messagesPerReplica at 1/2, 1 and 2 times the shared
  target, scaleDown.stabilizationSeconds 60, 300 (the default) and 900;
- **oracle, no lookahead**: the oracle's rule (the replicas the present second's work
  needs, on arrival) asked when the work arrives instead of 30 s ahead, each pod kept
  for 30 s: clairvoyant about each task's length, blind to the future's arrivals.

A row none of them meets is one where the target asks for a trade-off no policy of these
families can make; it is not proof that no policy can.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

from decide import (
    MAX_REPLICAS,
    PEEK_EVERY,
    SERVICES,
    START_DELAY,
    WARM_UP,
    WORKER_ORACLE_RATIO_LIMIT,
    WORKER_SEEDS,
    Outcome,
    _mean,
    _model_order,
    _outcome,
    misses,
    queuescaler_spec,
    replay_rows,
    worker_target,
    worker_traces,
)
from queuescaler.core.sample import QueueSample
from queuescaler.sim.peers import MANAGEMENT_API_DELAY, KedaQueueLengthPolicy
from queuescaler.sim.simulator import OraclePolicy, Policy, QueueScalerPolicy, Sampling, simulate
from queuescaler.sim.traces import Trace
from queuescaler.sim.workers import WorkerModel, busy_per_second

Row = tuple[str, int | None, int, str]
"""(trace, prefetch, concurrency, tasks) as the table names them."""

TARGET_FACTORS = (0.5, 1.0, 2.0)
STABILIZATIONS = (60, 300, 900)
HOLD_SECONDS = 30
FIXED_POINTS = 14


class FixedPolicy:
    """N replicas, always."""

    removes_idle_first = True
    sampling = Sampling(polling_interval=1.0)

    def __init__(self, replicas: int) -> None:
        self.name = f"fixed {replicas}"
        self.initial_replicas = replicas

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        return self.initial_replicas


class NoLookaheadOracle:
    """The oracle's per-second need, asked as the work arrives and held `HOLD_SECONDS`."""

    name = "oracle, no lookahead"
    removes_idle_first = True
    sampling = Sampling(polling_interval=1.0)

    def __init__(self, trace: Trace, workers: WorkerModel) -> None:
        slots = MAX_REPLICAS * workers.concurrency
        busy = busy_per_second(trace, workers.service, workers.seed, slots)
        needed = [math.ceil(work / workers.concurrency - 1e-9) for work in busy]
        self._plan = [
            max(needed[max(0, t - HOLD_SECONDS) : t + 1]) for t in range(len(needed))
        ] or [0]
        self.initial_replicas = self._plan[0]

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        return self._plan[min(int(now), len(self._plan) - 1)]


@dataclass(frozen=True, slots=True)
class RowSeed:
    """What one seed of one row gave: the table's three policies and every other setting."""

    ours: Outcome
    keda: Outcome
    oracle: Outcome
    others: dict[str, Outcome]


def _model(row: Row, seed: int) -> tuple[Trace, WorkerModel]:
    name, prefetch, concurrency, tasks = row
    trace = next(t for t in worker_traces(seed) if t.name == name)
    service = next(s for s in SERVICES if s.label == tasks)
    model = WorkerModel(
        prefetch=prefetch,
        concurrency=concurrency,
        service=service,
        start_delay=START_DELAY,
        seed=seed,
    )
    return trace, model


def _ours(trace: Trace, per_replica: int, stabilization: int | None = None) -> Policy:
    overrides: dict[str, Any] = {"target": {"messagesPerReplica": per_replica}}
    if stabilization is not None:
        overrides["behavior"] = {"scaleDown": {"stabilizationSeconds": stabilization}}
    return QueueScalerPolicy(
        queuescaler_spec(trace, **overrides),
        stats_delay=MANAGEMENT_API_DELAY,
        peek_every=PEEK_EVERY,
    )


def replay_row(job: tuple[Row, int, tuple[int, ...]]) -> RowSeed:
    """One seed of one row: the table's three policies, then each other setting."""
    row, seed, fixed = job
    trace, model = _model(row, seed)
    per_replica = worker_target(trace, model.concurrency)
    oracle = OraclePolicy(
        trace, pod_start_delay=START_DELAY[1], max_replicas=MAX_REPLICAS, workers=model
    )
    start = oracle.initial_replicas

    def run(policy: Policy, initial: int = start) -> Outcome:
        result = simulate(
            trace, policy, workers=model, initial_replicas=initial, measure_from=WARM_UP
        )
        return _outcome(result)

    others: dict[str, Outcome] = {}
    for n in fixed:
        others[f"fixed {n}"] = run(FixedPolicy(n), n)
    for factor in TARGET_FACTORS:
        for stabilization in STABILIZATIONS:
            if factor == 1.0 and stabilization == 300:
                continue  # the defaults, replayed as "ours"
            per = max(1, round(per_replica * factor))
            name = f"queuescaler mpr {per} stab {stabilization}"
            others[name] = run(_ours(trace, per, stabilization))
    others[NoLookaheadOracle.name] = run(NoLookaheadOracle(trace, model))
    return RowSeed(
        ours=run(_ours(trace, per_replica)),
        keda=run(KedaQueueLengthPolicy(value=per_replica, max_replica_count=MAX_REPLICAS)),
        oracle=run(oracle),
        others=others,
    )


def fixed_points(row: Row, seeds: Sequence[int]) -> tuple[int, ...]:
    """Fixed pool sizes worth trying: from the oracle's mean pool size to twice KEDA's,
    spread geometrically, at most `FIXED_POINTS` of them."""
    trace, model = _model(row, seeds[0])
    per_replica = worker_target(trace, model.concurrency)
    oracle_policy = OraclePolicy(
        trace, pod_start_delay=START_DELAY[1], max_replicas=MAX_REPLICAS, workers=model
    )
    measured = len(trace.arrivals) - WARM_UP
    oracle, keda = (
        simulate(
            trace,
            policy,
            workers=model,
            initial_replicas=oracle_policy.initial_replicas,
            measure_from=WARM_UP,
        )
        for policy in (
            oracle_policy,
            KedaQueueLengthPolicy(value=per_replica, max_replica_count=MAX_REPLICAS),
        )
    )
    low = max(1, math.floor(0.8 * oracle.replica_seconds / measured))
    high = min(MAX_REPLICAS, max(low + 1, math.ceil(2 * keda.replica_seconds / measured)))
    ratio = (high / low) ** (1 / (FIXED_POINTS - 1))
    return tuple(sorted({min(high, round(low * ratio**i)) for i in range(FIXED_POINTS)}))


def _gap(candidate: Outcome, keda: Outcome, oracle: Outcome) -> float:
    """How far outside the target box: the largest ratio of a figure to its bound."""
    cost_bound = _cost_bound(keda, oracle)
    return max(
        _ratio(candidate.replica_seconds, cost_bound),
        _ratio(candidate.p95_wait, keda.p95_wait),
        _ratio(candidate.scale_events, keda.scale_events),
    )


def _cost_bound(keda: Outcome, oracle: Outcome) -> float:
    """The replica-seconds the target allows: KEDA's, and 1.3x the oracle's."""
    return min(keda.replica_seconds, WORKER_ORACLE_RATIO_LIMIT * oracle.replica_seconds)


def _ratio(mine: float, bound: float) -> float:
    if bound > 0:
        return mine / bound
    return 1.0 if mine <= 0 else math.inf


def _words(name: str, outcome: Outcome) -> str:
    return (
        f"{name}: p95 {outcome.p95_wait:.1f} s, {outcome.replica_seconds:,.0f} replica-s, "
        f"{outcome.scale_events:.1f} events"
    )


def frontier(rows: Sequence[Row], seeds: Sequence[int], jobs: int) -> list[str]:
    """The report's lines: per row, the box, the defaults, and the closest other setting."""
    fixed = {row: fixed_points(row, seeds) for row in rows}
    work = [(row, seed, fixed[row]) for row in rows for seed in seeds]
    with ProcessPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(replay_row, work))
    lines = [
        "| trace | prefetch | conc. | tasks | box: p95 / replica-s / events at most "
        "| defaults | closest other setting | its figures | met by |",
        "|---|---:|---:|---|---|---|---|---|---|",
    ]
    for index, row in enumerate(rows):
        group = results[index * len(seeds) : (index + 1) * len(seeds)]
        keda = _mean([g.keda for g in group])
        oracle = _mean([g.oracle for g in group])
        ours = _mean([g.ours for g in group])
        means = {name: _mean([g.others[name] for g in group]) for name in group[0].others}
        meeting = [n for n, o in means.items() if not misses(o, keda, oracle)]
        closest = min(means, key=lambda n: _gap(means[n], keda, oracle))
        cost_bound = _cost_bound(keda, oracle)
        name, prefetch, concurrency, tasks = row
        best = means[closest]
        lines.append(
            f"| {name} | {'unlimited' if prefetch is None else prefetch} | {concurrency} "
            f"| {tasks} | {keda.p95_wait:.1f} / {cost_bound:,.0f} / {keda.scale_events:.1f} "
            f"| {ours.p95_wait:.1f} / {ours.replica_seconds:,.0f} / {ours.scale_events:.1f} "
            f"| {closest} | {best.p95_wait:.1f} / {best.replica_seconds:,.0f} "
            f"/ {best.scale_events:.1f} ({_gap(best, keda, oracle):.2f}x the box) "
            f"| {', '.join(meeting) if meeting else 'none'} |"
        )
    return lines


def missing_rows(seeds: Sequence[int], jobs: int) -> list[Row]:
    """The rows where queuescaler's defaults miss the target, in the table's order."""
    rows = replay_rows(jobs, seeds)
    order = [t.name for t in worker_traces(1)]
    missing = []
    for key in sorted(rows, key=lambda k: (order.index(k[0]), *_model_order(k))):
        group = rows[key]
        ours, keda, oracle = (_mean([r.ours for r in group]), _mean([r.keda for r in group]),
                              _mean([r.oracle for r in group]))
        if misses(ours, keda, oracle):
            name, concurrency, prefetch, tasks = key
            missing.append((name, prefetch, concurrency, tasks))
    return missing


def _parse_row(text: str) -> Row:
    name, prefetch, concurrency, tasks = text.split(":")
    return (name, None if prefetch == "unlimited" else int(prefetch), int(concurrency), tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seeds", type=int, default=len(WORKER_SEEDS))
    parser.add_argument(
        "--rows",
        nargs="*",
        type=_parse_row,
        help="rows as trace:prefetch:concurrency:tasks (default: every row that misses)",
    )
    args = parser.parse_args()
    seeds = tuple(range(1, args.seeds + 1))
    started = time.perf_counter()
    rows = args.rows or missing_rows(seeds, args.jobs)
    print(f"Rows: {len(rows)}, seeds 1-{seeds[-1]}.\n")
    print("\n".join(frontier(rows, seeds, args.jobs)))
    print(f"\n(frontier ran in {time.perf_counter() - started:.1f} s on {args.jobs} processes)")


if __name__ == "__main__":
    main()
