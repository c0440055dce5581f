"""Putting identified work on a queue, and reading back what the workers did with it.

Every message carries an id; the workers append `<id> <pod>` to a processed log once the work is
done (before the ack). A test publishes, lets the workers run, then checks that every id shows up
at least once (nothing lost) and counts the ones that show up more (redeliveries).
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pika
from celery import Celery

IS_PRIME_TASK = "is_prime"
"""The task name celery_app.py registers."""


def publish_messages(amqp_url: str, queue: str, count: int, *, prefix: str = "") -> list[str]:
    """Publish `count` persistent messages to a durable `queue`, each confirmed by the broker.

    Each message's id is in its message_id property, its `message-id` header and its body.
    Returns the ids, in publishing order.
    """
    prefix = prefix or f"m-{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}-{i:06d}" for i in range(count)]
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, durable=True)
        channel.confirm_delivery()  # basic_publish now raises unless the broker confirms
        for message_id in ids:
            properties = pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                message_id=message_id,
                headers={"message-id": message_id},
            )
            channel.basic_publish("", queue, message_id.encode(), properties, mandatory=True)
    finally:
        connection.close()
    return ids


def publish_is_prime_tasks(amqp_url: str, queue: str, numbers: Iterable[int]) -> list[str]:
    """Send one `is_prime(n)` task per number to `queue`, with publisher confirms.

    Returns the task ids (what the Celery worker writes to its processed log), in order.
    """
    app = Celery("queuescaler-e2e-publisher", broker=amqp_url)
    app.conf.update(
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
    )
    ids: list[str] = []
    try:
        with app.producer_or_acquire() as producer:
            for n in numbers:
                task_id = f"t-{uuid.uuid4().hex}"
                app.send_task(
                    IS_PRIME_TASK, args=(n,), task_id=task_id, queue=queue, producer=producer
                )
                ids.append(task_id)
    finally:
        app.close()
    return ids


def delete_queue(amqp_url: str, queue: str) -> None:
    """Remove a test's queue (and what is left on it)."""
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        connection.channel().queue_delete(queue=queue)
    finally:
        connection.close()


def read_records(path: Path) -> list[tuple[str, str]]:
    """The log's `(id, pod)` pairs, in order; an absent log is empty."""
    if not path.exists():
        return []
    pairs: list[tuple[str, str]] = []
    for line in path.read_text().splitlines():
        message_id, _, pod = line.partition(" ")
        if message_id and pod:
            pairs.append((message_id, pod))
    return pairs


class FirstSeen:
    """When each `(id, pod)` record of an append-only log first appeared (polled in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.at: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            now = time.time()
            for record in read_records(self.path):
                self.at.setdefault(record, now)

    def __enter__(self) -> FirstSeen:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def read_processed(path: Path) -> dict[str, int]:
    """Id -> how many times it was processed (more than once: redelivered after a stop)."""
    return dict(Counter(message_id for message_id, _ in read_records(path)))


def missing(ids: Iterable[str], path: Path) -> list[str]:
    """The ids not processed yet."""
    done = read_processed(path)
    return [message_id for message_id in ids if message_id not in done]
