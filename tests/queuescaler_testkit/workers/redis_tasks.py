"""The classic Celery example on Redis, as users write it: an app `tasks` with `is_prime`, Redis
as broker and as result backend, the default queue `celery`. Only the test's records are added.

Started by the pod runner (`redis_worker_command`) as a prefork worker named `celery@<pod name>`,
which is Celery's default name in a pod (the pod's hostname is its name). Environment:
  BROKER_URL           the Redis broker (redis://:password@host:port/db), or RabbitMQ (amqp://)
  RESULT_BACKEND       where results go (the same Redis, another database, in the tests)
  POD_NAME             the pod, for the records
  WORK_SECONDS         an extra sleep per task, to make work last (default 0)
  PROCESSED_LOG        optional: one line `<task id> <pod name>` per task done
  STARTED_LOG          optional: the same line per task started
  ACKS_LATE            "1": task_acks_late (default: Celery's default, acks on start)
  PREFETCH_MULTIPLIER  worker_prefetch_multiplier (default Celery's, 4)
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from celery import Celery

from queuescaler_testkit.workers.pika_worker import append_record

TASK_NAME = "tasks.is_prime"
"""The name Celery gives `is_prime` in the users' `tasks.py`."""
QUEUE = "celery"
POD_NAME = os.environ.get("POD_NAME", "celery-worker")


def _is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    factor = 3
    while factor * factor <= n:
        if n % factor == 0:
            return False
        factor += 2
    return True


def is_prime(self: Any, n: int, work_seconds: float | None = None) -> bool:
    """Trial division, plus WORK_SECONDS of sleep (or `work_seconds`, which tests pass to make
    one task last); recorded when started and when done."""
    task_id = str(self.request.id)
    started_log = os.environ.get("STARTED_LOG")
    if started_log:
        append_record(started_log, task_id, POD_NAME)
    result = _is_prime(n)
    if work_seconds is None:
        work_seconds = float(os.environ.get("WORK_SECONDS", "0"))
    time.sleep(work_seconds)
    processed_log = os.environ.get("PROCESSED_LOG")
    if processed_log:
        append_record(processed_log, task_id, POD_NAME)
    return result


def make_app(broker_url: str | None, result_backend: str | None) -> Celery:
    """The `tasks` app: what a producer uses to send tasks and read results, and what the
    worker runs."""
    app = Celery("tasks", broker=broker_url, backend=result_backend, set_as_current=False)
    app.conf.update(broker_connection_retry_on_startup=True, result_expires=3600)
    if (broker_url or "").startswith("amqp"):
        # The other classic layout (RabbitMQ broker, Redis results): the AMQP connection is
        # named after the pod, which is how the rabbitmq source tells busy pods.
        app.conf.broker_transport_options = {
            "client_properties": {"connection_name": POD_NAME}, "confirm_publish": True,
        }
    if os.environ.get("ACKS_LATE") == "1":
        app.conf.task_acks_late = True
    if os.environ.get("PREFETCH_MULTIPLIER"):
        app.conf.worker_prefetch_multiplier = int(os.environ["PREFETCH_MULTIPLIER"])
    app.task(name=TASK_NAME, bind=True)(is_prime)
    return app


app = make_app(os.environ.get("BROKER_URL"), os.environ.get("RESULT_BACKEND"))


def redis_worker_command(
    *queues: str, pool: str = "prefork", concurrency: int = 1
) -> Callable[[str], list[str]]:
    """`command(pod_name)` for the pod runner: a worker of this app named `celery@<pod name>`,
    consuming `queues` (Celery's default `celery` when none)."""

    def command(pod_name: str) -> list[str]:
        return [
            sys.executable, "-m", "celery", "-A", "queuescaler_testkit.workers.redis_tasks",
            "worker", "--pool", pool, "--concurrency", str(concurrency),
            "-Q", ",".join(queues or (QUEUE,)), "-n", f"celery@{pod_name}",
            "--without-gossip", "--without-mingle", "--loglevel", "INFO",
        ]  # fmt: skip

    return command


def redis_worker_env(
    broker_url: str,
    result_backend: str,
    *,
    processed_log: Path | None = None,
    started_log: Path | None = None,
    work_seconds: float = 0.0,
    acks_late: bool = False,
    prefetch_multiplier: int | None = None,
) -> dict[str, str]:
    """The environment this module reads."""
    env = {"BROKER_URL": broker_url, "RESULT_BACKEND": result_backend,
           "WORK_SECONDS": str(work_seconds)}
    if processed_log is not None:
        env["PROCESSED_LOG"] = str(processed_log)
    if started_log is not None:
        env["STARTED_LOG"] = str(started_log)
    if acks_late:
        env["ACKS_LATE"] = "1"
    if prefetch_multiplier is not None:
        env["PREFETCH_MULTIPLIER"] = str(prefetch_multiplier)
    return env
