"""Safe scale-down: busy workers terminated and messages redelivered per scale-down (issue 09).

    python bench/safe_scale_down.py [--rounds 3] [--no-short-grace]

The same situation, scaled down three ways. A pool of 8 real pika workers (the e2e pod
runner plays the kubelet for the kwok pods: prefetch 1, 15 s tasks, so the broker's 5 s
statistics see them busy) holds 3 messages: 3 workers busy, 5 idle. Once the broker's
channel statistics show the 3 busy workers, the pool may shrink to 1:

1. queuescaler with `behavior.scaleDown.protectBusyWorkers: true` (the default),
2. queuescaler with it false,
3. an HPA-style scale-down: no operator; the benchmark patches the Deployment's /scale once
   to what the backlog policy asks, `ceil(backlog / messagesPerReplica)` clamped to the
   minimum, from the management API's ready + unacknowledged count, with no
   pod-deletion-cost marks (the ReplicaSet controller picks the pods by its own order).

Each scale-down runs twice side by side, in two pools of the row's namespace: with a grace
period longer than a task (20 s: a busy worker told to stop finishes its message) and a
short one (2 s: the pod runner SIGKILLs it mid-task and the broker redelivers its message).
A round ends when the pool is at 1 worker and every message is either done or back with the
broker. Counted per scale-down, from the pod runner's records (SIGTERM, SIGKILL, exit) and
the workers' STARTED and PROCESSED logs:

- pods removed: pods whose worker got SIGTERM;
- busy workers terminated: pods that got SIGTERM while holding a message they had not
  finished (the PROCESSED line appeared after the SIGTERM, or never);
- messages redelivered: ids started or processed more than once, plus ids whose worker
  exited without finishing them (the broker takes those back and delivers them again with
  the `redelivered` flag; the pika worker records no flags, so this is read from the logs).

Each row has its own namespace (`bench-ssd-...`, outside the test suite's `t-*`) and, for
the operator rows, an operator process of its own started with `-n <namespace>`. Another
queuescaler process on this machine whose namespaces match (one watching all namespaces,
say) would act on the same QueueScalers: the benchmark looks for one in /proc around every
round and flags the row if it saw one. Loopback only; the namespaces and queues it creates
are deleted at the end, and it stops only the processes it started.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import math
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client, config

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import CACHE, TestEnv, bring_up, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunner, pika_worker_command, pika_worker_env
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.publisher import FirstSeen, publish_messages, read_records

WORKERS = 8
MESSAGES = 3
"""Fewer messages than workers: 3 busy, 5 idle."""
MIN_REPLICAS = 1
MESSAGES_PER_REPLICA = 100
"""The backlog policy's divisor: 3 messages ask for 1 replica, whoever holds them."""
WORK_SECONDS = 15.0
"""A task: longer than the broker's 5 s statistics interval, so the busy channels show up, and
long enough that a task still has seconds to go when the pool is told to shrink."""
LONG_GRACE_SECONDS = 20
"""Longer than a task: a busy worker told to stop finishes and acks its message."""
SHORT_GRACE_SECONDS = 2
"""Shorter than what is left of a task: a busy worker told to stop is killed mid-task."""
SETTLE_SECONDS = 90.0
"""Bound on one scale-down, from the order to a pool of 1 with every message accounted for."""


@dataclass(frozen=True)
class Way:
    """One way of scaling down: a row of the table."""

    slug: str
    label: str
    protect: bool | None
    """protectBusyWorkers for the operator rows; None: no operator, the HPA-style patch."""


WAYS = (
    Way("protect", "queuescaler, protectBusyWorkers: true", True),
    Way("unprotected", "queuescaler, protectBusyWorkers: false", False),
    Way("hpa", "HPA-style /scale patch (no operator)", None),
)


@dataclass(frozen=True)
class Outcome:
    """What one scale-down did."""

    busy: int
    """Workers holding an unfinished message when the scale-down was ordered (the situation
    holds when this is 3: a slow broker or cluster can delay the order past the tasks)."""
    removed: int
    busy_terminated: int
    killed: int
    """Workers SIGKILLed once their grace period was over."""
    redelivered: int
    steps: tuple[int, ...]
    """The Deployment's replica counts, in order, from the order to the end."""


# -- the broker ---------------------------------------------------------------------------------


def management(env: TestEnv) -> BrokerAdmin:
    return BrokerAdmin(env.management_url, timeout=5)


