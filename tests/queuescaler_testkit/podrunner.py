"""The pod runner: one real worker process on this machine for each Running pod of a fake pool.

The local cluster's nodes are kwok's: a Deployment's pods become Running but run nothing. A
`PodRunner` watches the pods matching a label selector and plays the kubelet for them: for each
Running pod it starts one process (the command gets the pod's name; the environment gets
POD_NAME and POD_IP), and when the pod goes away (deletionTimestamp set, a DELETED event, or
absent from a re-list) it sends that process SIGTERM and, once the pod's grace period is over,
SIGKILL. Every step is recorded, so a test can tell a graceful exit from a kill.

    with PodRunner(kubeconfig, namespace, "app=worker", pika_worker_command,
                   pika_worker_env(amqp_url, queue, processed_log), log_dir) as runner:
        ...  # scale the Deployment; wait_until(lambda: len(runner.running()) == 3, ...)

A pod gets at most one process in its life: a process that exits by itself is recorded, not
restarted (a worker crash is a finding, not something to paper over).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal

from kubernetes import client, config, watch

log = logging.getLogger(__name__)

WORKERS = Path(__file__).resolve().parent / "workers"
"""The real workers' code: pika_worker.py and celery_app.py (the package
queuescaler_testkit.workers)."""

DEFAULT_GRACE_SECONDS = 30.0
"""Kubernetes' default terminationGracePeriodSeconds."""

WATCH_SECONDS = 5
"""Server-side timeout of one watch request: bounds how long the watch thread can block."""

RESYNC_SECONDS = 30.0
"""A full re-list this often (and after any error) catches deletions a watch missed."""

STOP_SLACK_SECONDS = 3.0
"""stop() returns within the longest grace period plus this."""

EventKind = Literal["started", "spawn-failed", "sigterm", "sigkill", "exited"]
StopReason = Literal["pod-terminating", "pod-deleted", "pod-gone", "runner-stopped"]


@dataclass(frozen=True)
class RunnerEvent:
    """One thing the runner did or saw, in order."""

    at: float
    """Wall-clock time (time.time())."""
    pod: str
    kind: EventKind
    detail: str = ""


@dataclass
class WorkerRecord:
    """The life of one pod's process. `records()` hands out copies."""

    pod: str
    pid: int
    """-1 when the process could not be started (see `error`)."""
    pod_ip: str
    started_at: float
    grace_seconds: float
    """The grace period between SIGTERM and SIGKILL (the pod's, as last seen)."""
    stop_reason: StopReason | None = None
    sigterm_at: float | None = None
    sigkill_at: float | None = None
    exited_at: float | None = None
    exit_code: int | None = None
    """Popen's returncode: negative for a signal (-9 after SIGKILL)."""
    error: str | None = None

    @property
    def alive(self) -> bool:
        return self.pid > 0 and self.exited_at is None

    @property
    def killed(self) -> bool:
        """It outlived its grace period and got SIGKILL."""
        return self.sigkill_at is not None

    @property
    def graceful(self) -> bool:
        """It was asked to stop and exited 0 within its grace period."""
        return self.sigterm_at is not None and not self.killed and self.exit_code == 0


class _Worker:
    """A started process and what the runner knows about it (guarded by the runner's lock)."""

    def __init__(self, record: WorkerRecord, process: subprocess.Popen[bytes], output: IO[bytes]):
        self.record = record
        self.process = process
        self.output = output
        self.kill_deadline: float | None = None  # time.monotonic()


