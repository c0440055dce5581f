"""Real workers: the per-replica throughput the operator measures beside the true one (issue 17).

    python bench/real_workers.py [--seconds 210] [--warmup 60] [--only celery,pika-p1]
                                 [--one-vhost]

Three pools of real workers, side by side on the local cluster (the test kit's pod runner
plays the kubelet for the kwok pods), each sized by a QueueScaler that one real operator
process serves:

1. Celery: the test kit's `is_prime` app (`task_acks_late=True`, the default
   `worker_prefetch_multiplier` 4) in a prefork pool of 4 processes per pod: each worker
   reserves 4 x 4 = 16 messages and runs 4 at once;
2. pika, `basic_qos(prefetch_count=1)`: one message in hand, one at a time;
3. pika, prefetch 20: up to 20 held, one at a time.

Each pool starts at 1 replica and gets a steady publish rate (one message every 1/rate s,
broker-confirmed, every one with its own id) that needs about 2.5 fully busy replicas:
`needed = ceil(rate x T / c)` for a task of T seconds on c processes. The QueueScaler uses the
operator's defaults (messagesPerReplica 10, no drainSeconds, protectBusyWorkers) except three
windows shortened so a few minutes show where the pool settles: 5 s polls (the broker's
statistics interval), scale-down stabilization 30 s and cooldown 15 s.

Every 2 s the benchmark reads the operator's live gauges (`queuescaler_per_replica_rate`, the
number the status keeps as `perReplicaRate`; the status field is read too, and used when the
gauge is absent), the Deployment's replicas and the running workers. The truth comes from
the workers' own logs (a line per task started and one per task done, time-stamped as they
appear): true capacity of one fully busy replica = c / mean task time; achieved = tasks done
per second per running replica. After the warm-up the table gives, over the rest of the
publishing: the operator's perReplicaRate (median, last) against the true capacity, and the
replicas it held (median, max) against the replicas the work needed. Once the publishing
stops the pools drain; every published id must be processed (lost > 0 fails the run, as does
a harness failure; an estimate far from the truth does not: this benchmark shows, it does
not judge).

Each pool has its own namespace and RabbitMQ vhost (both `bench-rw-<tag>-<pool>`), deleted at
the end. `--one-vhost` runs them all in the environment's vhost instead: the operator then
sees every pool's busy connections, and tells them apart by the queues they consume (the
management API's consumer listing). Before it did, it counted a busy connection of another
pool as a busy pod it could not place, and held every scale-down of every pool ("busy
workers unknown: 6 busy clients matched no pod"). A foreign
queuescaler process watching the namespaces (one for all namespaces, say) is looked for
around each run and flagged. Loopback only; only processes started here are stopped, by PID.
The sampled timelines are kept in ~/.cache/queuescaler/out/real-workers-<pool>.csv.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import math
import statistics
import sys
import tempfile
import threading
import time
import traceback
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import astuple, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import pika
from celery import Celery
from kubernetes import client, config

from queuescaler_testkit.broker import quote
from queuescaler_testkit.env import CACHE, TestEnv, bring_up, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import (
    PodRunner,
    celery_worker_env,
    pika_worker_command,
    pika_worker_env,
)
from queuescaler_testkit.pool import Pool, scaler_gauges
from queuescaler_testkit.publisher import IS_PRIME_TASK
from safe_scale_down import foreign_operators, queue_figures  # the sibling benchmark's helpers

POOL = "worker"
MAX_REPLICAS = 8
"""Room above the work's need, so an over-provisioning estimate shows instead of a clamp."""
MESSAGES_PER_REPLICA = 10
"""The operator's default."""
SCALER: dict[str, Any] = {
    "minReplicas": 1,
    "maxReplicas": MAX_REPLICAS,
    "pollingIntervalSeconds": 5,
    "target": {"messagesPerReplica": MESSAGES_PER_REPLICA},
    "behavior": {
        "scaleUp": {"cooldownSeconds": 15},
        "scaleDown": {"cooldownSeconds": 15, "stabilizationSeconds": 30,
                      "maxStepPercent": 100},
    },
}
"""The operator's defaults but for the poll and the scale-down windows (the module's
docstring says why). Merged over the test kit's Pool spec, whose FAST_BEHAVIOR it overrides."""
GRACE_SECONDS = 30
"""Longer than any task: a worker told to stop finishes what it runs."""
SAMPLE_SECONDS = 2.0
START_BOUND = 120.0
"""From the QueueScaler's creation to a consumer on the queue (a Celery pod starts in seconds)."""
DRAIN_BOUND = 180.0
"""From the end of the publishing to every published id processed."""


