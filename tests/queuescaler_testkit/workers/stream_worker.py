"""A Redis-stream consumer for end-to-end tests: one consumer of a group, named after its pod.

Environment:
  REDIS_URL      redis://:password@host:port/db
  STREAM, GROUP  the stream and its consumer group (the group must exist)
  POD_NAME       the consumer's name, so the operator maps busy consumers to pods
  WORK_SECONDS   the "work": a sleep per entry (default 0.05)
  PROCESSED_LOG  one line `<entry id> <pod name>` per entry done, written before its XACK
  STARTED_LOG    optional: the same line per entry started

It reads one new entry at a time (XREADGROUP COUNT 1, BLOCK 1 s), works, records and acks it.
On SIGTERM it finishes the entry in hand, acks it and exits 0; it holds nothing else.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from types import FrameType
from typing import Any

import redis

from queuescaler_testkit.workers.pika_worker import append_record

stopping = False


def _stop(signum: int, frame: FrameType | None) -> None:
    global stopping
    stopping = True


def main() -> None:
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stream, group = os.environ["STREAM"], os.environ["GROUP"]
    pod = os.environ.get("POD_NAME", "stream-worker")
    work = float(os.environ.get("WORK_SECONDS", "0.05"))
    processed = Path(os.environ["PROCESSED_LOG"])
    started = os.environ.get("STARTED_LOG")
    client = redis.Redis.from_url(os.environ["REDIS_URL"])
    while not stopping:
        got: Any = client.xreadgroup(group, pod, {stream: ">"}, count=1, block=1000)
        for _, entries in got or ():
            for entry_id, _fields in entries:
                name = bytes(entry_id).decode()
                if started:
                    append_record(started, name, pod)
                time.sleep(work)
                append_record(processed, name, pod)
                client.xack(stream, group, entry_id)
    client.close()


if __name__ == "__main__":
    main()
