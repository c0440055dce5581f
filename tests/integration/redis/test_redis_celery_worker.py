"""A real Celery worker on Redis (the test kit's is_prime app, as the pod runner starts it):
what it holds is what the redis source reports as unacked.

Celery reserves up to concurrency x worker_prefetch_multiplier messages (4 here) and, with
acks_late, keeps the one it works on unacknowledged too: they all sit in kombu's unacked
hash, not in the list. A sample that saw only the list would call such a pool idle.

Measured here: a prefork worker of concurrency 1 holds 4 (1 running, 3 reserved); a solo
pool holds only the one it runs, because the task blocks the event loop that would fetch
more. Busy-worker attribution must not assume either.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from queuescaler.core.sample import QueueRef, QueueSample
from queuescaler.sources.redis.secret import broker_from_secret
from queuescaler.sources.redis.source import RedisSource
from queuescaler_testkit.podrunner import celery_worker_command, celery_worker_env
from queuescaler_testkit.redis_server import RedisServer
from queuescaler_testkit.workers.celery_app import TASK_NAME

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

DATABASE = 15
"""Apart from test_redis_source.py's databases (1 to 14)."""
TASKS = 12
PREFETCH = 4


@pytest.mark.parametrize(
    ("pool", "held"),
    [
        pytest.param("prefork", PREFETCH, id="prefork-holds-its-prefetch"),
        pytest.param("solo", 1, id="solo-holds-the-task-it-runs"),
    ],
)
async def test_a_celery_workers_reserved_and_running_tasks_are_its_queues_unacked(
    redis_server: RedisServer, tmp_path: Path, pool: str, held: int
) -> None:
    url = f"redis://:{redis_server.password}@127.0.0.1:{redis_server.port}/{DATABASE}"
    with redis.Redis(port=redis_server.port, password=redis_server.password, db=DATABASE) as r:
        r.flushdb()
    from celery import Celery

    producer = Celery("producer", broker=url, set_as_current=False)
    with producer.producer_or_acquire() as connection:
        for number in range(TASKS):
            producer.send_task(TASK_NAME, args=(number,), queue="primes", producer=connection)
    env = os.environ | celery_worker_env(
        url, tmp_path / "processed", started_log=tmp_path / "started",
        prefetch_multiplier=PREFETCH, work_seconds=60,
    )
    log = (tmp_path / "worker.log").open("wb")
    command = celery_worker_command("primes")("worker-0")
    command[command.index("solo")] = pool
    worker = subprocess.Popen(
        command, env=env, stdout=log,
        stderr=subprocess.STDOUT, start_new_session=True,
    )
    source = RedisSource(
        broker_from_secret({"redisUrl": redis_server.url, "password": redis_server.password,
                            "database": str(DATABASE)})
    )
    ref = QueueRef("", "primes")
    try:
        deadline = time.monotonic() + 60
        seen: QueueSample | None = None
        while time.monotonic() < deadline and worker.poll() is None:
            outcome = (await source.sample([ref]))[ref]
            assert isinstance(outcome, QueueSample), outcome
            seen = outcome
            if (seen.ready, seen.unacked) == (TASKS - held, held):
                break
            await asyncio.sleep(0.2)
        assert seen is not None and (seen.ready, seen.unacked, seen.complete) == (
            TASKS - held, held, True,
        ), (seen, (tmp_path / "worker.log").read_text(errors="replace")[-2000:])
        assert (tmp_path / "started").read_text().count("\n") == 1  # one runs, the rest wait
    finally:
        await source.close()
        # Ours, by its process group (prefork's children too): no warm shutdown of a 60 s task.
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=10)
        log.close()