@dataclass(frozen=True)
class Scenario:
    """One pool: a row of the table."""

    slug: str
    worker: str
    prefetch: str
    """As the worker sets it (Celery's is per pod: multiplier x concurrency)."""
    concurrency: int
    """Tasks one pod runs at once."""
    work_seconds: float
    """The sleep each task makes (the measured task time is a little longer)."""
    rate: float
    """Messages published per second."""


SCENARIOS = (
    Scenario("celery", "Celery prefork, acks late", "16 (4 x 4)", 4, 2.0, 5.0),
    Scenario("pika-p1", "pika", "1", 1, 0.4, 6.0),
    Scenario("pika-p20", "pika", "20", 1, 0.4, 6.0),
)


def celery_prefork_command(queue: str, concurrency: int) -> Callable[[str], list[str]]:
    """The test kit's Celery worker (podrunner.celery_worker_command) with a prefork pool of
    `concurrency` processes instead of its solo pool: what users run."""

    def command(pod_name: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "queuescaler_testkit.workers.celery_app",
            "worker", "--pool", "prefork", "--concurrency", str(concurrency), "-Q", queue,
            "-n", f"{pod_name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel", "INFO",
        ]  # fmt: skip

    return command


# -- publishing at a steady rate ------------------------------------------------------------------


class Sender(Protocol):
    def send(self, message_id: str) -> None: ...


@contextlib.contextmanager
def pika_sender(amqp_url: str, queue: str) -> Iterator[Sender]:
    """Persistent messages with publisher confirms, as publisher.publish_messages sends them,
    on one connection for the whole run."""
    parameters = pika.URLParameters(amqp_url)
    parameters.client_properties = {"connection_name": f"bench-publisher-{queue}"}
    connection = pika.BlockingConnection(parameters)
    try:
        channel = connection.channel()
        channel.confirm_delivery()

        class PikaSender:
            def send(self, message_id: str) -> None:
                properties = pika.BasicProperties(
                    delivery_mode=pika.DeliveryMode.Persistent, message_id=message_id,
                    headers={"message-id": message_id},
                )
                channel.basic_publish("", queue, message_id.encode(), properties, mandatory=True)

        yield PikaSender()
    finally:
        with contextlib.suppress(Exception):
            connection.close()


@contextlib.contextmanager
def celery_sender(amqp_url: str, queue: str) -> Iterator[Sender]:
    """`is_prime` tasks with confirms, as publisher.publish_is_prime_tasks sends them, through one
    producer for the whole run; the task id is the message id."""
    app = Celery("queuescaler-bench-publisher", broker=amqp_url)
    app.conf.update(task_ignore_result=True, broker_connection_retry_on_startup=True,
                    broker_transport_options={"confirm_publish": True})
    try:
        with app.producer_or_acquire() as producer:

            class CelerySender:
                def send(self, message_id: str) -> None:
                    app.send_task(IS_PRIME_TASK, args=(10_007,), task_id=message_id,
                                  queue=queue, producer=producer)

            yield CelerySender()
    finally:
        app.close()