def queue_figures(env: TestEnv, queue: str) -> dict[str, int]:
    """Consumers and the backlog (ready + unacked), as the management API says now."""
    body = management(env).queue(
        env.vhost, queue, ["consumers", "messages_ready", "messages_unacknowledged"])
    body = body if isinstance(body, dict) else {}  # `[]` until the first statistics
    return {key: int(body.get(key) or 0)
            for key in ("consumers", "messages_ready", "messages_unacknowledged")}


def busy_seen_by_broker(env: TestEnv, pods: set[str]) -> set[str]:
    """The pods among `pods` whose channels hold messages in the broker's statistics."""
    return management(env).busy_clients(env.vhost, pods)


# -- other operators ----------------------------------------------------------------------------


def foreign_operators(namespace: str, mine: set[int]) -> set[int]:
    """PIDs of queuescaler processes on this machine, not started here, that watch `namespace`."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            args = [a.decode(errors="replace")
                    for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        if "run" not in args or not any(Path(a).name == "queuescaler" for a in args):
            continue
        globs = [args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-n", "--namespace")]
        globs += [a.split("=", 1)[1] for a in args if a.startswith("--namespace=")]
        if not globs or any(fnmatch.fnmatchcase(namespace, g) for g in globs):
            found.add(int(entry.name))
    return found


# -- one scale-down -----------------------------------------------------------------------------


class Row:
    """One way's namespace, its operator (if any) and the scale-downs run in it."""

    def __init__(self, env: TestEnv, way: Way, tag: str, work_dir: Path) -> None:
        self.env = env
        self.way = way
        self.namespace = f"bench-ssd-{tag}-{way.slug}"
        self.work_dir = work_dir / way.slug
        self.api = config.new_client_from_config(config_file=str(env.kubeconfig))
        self.operator: OperatorProcess | None = None
        self.foreign: set[int] = set()

    def __enter__(self) -> Row:
        core = client.CoreV1Api(self.api)
        core.create_namespace({"metadata": {"name": self.namespace}})
        # Created once here: the pools of a round would race to create it.
        core.create_namespaced_secret(self.namespace, {
            "metadata": {"name": "rabbitmq"},
            "stringData": {"amqpUrl": self.env.amqp_url,
                           "managementUrl": self.env.management_url},
        })
        if self.way.protect is not None:
            log = CACHE / "out" / f"operator-safe-scale-down-{self.way.slug}.log"
            self.operator = OperatorProcess(self.env, log, "-n", self.namespace).start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.operator is not None:
            self.operator.stop()
        with contextlib.suppress(Exception):
            client.CoreV1Api(self.api).delete_namespace(self.namespace)
        self.api.close()

    def check_foreign(self) -> None:
        if self.way.protect is None:
            return  # no QueueScaler in this namespace: nothing another operator could act on
        mine = {self.operator.process.pid} if self.operator and self.operator.process else set()
        self.foreign |= foreign_operators(self.namespace, mine)

    def scale(self, name: str, replicas: int) -> None:
        """Patch the Deployment's /scale, as the HPA does."""
        client.AppsV1Api(self.api).patch_namespaced_deployment_scale(
            name, self.namespace, {"spec": {"replicas": replicas}}
        )

    def apply_scaler(self, pool: Pool, min_replicas: int) -> None:
        pool.apply_scaler(
            minReplicas=min_replicas, maxReplicas=WORKERS,
            target={"messagesPerReplica": MESSAGES_PER_REPLICA},
            behavior={"scaleDown": {"protectBusyWorkers": self.way.protect}},
        )

    def scale_down(self, round_no: int, grace: int) -> Outcome:
        name = f"w{round_no}-g{grace}"
        logs = self.work_dir / name
        logs.mkdir(parents=True)
        started_log, processed_log = logs / "started.log", logs / "processed.log"
        pool = Pool(self.env, self.namespace, name=name,
                    queue=f"{self.namespace}-{name}", grace_seconds=grace)
        runner = PodRunner(
            self.env.kubeconfig, self.namespace, f"app={name}", pika_worker_command,
            pika_worker_env(self.env.amqp_url, pool.queue, processed_log,
                            started_log=started_log, prefetch=1, work_seconds=WORK_SECONDS),
            logs / "workers",
        )
        try:
            pool.create()
            runner.start()
            self.check_foreign()
            return self._scale_down(pool, runner, started_log, processed_log)
        finally:
            runner.stop()
            if self.way.protect is not None:
                pool.testenv.kubectl("delete", "qs", name, "-n", self.namespace,
                                     "--wait=false", check=False)
            pool.testenv.kubectl("delete", "deployment", name, "-n", self.namespace,
                                 "--wait=false", check=False)
            with contextlib.suppress(Exception):
                pool.delete_queue()

    def _scale_down(
        self, pool: Pool, runner: PodRunner, started_log: Path, processed_log: Path
    ) -> Outcome:
        if self.way.protect is None:
            self.scale(pool.name, WORKERS)
        else:
            self.apply_scaler(pool, WORKERS)
        wait_until(lambda: len(runner.serving()) == WORKERS, timeout=60,
                   what=f"{WORKERS} running workers in {pool.name}")
        wait_until(lambda: queue_figures(self.env, pool.queue)["consumers"] == WORKERS,
                   timeout=60, what=f"{WORKERS} consumers on {pool.queue}")
        ids = publish_messages(self.env.amqp_url, pool.queue, MESSAGES, prefix=pool.name)
        wait_until(lambda: len(read_records(started_log)) == MESSAGES, timeout=30,
                   what="every message in a worker's hands")
        busy = {pod for _, pod in read_records(started_log)}
        # The same situation for every way: the busy workers visible in the broker's statistics.
        wait_until(lambda: busy_seen_by_broker(self.env, set(runner.serving())) == busy,
                   timeout=30, what="the busy workers in the broker's channel statistics")

        steps = [pool.replicas()]
        with FirstSeen(processed_log) as processed:
            done = set(read_records(processed_log))
            in_hand = {pod for i, pod in read_records(started_log) if (i, pod) not in done}
            if self.way.protect is None:
                figures = queue_figures(self.env, pool.queue)
                backlog = figures["messages_ready"] + figures["messages_unacknowledged"]
                wanted = math.ceil(backlog / MESSAGES_PER_REPLICA)
                self.scale(pool.name, max(MIN_REPLICAS, min(WORKERS, wanted)))
            else:
                self.apply_scaler(pool, MIN_REPLICAS)

            def accounted(message_id: str) -> bool:
                """Done, or back with the broker (a worker left without finishing it)."""
                done = {pod for i, pod in read_records(processed_log) if i == message_id}
                if done:
                    return True
                records = runner.records()
                return any(
                    pod in records and records[pod].exited_at is not None
                    for i, pod in read_records(started_log) if i == message_id
                )

            def settled() -> bool:
                replicas = pool.replicas()
                if replicas != steps[-1]:
                    steps.append(replicas)
                return (
                    replicas == MIN_REPLICAS
                    and len(runner.serving()) == MIN_REPLICAS
                    and len(runner.running()) == MIN_REPLICAS
                    and all(accounted(i) for i in ids)
                )

            try:
                wait_until(settled, timeout=SETTLE_SECONDS, what=f"{pool.name} at "
                           f"{MIN_REPLICAS} worker, every message accounted for")
            except AssertionError as error:
                state = (f"replicas {steps}, serving {sorted(runner.serving())}, running "
                         f"{sorted(runner.running())}, unaccounted "
                         f"{[i for i in ids if not accounted(i)]}")
                raise AssertionError(f"{error}: {state}") from None
            done_at = dict(processed.at)
        self.check_foreign()
        return count(runner, started_log, processed_log, done_at, in_hand, tuple(steps))