_live_runners: weakref.WeakSet[PodRunner] = weakref.WeakSet()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if a test process exits without stopping its runners: no stray workers."""
    for runner in list(_live_runners):
        runner._kill_all_now()


class PodRunner:
    """Keeps one local process per Running pod matching `label_selector` in `namespace`."""

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        label_selector: str,
        worker_command: Callable[[str], list[str]],
        env: Mapping[str, str],
        log_dir: Path,
    ) -> None:
        self.namespace = namespace
        self.label_selector = label_selector
        self.worker_command = worker_command
        self.env = dict(env)
        self.log_dir = log_dir
        self._api_client = config.new_client_from_config(config_file=str(kubeconfig))
        self._core = client.CoreV1Api(self._api_client)
        self._lock = threading.Lock()
        self._workers: dict[str, _Worker] = {}
        self._failed: dict[str, WorkerRecord] = {}
        self._events: list[RunnerEvent] = []
        self._stopping = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch_loop, name="podrunner-watch", daemon=True
        )
        self._reaper = threading.Thread(target=self._reap_loop, name="podrunner-reap", daemon=True)
        self._started = False
        self._stopped = False

    # -- public surface -------------------------------------------------------------------------

    def start(self) -> PodRunner:
        """Start watching (and so starting processes); returns self."""
        if self._started:
            return self
        self._started = True
        self.log_dir.mkdir(parents=True, exist_ok=True)
        _live_runners.add(self)
        self._reaper.start()
        self._watcher.start()
        return self

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL those still alive after their grace period, join.

        Idempotent. Returns within the longest grace period plus a few seconds.
        """
        if self._stopped:
            return
        self._stopped = True
        self._stopping.set()
        with self._lock:
            for name in list(self._workers):
                self._terminate_locked(name, "runner-stopped", None)
            grace = max((w.record.grace_seconds for w in self._workers.values()), default=0.0)
        deadline = time.monotonic() + grace + STOP_SLACK_SECONDS
        if self._reaper.is_alive():
            self._reaper.join(timeout=max(0.0, deadline - time.monotonic()))
        if self._reaper.is_alive() or not self._started:
            self._kill_all_now()  # the reaper never ran or is stuck: do its job here
        # The watch thread starts nothing once stopping is set; it leaves within WATCH_SECONDS.
        if self._watcher.is_alive():
            self._watcher.join(timeout=max(0.5, deadline - time.monotonic()))
        with self._lock:
            for worker in self._workers.values():
                worker.output.close()
        _live_runners.discard(self)
        self._api_client.close()

    def __enter__(self) -> PodRunner:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def running(self) -> dict[str, int]:
        """Pod name -> PID of every process alive now (including ones told to stop)."""
        with self._lock:
            return {n: w.record.pid for n, w in self._workers.items() if w.record.alive}

    def serving(self) -> dict[str, int]:
        """Pod name -> PID of every process alive and not told to stop."""
        with self._lock:
            return {
                n: w.record.pid
                for n, w in self._workers.items()
                if w.record.alive and w.record.sigterm_at is None
            }

    def records(self) -> dict[str, WorkerRecord]:
        """Pod name -> a copy of its process's record, for every pod that ever got one."""
        with self._lock:
            found = {n: replace(w.record) for n, w in self._workers.items()}
            found.update({n: replace(r) for n, r in self._failed.items()})
            return found

    def events(self) -> list[RunnerEvent]:
        """Everything the runner did, oldest first."""
        with self._lock:
            return list(self._events)

    def log_path(self, pod: str) -> Path:
        """Where the pod's process writes its stdout and stderr."""
        return self.log_dir / f"{pod}.log"

    # -- watching pods --------------------------------------------------------------------------

    def _watch_loop(self) -> None:
        resource_version: str | None = None
        resync_at = 0.0
        while not self._stopping.is_set():
            try:
                if resource_version is None or time.monotonic() >= resync_at:
                    listing = self._core.list_namespaced_pod(
                        self.namespace,
                        label_selector=self.label_selector,
                        _request_timeout=WATCH_SECONDS + 5,
                    )
                    self._reconcile(listing.items)
                    resource_version = listing.metadata.resource_version
                    resync_at = time.monotonic() + RESYNC_SECONDS
                stream = watch.Watch()
                for event in stream.stream(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self.label_selector,
                    resource_version=resource_version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,
                    _request_timeout=WATCH_SECONDS + 5,
                ):
                    if self._stopping.is_set():
                        stream.stop()
                        break
                    # A BOOKMARK's object stays a dict: read the version from the raw object.
                    resource_version = event["raw_object"]["metadata"]["resourceVersion"]
                    if event["type"] == "DELETED":
                        self._pod_gone(event["object"].metadata.name, "pod-deleted")
                    elif event["type"] in ("ADDED", "MODIFIED"):
                        self._observe(event["object"])
            except Exception as error:  # 410 Gone, a dropped connection...: re-list
                if self._stopping.is_set():
                    break
                log.info("pod watch in %s failed, re-listing: %r", self.namespace, error)
                resource_version = None
                self._stopping.wait(1.0)

    def _reconcile(self, pods: list[Any]) -> None:
        present = set()
        for pod in pods:
            present.add(pod.metadata.name)
            self._observe(pod)
        with self._lock:
            gone = [name for name in self._workers if name not in present]
        for name in gone:
            self._pod_gone(name, "pod-gone")

    def _observe(self, pod: Any) -> None:
        name: str = pod.metadata.name
        grace = _grace_seconds(pod)
        with self._lock:
            worker = self._workers.get(name)
            if worker is not None and worker.record.sigterm_at is None:
                worker.record.grace_seconds = grace
            if pod.metadata.deletion_timestamp is not None:
                self._terminate_locked(name, "pod-terminating", grace)
            elif (
                pod.status is not None
                and pod.status.phase == "Running"
                and worker is None
                and name not in self._failed
                and not self._stopping.is_set()
            ):
                self._spawn_locked(name, pod.status.pod_ip or "", grace)

    def _pod_gone(self, name: str, reason: StopReason) -> None:
        with self._lock:
            self._terminate_locked(name, reason, None)

    # -- processes (called with the lock held) --------------------------------------------------

    def _spawn_locked(self, name: str, pod_ip: str, grace: float) -> None:
        now = time.time()
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            **self.env,
            "POD_NAME": name,
            "POD_IP": pod_ip,
        }
        command = self.worker_command(name)
        output = self.log_path(name).open("ab")
        try:
            process = subprocess.Popen(
                command,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: SIGKILL reaches its children too
            )
        except OSError as error:
            output.close()
            self._failed[name] = WorkerRecord(
                name, -1, pod_ip, now, grace, exited_at=now, error=repr(error)
            )
            self._events.append(RunnerEvent(now, name, "spawn-failed", repr(error)))
            return
        self._workers[name] = _Worker(
            WorkerRecord(name, process.pid, pod_ip, now, grace), process, output
        )
        self._events.append(RunnerEvent(now, name, "started", f"pid {process.pid}"))

    def _terminate_locked(self, name: str, reason: StopReason, grace: float | None) -> None:
        worker = self._workers.get(name)
        if worker is None or not worker.record.alive or worker.record.sigterm_at is not None:
            return
        record = worker.record
        if grace is not None:
            record.grace_seconds = grace
        record.stop_reason = reason
        record.sigterm_at = time.time()
        worker.kill_deadline = time.monotonic() + record.grace_seconds
        with contextlib.suppress(ProcessLookupError):
            worker.process.send_signal(signal.SIGTERM)
        self._events.append(RunnerEvent(record.sigterm_at, name, "sigterm", reason))

    # -- reaping --------------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        """Collect exits and send SIGKILL when grace runs out; ends once stopped and all exited."""
        while True:
            with self._lock:
                self._reap_locked()
                done = self._stopping.is_set() and not any(
                    w.record.alive for w in self._workers.values()
                )
            if done:
                return
            time.sleep(0.05)

    def _reap_locked(self) -> None:
        for name, worker in self._workers.items():
            record = worker.record
            if not record.alive:
                continue
            code = worker.process.poll()
            if code is not None:
                record.exited_at = time.time()
                record.exit_code = code
                detail = f"exit code {code}" + ("" if record.sigterm_at else ", unasked")
                self._events.append(RunnerEvent(record.exited_at, name, "exited", detail))
            elif worker.kill_deadline is not None and time.monotonic() >= worker.kill_deadline:
                if record.sigkill_at is None:
                    record.sigkill_at = time.time()
                    self._events.append(
                        RunnerEvent(record.sigkill_at, name, "sigkill", "grace period over")
                    )
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.process.pid, signal.SIGKILL)

    def _kill_all_now(self) -> None:
        """SIGKILL every live process group and wait for them (no grace: an emergency exit)."""
        with self._lock:
            for worker in self._workers.values():
                if worker.record.alive and worker.process.poll() is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(worker.process.pid, signal.SIGKILL)
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        worker.process.wait(timeout=STOP_SLACK_SECONDS)
            self._reap_locked()


