"""A Kafka consumer for end-to-end tests: one member of a consumer group, named after its pod.

Environment:
  BOOTSTRAP        host:port[,host:port...] (the plain listener)
  TOPIC, GROUP     the topic it reads and the group it joins
  POD_NAME         its client id, so a pool's members can be told apart
  WORK_SECONDS     the "work": a sleep per message (default 0.05)
  PROCESSED_LOG    one line `<message id> <pod name>` per message done, written before its commit
  STARTED_LOG      optional: the same line per message started

It takes one message at a time, works, records it, and commits the offset after it (at least
once: a message worked but not committed when the member leaves is read again by the member
that gets its partition; a commit the group refuses because it rebalanced meanwhile is left
to the partition's new owner, as a real consumer does, instead of ending the process). On
SIGTERM it finishes the message in hand, commits, and leaves the group (so the rebalance
starts at once, not after the session timeout) before exiting 0.
The message id is the record's key, else its value.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.errors import CommitFailedError, IllegalStateError
from aiokafka.structs import OffsetAndMetadata

from queuescaler_testkit.workers.pika_worker import append_record

WORKER = Path(__file__)


def kafka_worker_command(pod_name: str) -> list[str]:
    """The command the pod runner starts for each pod (the pod name comes as POD_NAME)."""
    return [sys.executable, str(WORKER)]


def kafka_worker_env(
    bootstrap: str,
    topic: str,
    group: str,
    processed_log: Path,
    *,
    started_log: Path | None = None,
    work_seconds: float = 0.05,
) -> dict[str, str]:
    """The environment the consumer reads."""
    env = {
        "BOOTSTRAP": bootstrap,
        "TOPIC": topic,
        "GROUP": group,
        "PROCESSED_LOG": str(processed_log),
        "WORK_SECONDS": str(work_seconds),
    }
    if started_log is not None:
        env["STARTED_LOG"] = str(started_log)
    return env


async def consume(stopping: asyncio.Event) -> None:
    pod = os.environ.get("POD_NAME", "kafka-worker")
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    processed = Path(os.environ["PROCESSED_LOG"])
    started = os.environ.get("STARTED_LOG")
    consumer = AIOKafkaConsumer(
        os.environ["TOPIC"],
        bootstrap_servers=os.environ["BOOTSTRAP"],
        group_id=os.environ["GROUP"],
        client_id=pod,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=1,
    )
    await consumer.start()
    try:
        while not stopping.is_set():
            batch = await consumer.getmany(timeout_ms=500, max_records=1)
            for partition, records in batch.items():  # one record at most
                for record in records:
                    raw = record.key if record.key is not None else record.value
                    name = bytes(raw or b"").decode()
                    if started:
                        append_record(started, name, pod)
                    # Blocking on purpose: the work is a sleep, as a CPU-bound task would be.
                    time.sleep(work)
                    append_record(processed, name, pod)
                    try:
                        await consumer.commit(
                            {partition: OffsetAndMetadata(record.offset + 1, "")})
                    except (CommitFailedError, IllegalStateError) as error:
                        # The group rebalanced while the record was worked (the blocking work
                        # held the heartbeat back): the partition's new owner reads it again.
                        print(f"commit of {name} refused, left to the partition's new owner:"
                              f" {error!r}", flush=True)
    finally:
        await consumer.stop()


def main() -> None:
    loop = asyncio.new_event_loop()
    stopping = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    try:
        loop.run_until_complete(consume(stopping))
    finally:
        loop.close()


if __name__ == "__main__":
    main()
