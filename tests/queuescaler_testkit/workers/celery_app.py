"""The Celery worker for end-to-end tests: the `is_prime` task users know, with a record of it.

Started by the pod runner as `celery -A queuescaler_testkit.workers.celery_app worker --pool solo
--concurrency 1 -Q <queue> ...` (see podrunner.celery_worker_command). Environment:
  AMQP_URL             the broker (vhost included)
  POD_NAME             the name of every AMQP connection the worker opens
  PREFETCH_MULTIPLIER  worker_prefetch_multiplier (default 4; with one process, the prefetch)
  WORK_SECONDS         an extra sleep per task, to make work last (default 0)
  PROCESSED_LOG        one line `<task id> <pod name>` per task done, written before its ack
  STARTED_LOG          optional: the same line per task started

Acks are late (after the task), so a task whose worker dies is redelivered, and Celery's warm
shutdown on SIGTERM finishes the task in hand before the worker exits.
"""

from __future__ import annotations

import os
import time
from typing import Any

from celery import Celery

# The processed-log format is defined once, there.
from queuescaler_testkit.workers.pika_worker import append_record

TASK_NAME = "is_prime"
"""The registered name: publishers send it with send_task, whatever module they import."""

POD_NAME = os.environ.get("POD_NAME", "celery-worker")

app = Celery("celery_app", broker=os.environ.get("AMQP_URL"))
app.conf.update(
    task_acks_late=True,
    task_ignore_result=True,
    worker_prefetch_multiplier=int(os.environ.get("PREFETCH_MULTIPLIER", "4")),
    broker_connection_retry_on_startup=True,
    # The idle event loop sleeps until its next timer, up to 10 s, and a SIGTERM waits for it.
    # A 10 s AMQP heartbeat checked 10 times per interval wakes it every second, so a warm
    # shutdown starts within about a second (a task must then stay under 20 s: fine for tests).
    broker_heartbeat=10,
    broker_heartbeat_checkrate=10,
    # py-amqp takes these as connection arguments: every connection is named after the pod.
    broker_transport_options={"client_properties": {"connection_name": POD_NAME}},
)


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


@app.task(name=TASK_NAME, bind=True)
def is_prime(self: Any, n: int) -> bool:
    """Trial division, plus WORK_SECONDS of sleep; records its task id when done."""
    task_id = str(self.request.id)
    started_log = os.environ.get("STARTED_LOG")
    if started_log:
        append_record(started_log, task_id, POD_NAME)
    result = _is_prime(n)
    time.sleep(float(os.environ.get("WORK_SECONDS", "0")))
    append_record(os.environ["PROCESSED_LOG"], task_id, POD_NAME)
    return result