def count(
    runner: PodRunner,
    started_log: Path,
    processed_log: Path,
    done_at: dict[tuple[str, str], float],
    busy: set[str],
    steps: tuple[int, ...],
) -> Outcome:
    records = runner.records()
    started, processed = read_records(started_log), read_records(processed_log)
    removed = busy_terminated = killed = 0
    for pod, record in records.items():
        if record.sigterm_at is None:
            continue
        removed += 1
        killed += record.killed
        held = [r for r in started if r[1] == pod]
        if any(done_at.get(r, math.inf) > record.sigterm_at for r in held):
            busy_terminated += 1
    twice = {i for counts in (Counter(i for i, _ in started), Counter(i for i, _ in processed))
             for i, n in counts.items() if n > 1}
    done = set(processed)
    handed_back = {
        i for i, pod in started
        if (i, pod) not in done and pod in records and records[pod].exited_at is not None
    }
    return Outcome(len(busy), removed, busy_terminated, killed, len(twice | handed_back), steps)


# -- the table ----------------------------------------------------------------------------------


def cell(values: list[int]) -> str:
    """Mean per scale-down, then each round's count."""
    if not values:
        return "n/a"
    return f"{statistics.fmean(values):.1f} ({', '.join(str(v) for v in values)})"


def steps_cell(outcomes: list[Outcome]) -> str:
    seen = Counter(" -> ".join(str(s) for s in o.steps) for o in outcomes)
    return " / ".join(s + (f" (x{n})" if len(seen) > 1 else "") for s, n in seen.most_common())


