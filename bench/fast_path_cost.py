"""What the AMQP fast path costs the operator at rest: N idle QueueScalers on one RabbitMQ.

    python bench/fast_path_cost.py [--scalers 1000] [--ticks 240] [--profile]

The in-process twin of bench/peers_count.py's "1,000 idle scalers" row, without KEDA and
without the cluster: the real Engine, Brokers and RabbitMQSource (management listing and
AMQP passive declares) against the local RabbitMQ (`hack/testenv.sh up rabbitmq`, as
bench/sampling.py), with bench/sampling.py's in-process apiserver stand-in (`QuietKube`:
replica counts from the ReplicaCache, writes accepted and dropped). N queues are declared
in a vhost of their own, and N QueueScalers (minReplicas 1, maxReplicas 10, the default
15 s polling interval), each target at 1 replica: every pool is idle below its maximum,
so the fast path may peek all of them.

The engine runs its own loop (`Engine.run`, 0.5 s wakes, `EngineSettings()` defaults) on
the real clock: first `--warmup` ticks (every QueueScaler sampled and decided once, the
queues' statistics out), then `--ticks` counted ticks. Printed as Markdown:
- the operator's CPU seconds per minute (this process, every thread: pika's worker
  thread included) and the broker's (the RabbitMQ node's process, from /proc; the
  node is shared, so its CPU over an equal window without us is printed beside it);
- passive declares per second (each queue a peek asks about is one declare: the source
  sends one per queue) and management requests per minute;
- the engine's tick wall and CPU per tick (median, p95);
- with `--profile`: where the CPU went, from py-spy sampling this process (all threads,
  idle frames left out), by function: own time and time including callees.
Loopback only; the vhost is deleted at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from queuescaler.brokers import connect
from queuescaler.core.sample import BrokerClient, QueueRef, SampleResult
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.metrics import Metrics
from queuescaler.sources.base import QueueSource
from queuescaler.sources.rabbitmq.listing import QUEUE_COLUMNS
from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import CACHE, TestEnv
from sampling import EPOCH, QuietKube, _declare_queues, _environment

MIN_REPLICAS = 1
MAX_REPLICAS = 10
STATS_WAIT = 60.0
TICK_SECONDS = EngineSettings().tick_seconds


class CountingSource:
    """The real RabbitMQSource, counting what it is asked: each queue passed to peek() is
    one passive declare, each sample() one management request."""

    def __init__(self, inner: QueueSource) -> None:
        self._inner = inner
        self.declares = 0
        self.requests = 0

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        self.requests += 1
        return await self._inner.sample(queues)

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        self.declares += len(queues)
        return await self._inner.peek(queues)  # type: ignore[attr-defined, no-any-return]

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        return await self._inner.clients(scopes)  # type: ignore[attr-defined, no-any-return]

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True)
class Run:
    scalers: int
    ticks: int
    wall_s: float
    cpu_s: float
    broker_cpu_s: float
    declares: int
    requests: int
    tick_wall_ms: list[float]
    tick_cpu_ms: list[float]


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _broker_pid() -> int:
    return int((CACHE / "run" / "rabbitmq.pid").read_text().strip())


def _fleet(scalers: int, vhost: str) -> tuple[Fleet, ReplicaCache]:
    fleet, cache = Fleet(), ReplicaCache()
    for number in range(scalers):
        name = f"w{number:05d}"
        fleet.upsert({
            "metadata": {"namespace": "bench", "name": name, "uid": name, "generation": 1},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": name},
                "minReplicas": MIN_REPLICAS, "maxReplicas": MAX_REPLICAS,
                "source": {"rabbitmq": {"queue": name, "vhost": vhost,
                                        "connectionSecretRef": {"name": "rabbitmq"}}},
            },
        }, EPOCH)
        cache.set("bench", name, MIN_REPLICAS)
    return fleet, cache


async def _run(env: TestEnv, vhost: str, scalers: int, warmup: int, ticks: int,
               profile: Path | None, fast_path: bool) -> Run:
    fleet, cache = _fleet(scalers, vhost)
    sources: list[CountingSource] = []

    def make_source(broker: tuple[str, Hashable]) -> QueueSource:
        source = CountingSource(connect(broker))
        sources.append(source)
        return source

    engine = Engine(
        QuietKube({"amqpUrl": env.amqp_url, "managementUrl": env.management_url}),
        fleet, cache, Metrics(CollectorRegistry(), process=False), make_source,
        EngineSettings(fast_path=fast_path),
    )
    stop = asyncio.Event()
    walls: list[float] = []
    cpus: list[float] = []
    marks: dict[str, tuple[float, float, float, int, int]] = {}
    broker = _broker_pid()
    spy: subprocess.Popen[bytes] | None = None
    tick = engine.tick

    def mark(name: str) -> None:
        declares = sum(s.declares for s in sources)
        requests = sum(s.requests for s in sources)
        marks[name] = (time.monotonic(), time.process_time(), _proc_cpu_seconds(broker),
                       declares, requests)

    async def counted(now: float) -> None:
        nonlocal spy
        done = len(walls)
        if done == warmup:
            mark("start")
            if profile is not None:
                spy = subprocess.Popen(
                    ["py-spy", "record", "--pid", str(os.getpid()), "--format", "raw",
                     "--output", str(profile), "--nonblocking", "--threads", "--nolineno",
                     "--rate", "200"],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                               f"{os.environ.get('PATH', '')}"},
                )
        wall, cpu = time.perf_counter(), time.process_time()
        await tick(now)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        if done + 1 == warmup + ticks:
            mark("end")
            stop.set()

    engine.tick = counted  # type: ignore[method-assign]
    await engine.run(stop)
    if spy is not None:
        spy.send_signal(2)  # py-spy writes its file on SIGINT
        spy.wait(timeout=120)
    (t0, c0, b0, d0, r0), (t1, c1, b1, d1, r1) = marks["start"], marks["end"]
    return Run(scalers, ticks, t1 - t0, c1 - c0, b1 - b0, d1 - d0, r1 - r0,
               [w * 1e3 for w in walls[warmup:]], [c * 1e3 for c in cpus[warmup:]])


def _broker_idle(seconds: float) -> float:
    """The shared node's CPU seconds over `seconds` while this bench asks nothing of it."""
    pid = _broker_pid()
    before = _proc_cpu_seconds(pid)
    time.sleep(seconds)
    return _proc_cpu_seconds(pid) - before