class SteadyPublisher(threading.Thread):
    """One message every 1/rate s for `seconds` (on a fixed schedule: no drift), each confirmed."""

    def __init__(self, sender: Callable[[], contextlib.AbstractContextManager[Sender]],
                 rate: float, seconds: float, prefix: str) -> None:
        super().__init__(name=f"publisher-{prefix}", daemon=True)
        self.sender, self.rate, self.seconds, self.prefix = sender, rate, seconds, prefix
        self.confirmed: list[str] = []
        self.began = self.ended = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with self.sender() as sender:
                self.began = time.time()
                for n in range(math.ceil(self.rate * self.seconds)):
                    delay = self.began + n / self.rate - time.time()
                    if delay > 0:
                        time.sleep(delay)
                    message_id = f"{self.prefix}-{n:06d}"
                    sender.send(message_id)
                    self.confirmed.append(message_id)
        except BaseException as error:  # reported by the scenario as a harness failure
            self.error = error
        finally:
            self.ended = time.time()


# -- what the workers did -------------------------------------------------------------------------


class Stamps:
    """When each `<id> <pod>` line of an append-only worker log first appeared.

    Like publisher.FirstSeen, but reading only what was appended since the last look: the
    benchmark polls six logs 20 times a second on a 2-core machine that also runs the workers.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.at: dict[tuple[str, str], float] = {}
        self._offset = 0
        self._rest = b""

    def poll(self, now: float) -> None:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return
        self._offset += len(data)
        *lines, self._rest = (self._rest + data).split(b"\n")
        for line in lines:
            message_id, _, pod = line.decode(errors="replace").partition(" ")
            if message_id and pod:
                self.at.setdefault((message_id, pod), now)


class Watcher(threading.Thread):
    """Time-stamps the workers' started and processed lines (every 50 ms), and samples what the
    operator and the cluster say (every SAMPLE_SECONDS)."""

    def __init__(self, sample: Callable[[], Sample], started: Path, processed: Path) -> None:
        super().__init__(name="watcher", daemon=True)
        self.sample = sample
        self.started, self.processed = Stamps(started), Stamps(processed)
        self.samples: list[Sample] = []
        self.sample_errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        next_sample = 0.0
        while not self._halt.wait(0.05):
            now = time.time()
            self.started.poll(now)
            self.processed.poll(now)
            if now >= next_sample:
                next_sample = now + SAMPLE_SECONDS
                try:
                    self.samples.append(self.sample())
                except Exception:  # a slow apiserver or a scrape timeout: a gap, not a failure
                    self.sample_errors += 1

    def __enter__(self) -> Watcher:
        self.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._halt.set()
        self.join(timeout=10)
        now = time.time()
        self.started.poll(now)
        self.processed.poll(now)


@dataclass(frozen=True)
class Sample:
    """One look at the operator (its gauges), the QueueScaler's status and the pool."""

    at: float
    replicas: int
    """The Deployment's spec.replicas: what the operator holds."""
    running: int
    """Worker processes serving (not told to stop)."""
    rate_gauge: float | None
    rate_status: float | None
    publish: float | None
    ack: float | None
    ready: float | None
    unacked: float | None
    consumers: float | None
    recommended: float | None
    reason: str
    message: str
    """lastDecision.message: why the operator holds what it holds."""

    @property
    def per_replica_rate(self) -> float | None:
        return self.rate_gauge if self.rate_gauge is not None else self.rate_status


# -- one pool -------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: Scenario
    published: int = 0
    processed: int = 0
    """Distinct ids done."""
    duplicates: int = 0
    """Ids done more than once (redelivered after a worker stopped with them, say)."""
    lost: int = 0
    task_seconds: float = math.nan
    concurrency_seen: int = 0
    achieved: float = math.nan
    """Tasks done per second per running replica, over the window."""
    publish_rate: float = math.nan
    began: float = 0.0
    """When the publishing began."""
    window: tuple[float, float] = (0.0, 0.0)
    samples: list[Sample] = field(default_factory=list)
    sample_errors: int = 0
    failure: str | None = None
    foreign: set[int] = field(default_factory=set)