@dataclass
class RowResult:
    way: Way
    long: list[Outcome]
    short: list[Outcome]
    failures: list[str]
    foreign: set[int]


def run_row(env: TestEnv, way: Way, tag: str, rounds: int, short: bool, work: Path) -> RowResult:
    result = RowResult(way, [], [], [], set())
    graces = [LONG_GRACE_SECONDS] + ([SHORT_GRACE_SECONDS] if short else [])
    with Row(env, way, tag, work) as row, ThreadPoolExecutor(len(graces)) as pool:
        for round_no in range(rounds):
            futures = {g: pool.submit(row.scale_down, round_no, g) for g in graces}
            for grace, future in futures.items():
                try:
                    outcome = future.result()
                except AssertionError as error:
                    result.failures.append(f"round {round_no + 1}, grace {grace} s: {error}")
                    print(f"  {way.slug}: {result.failures[-1]}", file=sys.stderr, flush=True)
                    continue
                (result.long if grace == LONG_GRACE_SECONDS else result.short).append(outcome)
                print(f"  {way.slug} round {round_no + 1} grace {grace} s: {outcome}",
                      file=sys.stderr, flush=True)
        result.foreign = row.foreign
    return result


def table(results: list[RowResult], short: bool) -> Iterator[str]:
    heads = ["scale-down to 1 of 8 (3 busy)", "replicas", "busy at the order", "pods removed",
             "busy workers terminated", "messages redelivered"]
    if short:
        heads += [f"grace {SHORT_GRACE_SECONDS} s: busy workers terminated",
                  f"grace {SHORT_GRACE_SECONDS} s: messages redelivered"]
    yield "| " + " | ".join(heads) + " |"
    yield "|---|---|" + "---:|" * (len(heads) - 2)
    for r in results:
        label = r.way.label + ("*" if r.foreign else "")
        cells = [label, steps_cell(r.long), cell([o.busy for o in r.long + r.short]),
                 cell([o.removed for o in r.long]),
                 cell([o.busy_terminated for o in r.long]), cell([o.redelivered for o in r.long])]
        if short:
            cells += [cell([o.busy_terminated for o in r.short]),
                      cell([o.redelivered for o in r.short])]
        yield "| " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="scale-downs per row and grace")
    parser.add_argument("--short-grace", action=argparse.BooleanOptionalAction, default=True,
                        help=f"also run each scale-down with a {SHORT_GRACE_SECONDS} s grace")
    args = parser.parse_args()
    began = time.monotonic()
    env = bring_up()
    (CACHE / "out").mkdir(parents=True, exist_ok=True)
    env.apply_crd()
    tag = uuid.uuid4().hex[:6]
    results: list[RowResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-ssd-") as work:
        for way in WAYS:
            print(f"{way.label} ...", file=sys.stderr, flush=True)
            results.append(run_row(env, way, tag, args.rounds, args.short_grace, Path(work)))
    print("\n".join(table(results, args.short_grace)))
    print()
    print(f"Per scale-down: mean (each round). {WORKERS} pika workers, prefetch 1, "
          f"{WORK_SECONDS:.0f} s tasks, {MESSAGES} messages in hand, min {MIN_REPLICAS}, "
          f"messagesPerReplica {MESSAGES_PER_REPLICA}; {args.rounds} rounds. replicas: the "
          "Deployment's counts from the order on. busy at the order: workers holding an "
          "unfinished message when the scale-down was ordered (both grace periods). pods "
          "removed: workers sent SIGTERM. busy workers terminated: SIGTERM while holding an "
          "unfinished message. messages "
          "redelivered: started or done more than once, or handed back by a worker that left "
          f"without finishing. Those three with a {LONG_GRACE_SECONDS} s grace period (longer "
          "than a task: graceful workers finish)"
          + (f"; the last two columns with {SHORT_GRACE_SECONDS} s (busy workers are SIGKILLed "
             "mid-task, their messages redelivered)." if args.short_grace else "."))
    for r in results:
        for failure in r.failures:
            print(f"{r.way.label}: not counted: {failure}")
        if r.foreign:
            print(f"* another queuescaler process watching {r.way.slug}'s namespace was running "
                  f"(PIDs {sorted(r.foreign)}): it may have acted on these QueueScalers too.")
    print(f"Wall clock: {time.monotonic() - began:.0f} s.")


if __name__ == "__main__":
    main()
