"""A producer that pauses: what `scaleDown.minStabilizationSeconds` buys (`python bench/pauses.py`).

A steady load (44 msg/s on 500 ms tasks: 22 workers' worth) slows to a trickle, or stops,
for the last PAUSE seconds of every 3 minutes, replayed on the message-level simulator with
the worker table's settings (prefetch 1, concurrency 1, pods starting in 10-30 s, 10 seeds,
1,200 s measured after a 300 s warm-up). Nothing at the moment a queue goes quiet tells a
pause from a load's end, so each row is a pause and a minStabilizationSeconds, beside KEDA
QueueLength under the HPA's defaults and the oracle. Figures are means over the seeds.
"""

from __future__ import annotations

import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "operator")]

import decide as table  # noqa: E402  (the worker table's settings, shared)
from queuescaler.sim.peers import MANAGEMENT_API_DELAY, KedaQueueLengthPolicy  # noqa: E402
from queuescaler.sim.simulator import OraclePolicy, QueueScalerPolicy, simulate  # noqa: E402
from queuescaler.sim.traces import Trace, poisson_arrivals  # noqa: E402
from queuescaler.sim.workers import LIGHT, WorkerModel  # noqa: E402

RATE = 44.0
SERVICE_RATE = 2.0
EVERY = 180
MEASURED = 1200
START_WITH = 22
CASES = (  # (pause seconds, msg/s during it, minReplicas, minStabilizationSeconds)
    (30, 0.0, 0, 0),
    (30, 0.0, 0, 60),
    (30, 0.0, 0, 120),
    (30, 0.1, 0, 0),
    (30, 0.1, 0, 60),
    (30, 0.0, 1, 0),
    (30, 0.0, 1, 60),
    (90, 0.0, 0, 0),
    (90, 0.0, 0, 120),
    (90, 0.1, 0, 120),
)


def paused_trace(pause: int, trickle: float, seed: int) -> Trace:
    """RATE msg/s, `trickle` for the last `pause` seconds of every EVERY after the warm-up."""
    warm = table.WARM_UP

    def rate(second: int) -> float:
        quiet = second >= warm and (second - warm) % EVERY >= EVERY - pause
        return trickle if quiet else RATE

    arrivals = poisson_arrivals((rate(s) for s in range(warm + MEASURED)), seed=seed)
    return Trace("pauses", arrivals, SERVICE_RATE)


def replay(job: tuple[int, float, int, int, int]) -> tuple[tuple[float, float, float], ...]:
    pause, trickle, min_replicas, shortest, seed = job
    trace = paused_trace(pause, trickle, seed)
    model = WorkerModel(
        prefetch=1, concurrency=1, service=LIGHT, start_delay=table.START_DELAY, seed=seed
    )
    per_replica = table.worker_target(trace, 1)
    spec = table.queuescaler_spec(
        trace,
        target={"messagesPerReplica": per_replica},
        minReplicas=min_replicas,
        behavior={"scaleDown": {"minStabilizationSeconds": shortest}},
    )
    policies = (
        QueueScalerPolicy(spec, stats_delay=MANAGEMENT_API_DELAY, peek_every=table.PEEK_EVERY),
        KedaQueueLengthPolicy(
            value=per_replica, max_replica_count=table.MAX_REPLICAS, min_replica_count=min_replicas
        ),
        OraclePolicy(
            trace,
            pod_start_delay=table.START_DELAY[1],
            max_replicas=table.MAX_REPLICAS,
            workers=model,
        ),
    )
    results = (
        simulate(
            trace, policy, workers=model, initial_replicas=START_WITH, measure_from=table.WARM_UP
        )
        for policy in policies
    )
    return tuple((r.p95_wait, r.replica_seconds, float(r.scale_events)) for r in results)


def main() -> None:
    seeds = table.WORKER_SEEDS
    jobs = [(*case, seed) for case in CASES for seed in seeds]
    with ProcessPoolExecutor(2) as pool:
        outcomes = list(pool.map(replay, jobs))
    print(
        f"A producer that pauses: {RATE:g} msg/s, a pause at the end of every {EVERY} s,"
        f" {len(seeds)} seeds"
    )
    print()
    print(
        "| pause | msg/s in it | minReplicas | minStabilizationSeconds"
        " | p95 wait (s) ours / KEDA / oracle"
        " | replica-s ours / KEDA / oracle | scale events ours / KEDA / oracle |"
    )
    print("|---:|---:|---:|---:|---|---|---|")
    for index, (pause, trickle, min_replicas, shortest) in enumerate(CASES):
        rows = outcomes[index * len(seeds) : (index + 1) * len(seeds)]
        # each figure's mean for ours, KEDA and the oracle
        p95, cost, events = (
            [sum(row[policy][figure] for row in rows) / len(rows) for policy in range(3)]
            for figure in range(3)
        )
        print(
            f"| {pause} s | {trickle:g} | {min_replicas} | {shortest} | "
            + " / ".join(f"{v:.1f}" for v in p95)
            + " | "
            + " / ".join(f"{v:,.0f}" for v in cost)
            + " | "
            + " / ".join(f"{v:.1f}" for v in events)
            + " |"
        )


if __name__ == "__main__":
    main()