def in_vhost(env: TestEnv, vhost: str) -> TestEnv:
    """The environment with `vhost` instead of its own (the same broker user)."""
    parts = urllib.parse.urlsplit(env.amqp_url)
    amqp_url = urllib.parse.urlunsplit(parts._replace(path="/" + quote(vhost)))
    return dataclasses.replace(env, amqp_url=amqp_url, vhost=vhost)


def run_scenario(env: TestEnv, scenario: Scenario, namespace: str, operator: OperatorProcess,
                 seconds: float, warmup: float, work: Path, own_vhost: bool) -> Result:
    result = Result(scenario)
    if own_vhost:  # named after the namespace; deleted with everything in it at the end
        env = in_vhost(env, namespace)
    api = config.new_client_from_config(config_file=str(env.kubeconfig))
    scalers = client.CustomObjectsApi(api)
    apps = client.AppsV1Api(api)
    logs = work / scenario.slug
    logs.mkdir(parents=True)
    started_log, processed_log = logs / "started.log", logs / "processed.log"
    pool = Pool(env, namespace, name=POOL, queue=namespace, grace_seconds=GRACE_SECONDS)
    if scenario.worker.startswith("Celery"):
        command = celery_prefork_command(pool.queue, scenario.concurrency)
        worker_env = celery_worker_env(env.amqp_url, processed_log, started_log=started_log,
                                       work_seconds=scenario.work_seconds)
        sender = functools.partial(celery_sender, env.amqp_url, pool.queue)
    else:
        command = pika_worker_command
        worker_env = pika_worker_env(env.amqp_url, pool.queue, processed_log,
                                     started_log=started_log, prefetch=int(scenario.prefetch),
                                     work_seconds=scenario.work_seconds)
        sender = functools.partial(pika_sender, env.amqp_url, pool.queue)
    runner = PodRunner(env.kubeconfig, namespace, f"app={POOL}", command, worker_env,
                       logs / "workers")
    mine = {operator.process.pid} if operator.process else set()

    def sample() -> Sample:
        gauges = scaler_gauges(operator.metrics(), namespace, POOL)
        status = scalers.get_namespaced_custom_object(
            "queuescaler.io", "v1alpha1", namespace, "queuescalers", POOL).get("status") or {}
        scale = apps.read_namespaced_deployment_scale(POOL, namespace)
        rate = status.get("perReplicaRate")
        return Sample(
            at=time.time(), replicas=int(scale.spec.replicas or 0), running=len(runner.serving()),
            rate_gauge=gauges.get("queuescaler_per_replica_rate"),
            rate_status=float(rate) if isinstance(rate, int | float) else None,
            publish=gauges.get("queuescaler_publish_rate"),
            ack=gauges.get("queuescaler_ack_rate"),
            ready=gauges.get("queuescaler_backlog_messages:ready"),
            unacked=gauges.get("queuescaler_backlog_messages:unacked"),
            consumers=gauges.get("queuescaler_consumers"),
            recommended=gauges.get("queuescaler_recommended_replicas"),
            reason=str((status.get("lastDecision") or {}).get("reason", "")),
            message=str((status.get("lastDecision") or {}).get("message", "")),
        )

    try:
        if own_vhost:
            admin = env.admin()
            admin.add_vhost(env.vhost)
            admin.grant(env.vhost, admin.user)
        client.CoreV1Api(api).create_namespace({"metadata": {"name": namespace}})
        result.foreign |= foreign_operators(namespace, mine)
        pool.create()
        runner.start()
        pool.apply_scaler(**SCALER)
        wait_until(lambda: queue_figures(env, pool.queue)["consumers"] >= 1, timeout=START_BOUND,
                   what=f"a worker consuming {pool.queue}")
        publisher = SteadyPublisher(sender, scenario.rate, seconds, prefix=namespace)
        with Watcher(sample, started_log, processed_log) as watcher:
            publisher.start()
            publisher.join(timeout=seconds + 60)
            if publisher.is_alive() or publisher.error is not None:
                raise AssertionError(f"the publisher failed: {publisher.error!r}")
            ids = set(publisher.confirmed)

            def drained() -> bool:
                return ids <= {i for i, _ in watcher.processed.at}

            with contextlib.suppress(AssertionError):  # what is missing is counted as lost
                wait_until(drained, timeout=DRAIN_BOUND, what="every published id processed")
        result.foreign |= foreign_operators(namespace, mine)
        result.samples, result.sample_errors = watcher.samples, watcher.sample_errors
        count(result, publisher, watcher, warmup)
        if not drained():
            figures = queue_figures(env, pool.queue)
            print(f"  {scenario.slug}: {result.lost} ids not processed after {DRAIN_BOUND:.0f} "
                  f"s; the queue holds {figures}", file=sys.stderr, flush=True)
    except Exception as error:
        result.failure = f"{type(error).__name__}: {error}"
        traceback.print_exc()
    finally:
        env.kubectl("delete", "qs", POOL, "-n", namespace, "--wait=false", check=False)
        env.kubectl("delete", "deployment", POOL, "-n", namespace, "--wait=false", check=False)
        runner.stop()
        if own_vhost:
            with contextlib.suppress(Exception):
                env.admin().delete_vhost(env.vhost, missing_ok=True)
        else:
            with contextlib.suppress(Exception):
                pool.delete_queue()
            with contextlib.suppress(Exception):  # the exchange Celery declares after the queue
                env.admin().delete(f"/api/exchanges/{quote(env.vhost)}/{quote(pool.queue)}",
                                   missing_ok=True)
        with contextlib.suppress(Exception):
            client.CoreV1Api(api).delete_namespace(namespace)
        api.close()
    return result


