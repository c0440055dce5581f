"""A pika consumer that keeps a journal: every delivery it finished, and what it held when told
to stop. For soaks, where the question is not only "was every message processed" but "was a
worker stopped while it held messages".

Environment:
  AMQP_URL       the broker (vhost included)
  QUEUE          the queue to consume (declared durable)
  POD_NAME       the AMQP connection name, so consumers map to pods
  PREFETCH       basic.qos prefetch count (default 4)
  WORK_SECONDS   the "work": a sleep per message (default 0.25)
  JOURNAL        the journal file, shared by every worker (one line per record, appended in
                 one write each, so lines never interleave)
  MAX_RECONNECTS how many times a lost connection is opened again, a second apart (default 180)

Manual acks, prefetch > 1 allowed. A lost connection (a broker restart) is opened again, as a
kubelet would restart the container; messages held then are redelivered by the broker. On
SIGTERM it finishes and acks the message in hand, cancels its consumer (pika requeues the
deliveries it received but had not started), closes and exits 0.

Journal lines (space-separated; times are time.time()):
  done <id> <pod> <redelivered 0|1> <started> <acked>
      written after the work and before the ack; `acked` is when the ack was sent
  sigterm <pod> <at> <in_hand 0|1> <waiting> <last_delivery_at|->
      the state when the signal arrived: a message in hand, and deliveries received but not
      started; the time the last delivery began
  exit <pod> <at> <requeued>
      deliveries handed back when the consumer was cancelled
  connection <pod> <at> <opened|lost> [detail]
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
import pika.exceptions

from queuescaler_testkit.workers.pika_worker import message_id_of

log = logging.getLogger("tracking-worker")


def journal(path: str | Path, *fields: object) -> None:
    """Append one line durably (one write in append mode: lines of writers never mix)."""
    line = " ".join(str(f).replace(" ", "_").replace("\n", "_") for f in fields) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


class TrackingWorker:
    def __init__(self) -> None:
        self.pod = os.environ.get("POD_NAME", "tracking-worker")
        self.queue = os.environ["QUEUE"]
        self.prefetch = int(os.environ.get("PREFETCH", "4"))
        self.work_seconds = float(os.environ.get("WORK_SECONDS", "0.25"))
        self.path = os.environ["JOURNAL"]
        self.max_reconnects = int(os.environ.get("MAX_RECONNECTS", "180"))
        self.stopping = False
        self.in_hand: str | None = None
        self.last_delivery_at: float | None = None
        self.channel: Any = None
        self.signalled: tuple[float, int, int, float | None] | None = None

    def ask_to_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only state: a sleep in progress resumes (PEP 475), so the message in hand completes.
        if self.signalled is None:
            waiting = 0
            if self.channel is not None:
                try:
                    waiting = int(self.channel.get_waiting_message_count())
                except Exception:  # not consuming right now (reconnecting)
                    waiting = 0
            self.signalled = (time.time(), int(self.in_hand is not None), waiting,
                              self.last_delivery_at)
            # Written now, not at exit: a worker SIGKILLed later still says what it held.
            at, in_hand, waiting, last = self.signalled
            journal(self.path, "sigterm", self.pod, f"{at:.3f}", in_hand, waiting,
                    "-" if last is None else f"{last:.3f}")
        self.stopping = True

    def consume_once(self) -> int:
        """One connection's life; returns how many deliveries were handed back at the end."""
        parameters = pika.URLParameters(os.environ["AMQP_URL"])
        parameters.client_properties = {"connection_name": self.pod}
        parameters.heartbeat = 10
        connection = pika.BlockingConnection(parameters)
        try:
            channel = connection.channel()
            channel.queue_declare(queue=self.queue, durable=True)
            channel.basic_qos(prefetch_count=self.prefetch)
            self.channel = channel
            journal(self.path, "connection", self.pod, f"{time.time():.3f}", "opened")
            for method, properties, body in channel.consume(
                self.queue, auto_ack=False, inactivity_timeout=0.5
            ):
                if self.stopping:
                    if method is not None:  # delivered after the stop request: back, untouched
                        channel.basic_reject(delivery_tag=method.delivery_tag, requeue=True)
                    break
                if method is None:
                    continue
                message_id = message_id_of(properties, body)
                started = self.last_delivery_at = time.time()
                self.in_hand = message_id
                time.sleep(self.work_seconds)
                acked = time.time()
                journal(self.path, "done", message_id, self.pod, int(bool(method.redelivered)),
                        f"{started:.3f}", f"{acked:.3f}")
                channel.basic_ack(delivery_tag=method.delivery_tag)
                self.in_hand = None
                if self.stopping:
                    break
            # cancel() rejects (requeues) what was received but not started (it returns 0
            # whatever it requeued, so count them first).
            requeued = int(channel.get_waiting_message_count())
            channel.cancel()
            self.channel = None
            channel.close()
            return requeued
        finally:
            self.channel = None
            if connection.is_open:
                connection.close()

    def run(self) -> int:
        for attempt in range(self.max_reconnects + 1):
            if self.stopping:  # told to stop while reconnecting
                journal(self.path, "exit", self.pod, f"{time.time():.3f}", 0)
                return 0
            try:
                requeued = self.consume_once()
                journal(self.path, "exit", self.pod, f"{time.time():.3f}", requeued)
                return 0
            except (pika.exceptions.AMQPError, OSError) as error:
                self.in_hand = None
                journal(self.path, "connection", self.pod, f"{time.time():.3f}", "lost",
                        type(error).__name__)
                if self.stopping:
                    continue
                log.info("connection lost (%r): reconnecting, attempt %d", error, attempt + 1)
                time.sleep(1.0)
        return 1


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("pika").setLevel(logging.WARNING)
    worker = TrackingWorker()
    signal.signal(signal.SIGTERM, worker.ask_to_stop)
    signal.signal(signal.SIGINT, worker.ask_to_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
