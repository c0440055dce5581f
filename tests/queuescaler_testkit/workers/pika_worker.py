"""A real pika consumer for end-to-end tests: acks after the work, stops gracefully on SIGTERM.

Environment:
  AMQP_URL       the broker (vhost included)
  QUEUE          the queue to consume (declared durable)
  POD_NAME       the AMQP connection name, so consumers map to pods
  PREFETCH       basic.qos prefetch count (default 1)
  WORK_SECONDS   the "work": a sleep per message (default 0.05)
  PROCESSED_LOG  one line `<message id> <pod name>` per message done, written before its ack
  STARTED_LOG    optional: the same line per message started (what a killed worker held)

A message's id is its `message-id` header, else its message_id property, else its body.
On SIGTERM (or SIGINT) it finishes and acks the message in hand, hands back the messages it
holds but has not started, closes the connection and exits 0.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any

import pika

log = logging.getLogger("pika-worker")


def append_record(path: str | Path, message_id: str, pod_name: str) -> None:
    """Append `<message id> <pod name>` durably; one write in append mode, so writers can share."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{message_id} {pod_name}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def message_id_of(properties: Any, body: bytes) -> str:
    """The `message-id` header, else the message_id property, else the body."""
    headers = properties.headers or {}
    found = headers.get("message-id") or properties.message_id
    if isinstance(found, bytes):
        found = found.decode()
    return str(found) if found else body.decode(errors="replace")


class Worker:
    """Consumes one queue; `stopping` is raised by the signal handler."""

    def __init__(self) -> None:
        self.pod_name = os.environ.get("POD_NAME", "pika-worker")
        self.queue = os.environ["QUEUE"]
        self.prefetch = int(os.environ.get("PREFETCH", "1"))
        self.work_seconds = float(os.environ.get("WORK_SECONDS", "0.05"))
        self.processed_log = os.environ["PROCESSED_LOG"]
        self.started_log = os.environ.get("STARTED_LOG")
        self.stopping = False

    def ask_to_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: a sleep in progress resumes (PEP 475), so the message in hand completes.
        log.info("signal %d: finishing the message in hand, then stopping", signum)
        self.stopping = True

    def handle(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        if self.stopping:
            # Delivered after the stop request: back to the queue, untouched, for another worker.
            channel.basic_reject(delivery_tag=method.delivery_tag, requeue=True)
            return
        message_id = message_id_of(properties, body)
        if self.started_log:
            append_record(self.started_log, message_id, self.pod_name)
        time.sleep(self.work_seconds)
        append_record(self.processed_log, message_id, self.pod_name)
        channel.basic_ack(delivery_tag=method.delivery_tag)

    def run(self) -> int:
        parameters = pika.URLParameters(os.environ["AMQP_URL"])
        parameters.client_properties = {"connection_name": self.pod_name}
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.queue_declare(queue=self.queue, durable=True)
        channel.basic_qos(prefetch_count=self.prefetch)
        tag = channel.basic_consume(self.queue, self.handle, auto_ack=False)
        log.info("%s consuming %s (prefetch %d)", self.pod_name, self.queue, self.prefetch)
        while not self.stopping:
            connection.process_data_events(time_limit=0.5)
        # Cancelling a manual-ack consumer nacks (requeues) what pika received but never
        # dispatched; closing requeues anything else still unacknowledged.
        channel.basic_cancel(tag)
        channel.close()
        connection.close()
        log.info("%s stopped cleanly", self.pod_name)
        return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    worker = Worker()
    signal.signal(signal.SIGTERM, worker.ask_to_stop)
    signal.signal(signal.SIGINT, worker.ask_to_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