def count(result: Result, publisher: SteadyPublisher, watcher: Watcher, warmup: float) -> None:
    """The truth from the workers' logs, over the window from the warm-up's end to the
    publishing's."""
    started, processed = watcher.started.at, watcher.processed.at
    ids = set(publisher.confirmed)
    done_counts: dict[str, int] = {}
    for message_id, _ in processed:
        done_counts[message_id] = done_counts.get(message_id, 0) + 1
    result.published = len(ids)
    result.processed = len(ids & done_counts.keys())
    result.duplicates = sum(1 for i in ids if done_counts.get(i, 0) > 1)
    result.lost = len(ids - done_counts.keys())
    result.publish_rate = len(ids) / max(publisher.ended - publisher.began, 1e-9)
    result.began = publisher.began
    durations = [done - started[key] for key, done in processed.items() if key in started]
    if durations:
        result.task_seconds = statistics.fmean(durations)
    result.concurrency_seen = most_at_once(started, processed)
    w0, w1 = publisher.began + warmup, publisher.ended
    result.window = (w0, w1)
    running = [s.running for s in result.samples if w0 <= s.at <= w1]
    done_in_window = sum(1 for at in processed.values() if w0 <= at <= w1)
    if running and w1 > w0 and statistics.fmean(running) > 0:
        result.achieved = done_in_window / (w1 - w0) / statistics.fmean(running)


def most_at_once(started: dict[tuple[str, str], float],
                 processed: dict[tuple[str, str], float]) -> int:
    """The most tasks one pod ran at the same time (ends before starts at equal stamps)."""
    events: dict[str, list[tuple[float, int]]] = {}
    for key, done in processed.items():
        if key in started:
            events.setdefault(key[1], []).extend([(started[key], 1), (done, -1)])
    most = 0
    for pod_events in events.values():
        level = 0
        for _, step in sorted(pod_events):
            level += step
            most = max(most, level)
    return most