def _grace_seconds(pod: Any) -> float:
    """The pod's grace period: the deletion's own when it is being deleted, else its spec's."""
    if pod.metadata.deletion_grace_period_seconds is not None:
        return float(pod.metadata.deletion_grace_period_seconds)
    if pod.spec is not None and pod.spec.termination_grace_period_seconds is not None:
        return float(pod.spec.termination_grace_period_seconds)
    return DEFAULT_GRACE_SECONDS


class PodRunnerFactory:
    """Creates started runners and stops them all at once (a fixture's teardown calls stop_all)."""

    def __init__(self, kubeconfig: Path, log_root: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_root = log_root
        self.runners: list[PodRunner] = []

    def __call__(
        self,
        namespace: str,
        label_selector: str,
        worker_command: Callable[[str], list[str]],
        env: Mapping[str, str],
        log_dir: Path | None = None,
    ) -> PodRunner:
        directory = log_dir or self.log_root / f"runner-{len(self.runners)}"
        runner = PodRunner(
            self.kubeconfig, namespace, label_selector, worker_command, env, directory
        )
        self.runners.append(runner)
        return runner.start()

    def stop_all(self) -> None:
        """Stop every runner, even when one of them fails to stop."""
        errors: list[BaseException] = []
        for runner in self.runners:
            try:
                runner.stop()
            except Exception as error:
                errors.append(error)
        if errors:
            raise errors[0]


# -- the two real workers ---------------------------------------------------------------------


def pika_worker_command(pod_name: str) -> list[str]:
    """The pika consumer (workers/pika_worker.py); it reads its pod name from POD_NAME."""
    return [sys.executable, str(WORKERS / "pika_worker.py")]


def pika_worker_env(
    amqp_url: str,
    queue: str,
    processed_log: Path,
    *,
    started_log: Path | None = None,
    prefetch: int = 1,
    work_seconds: float = 0.05,
) -> dict[str, str]:
    """The environment the pika consumer reads."""
    env = {
        "AMQP_URL": amqp_url,
        "QUEUE": queue,
        "PROCESSED_LOG": str(processed_log),
        "PREFETCH": str(prefetch),
        "WORK_SECONDS": str(work_seconds),
    }
    if started_log is not None:
        env["STARTED_LOG"] = str(started_log)
    return env


def tracking_worker_command(pod_name: str) -> list[str]:
    """The journalling pika consumer (workers/tracking_worker.py): it reconnects after a lost
    connection and records what it held when told to stop."""
    return [sys.executable, str(WORKERS / "tracking_worker.py")]


def tracking_worker_env(
    amqp_url: str, queue: str, journal: Path, *, prefetch: int = 4, work_seconds: float = 0.25,
) -> dict[str, str]:
    """The environment the tracking consumer reads."""
    return {
        "AMQP_URL": amqp_url,
        "QUEUE": queue,
        "JOURNAL": str(journal),
        "PREFETCH": str(prefetch),
        "WORK_SECONDS": str(work_seconds),
    }


def celery_worker_command(queue: str) -> Callable[[str], list[str]]:
    """A Celery worker consuming `queue`: solo pool, one task at a time, named after the pod."""

    def command(pod_name: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "queuescaler_testkit.workers.celery_app",
            "worker", "--pool", "solo", "--concurrency", "1", "-Q", queue,
            "-n", f"{pod_name}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "--loglevel", "INFO",
        ]  # fmt: skip

    return command


def celery_worker_env(
    amqp_url: str,
    processed_log: Path,
    *,
    started_log: Path | None = None,
    prefetch_multiplier: int = 4,
    work_seconds: float = 0.0,
) -> dict[str, str]:
    """The environment celery_app.py reads."""
    env = {
        "AMQP_URL": amqp_url,
        "PROCESSED_LOG": str(processed_log),
        "PREFETCH_MULTIPLIER": str(prefetch_multiplier),
        "WORK_SECONDS": str(work_seconds),
    }
    if started_log is not None:
        env["STARTED_LOG"] = str(started_log)
    return env