def _wait_for_statistics(admin: BrokerAdmin, vhost: str, queues: int) -> None:
    """Until the broker lists every queue with the statistics the source reads."""
    deadline = time.monotonic() + STATS_WAIT
    while time.monotonic() < deadline:
        listed = admin.get(admin.queues_path(vhost) + "?columns=" + ",".join(QUEUE_COLUMNS))
        if len(listed) >= queues and all("consumers" in q for q in listed):
            return
        time.sleep(1.0)
    sys.exit(f"statistics of {queues} queues not emitted within {STATS_WAIT:.0f} s")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _frame(frame: str) -> str:
    """`function (path/to/file.py:12)` as `function (file.py)`."""
    name, _, where = frame.partition(" (")
    return f"{name} ({where.rstrip(')').split(':')[0].rsplit('/', 1)[-1]})" if where else name


def _profile_rows(raw: Path, top: int) -> list[str]:
    """py-spy's collapsed stacks as two tables: own samples and inclusive samples."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        samples = int(count)
        frames = [_frame(f) for f in stack.split(";")
                  if not f.startswith(("thread ", "process "))]
        if not frames:
            continue
        total += samples
        own[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    rows = [f"py-spy: {total} samples of a busy thread", "",
            "| function (file) | own % | with callees % |", "|---|---:|---:|"]
    shown = {f for f, _ in own.most_common(top)} | {f for f, _ in inclusive.most_common(top)}
    for frame in sorted(shown, key=lambda f: (-inclusive[f], -own[f])):
        rows.append(f"| `{frame}` | {100 * own[frame] / total:.1f} "
                    f"| {100 * inclusive[frame] / total:.1f} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--scalers", type=int, default=1_000)
    parser.add_argument("--ticks", type=int, default=240,
                        help="ticks counted (0.5 s each: 240 is two minutes)")
    parser.add_argument("--warmup", type=int, default=32,
                        help="ticks before counting (one 15 s polling interval and a bit)")
    parser.add_argument("--profile", action="store_true",
                        help="sample this process with py-spy over the counted ticks")
    parser.add_argument("--top", type=int, default=25, help="functions in the profile table")
    parser.add_argument("--fast-path", action=argparse.BooleanOptionalAction, default=True,
                        help="--no-fast-path: management samples only (what the rest costs)")
    parser.add_argument("--idle-baseline", type=float, default=30.0,
                        help="seconds of the broker's CPU measured without us (0: skip)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)  # the operator's own lines are not the table
    env = _environment()
    admin = BrokerAdmin(env.management_url, timeout=60)
    vhost = f"qs-bench-idle-{uuid.uuid4().hex[:8]}"
    profile = (Path(tempfile.gettempdir()) / f"fast-path-{uuid.uuid4().hex[:6]}.txt"
               if args.profile else None)
    baseline = _broker_idle(args.idle_baseline) if args.idle_baseline else None
    admin.add_vhost(vhost)
    try:
        admin.grant(vhost, admin.user)
        _declare_queues(env.amqp_url, vhost, [f"w{n:05d}" for n in range(args.scalers)])
        _wait_for_statistics(admin, vhost, args.scalers)
        run = asyncio.run(_run(env, vhost, args.scalers, args.warmup, args.ticks, profile,
                               args.fast_path))
    finally:
        admin.delete_vhost(vhost)
    per_minute = 60.0 / run.wall_s
    load = os.getloadavg()[0]
    print(f"## {run.scalers:,} idle QueueScalers on one RabbitMQ, fast path "
          f"{'on' if args.fast_path else 'off'} "
          f"({run.ticks} ticks counted, {run.wall_s:.1f} s, load {load:.1f})\n")
    print("| operator CPU s/min | broker CPU s/min (node idle without us) "
          "| passive declares /s | management requests /min | tick wall ms p50 / p95 "
          "| tick CPU ms p50 / p95 |")
    print("|---:|---:|---:|---:|---:|---:|")
    idle = (f" ({60.0 * baseline / args.idle_baseline:.2f})" if baseline is not None else "")
    print(f"| {run.cpu_s * per_minute:.2f} | {run.broker_cpu_s * per_minute:.2f}{idle} "
          f"| {run.declares / run.wall_s:.0f} | {run.requests * per_minute:.1f} "
          f"| {_percentile(run.tick_wall_ms, 0.5):.1f} / {_percentile(run.tick_wall_ms, 0.95):.1f} "
          f"| {_percentile(run.tick_cpu_ms, 0.5):.1f} / {_percentile(run.tick_cpu_ms, 0.95):.1f} |")
    print(f"\n(tick CPU: this process's, all threads, during the engine's tick; "
          f"mean {statistics.fmean(run.tick_cpu_ms):.1f} ms)")
    if profile is not None and profile.exists():
        print()
        print("\n".join(_profile_rows(profile, args.top)))
        print(f"\n(raw stacks: {profile})")


if __name__ == "__main__":
    main()