# -- the tables -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def num(value: float | None, digits: int = 2) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def in_window(result: Result) -> list[Sample]:
    w0, w1 = result.window
    return [s for s in result.samples if w0 <= s.at <= w1]


def reasons(window: list[Sample]) -> str:
    """The status's lastDecision.reason over the window, most frequent first."""
    seen = Counter(s.reason or "none" for s in window)
    return ", ".join(f"{r} {n / len(window):.0%}" for r, n in seen.most_common(3)) or "n/a"


def steps(result: Result) -> str:
    """The Deployment's replica counts over the run, each with when it was first seen (s from
    the first publish)."""
    changes: list[str] = []
    last: int | None = None
    for s in result.samples:
        if s.replicas != last:
            changes.append(f"{s.replicas}@{s.at - result.began:.0f}s")
            last = s.replicas
    shown = changes if len(changes) <= 10 else [*changes[:9], f"... ({len(changes)} counts)"]
    return " -> ".join(shown)


def truth_table(results: list[Result]) -> Iterator[str]:
    heads = ["worker", "prefetch", "concurrency", "task s", "true capacity msg/s per replica",
             "achieved msg/s per replica", "operator perReplicaRate (median, last)",
             "operator / true", "replicas held (median, max)", "replicas needed",
             "messages processed / lost"]
    yield "| " + " | ".join(heads) + " |"
    yield "|---|---:|---:|" + "---:|" * (len(heads) - 3)
    for r in results:
        s = r.scenario
        label = s.worker + ("*" if r.foreign else "")
        if r.failure:
            yield "| " + " | ".join([label, s.prefetch, str(s.concurrency)] + ["n/a"] * 8) + " |"
            continue
        capacity = s.concurrency / r.task_seconds
        load = r.publish_rate * r.task_seconds / s.concurrency
        needed = str(math.ceil(load)) if math.isfinite(load) else "n/a"
        share = r.achieved / capacity
        busy = f" ({share:.0%} busy)" if math.isfinite(share) else ""
        window = in_window(r)
        rates = [x for x in (w.per_replica_rate for w in window) if x is not None]
        rate_median = median(rates)
        ratio = "n/a" if rate_median is None else f"{rate_median / capacity:.2f}"
        held = [float(w.replicas) for w in window]
        concurrency = str(s.concurrency) + (
            "" if r.concurrency_seen == s.concurrency else f" (seen {r.concurrency_seen})")
        yield "| " + " | ".join([
            label, s.prefetch, concurrency, num(r.task_seconds),
            num(capacity), num(r.achieved) + busy,
            f"{num(rate_median)}, {num(rates[-1] if rates else None)}", ratio,
            f"{num(median(held), 1)}, {max(held, default=0):.0f}",
            f"{needed} ({r.publish_rate:.2f}/s x {r.task_seconds:.2f} s / {s.concurrency})",
            f"{r.processed} of {r.published} / {r.lost}"
            + (f" ({r.duplicates} twice)" if r.duplicates else ""),
        ]) + " |"


def operator_table(results: list[Result]) -> Iterator[str]:
    heads = ["worker", "prefetch", "publish/s", "ack/s", "ready", "unacked", "consumers",
             "recommended", "decisions (share of looks)",
             "Deployment replicas (count@s from the first publish)"]
    yield "| " + " | ".join(heads) + " |"
    yield "|---|---:|" + "---:|" * 6 + "---|---|"
    for r in results:
        window = in_window(r)
        yield "| " + " | ".join([
            r.scenario.worker, r.scenario.prefetch, *(
                num(median([x for x in (getattr(w, name) for w in window) if x is not None]), 1)
                for name in ("publish", "ack", "ready", "unacked", "consumers", "recommended")
            ),
            reasons(window), steps(r) if r.samples else "n/a",
        ]) + " |"


def save_timeline(result: Result) -> Path:
    path = CACHE / "out" / f"real-workers-{result.scenario.slug}.csv"
    with path.open("w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow([f.name for f in fields(Sample)])
        writer.writerows(astuple(s) for s in result.samples)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=210.0,
                        help="how long each pool gets its steady publish rate")
    parser.add_argument("--warmup", type=float, default=60.0,
                        help="the first seconds of it, left out of the medians")
    parser.add_argument("--one-vhost", action="store_true",
                        help="all pools in the environment's vhost instead of one each (the "
                        "operator then sees the other pools' busy connections, and must tell "
                        "them apart by their queues)")
    parser.add_argument("--only", default="",
                        help="comma-separated pools to run (" + ", ".join(
                            s.slug for s in SCENARIOS) + ")")
    args = parser.parse_args()
    chosen = [s for s in SCENARIOS if not args.only or s.slug in args.only.split(",")]
    if not chosen or args.warmup >= args.seconds:
        parser.error("no pool chosen, or a warm-up as long as the run")
    began = time.monotonic()
    env = bring_up()
    (CACHE / "out").mkdir(parents=True, exist_ok=True)
    env.apply_crd()
    tag = uuid.uuid4().hex[:6]
    log = CACHE / "out" / "operator-real-workers.log"
    operator = OperatorProcess(env, log, "-n", f"bench-rw-{tag}-*").start()
    try:
        with tempfile.TemporaryDirectory(prefix="bench-rw-") as work, \
                ThreadPoolExecutor(len(chosen)) as threads:
            futures = [threads.submit(run_scenario, env, s, f"bench-rw-{tag}-{s.slug}", operator,
                                      args.seconds, args.warmup, Path(work), not args.one_vhost)
                       for s in chosen]
            results = [f.result() for f in futures]
    finally:
        operator.stop()
    for r in results:
        if r.samples:
            save_timeline(r)
    print("\n".join(truth_table(results)))
    print()
    print("What the operator saw (its gauges; medians over the same window):")
    print()
    print("\n".join(operator_table(results)))
    print()
    for r in results:
        window = in_window(r)
        if window:
            print(f"- {r.scenario.slug}, the last decision: {window[-1].reason}: "
                  f"{window[-1].message}")
    print()
    print(
        f"Each pool from 1 replica, a steady publish rate for {args.seconds:.0f} s; medians and "
        f"maxima over the {args.seconds - args.warmup:.0f} s after a {args.warmup:.0f} s "
        "warm-up. task s: mean time from a task's start to its end, from the workers' logs. "
        "true capacity: concurrency / task s, what one fully busy replica does. achieved: tasks "
        "done per second per running worker pod. operator perReplicaRate: the live gauge "
        "queuescaler_per_replica_rate (the status field perReplicaRate when absent). replicas "
        "needed: ceil(publish rate x task s / concurrency). QueueScaler: min 1, max "
        f"{MAX_REPLICAS}, messagesPerReplica {MESSAGES_PER_REPLICA}, 5 s polls, scale-down "
        "stabilization 30 s and cooldown 15 s, otherwise the defaults. "
        + ("All pools in one vhost." if args.one_vhost else "Each pool in a vhost of its own."))
    failed = False
    for r in results:
        if r.failure:
            failed = True
            print(f"{r.scenario.slug}: harness failure: {r.failure}")
        if r.lost:
            failed = True
            print(f"{r.scenario.slug}: {r.lost} messages lost (not processed within "
                  f"{DRAIN_BOUND:.0f} s of the last publish)")
        if r.sample_errors:
            print(f"{r.scenario.slug}: {r.sample_errors} looks failed (gaps in the timeline)")
        if r.foreign:
            print(f"* another queuescaler process watching {r.scenario.slug}'s namespace was "
                  f"running (PIDs {sorted(r.foreign)}): it may have acted on its QueueScaler.")
    print(f"Wall clock: {time.monotonic() - began:.0f} s.")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
