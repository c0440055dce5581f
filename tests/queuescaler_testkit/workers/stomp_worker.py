"""A real STOMP consumer for end-to-end tests on ActiveMQ Classic and Artemis: acks each
message after its work (client-individual), stops gracefully on SIGTERM.

Environment:
  STOMP_URL            stomp://host:port of the broker's STOMP listener
  STOMP_USER, STOMP_PASSWORD   the login (both or neither)
  QUEUE                the queue to consume (`/queue/<name>` on both brokers)
  POD_NAME             the CONNECT frame's client-id, so the broker's consumers map to pods
  PREFETCH             messages it may hold unacknowledged (default 1): see below
  CONSUMER_WINDOW_SIZE Artemis' window in bytes (optional): see below
  WORK_SECONDS         the "work": a sleep per message (default 0.05); a message's own
                       `work-seconds` header, when it has one, says how long it takes instead
  PROCESSED_LOG        one line `<message id> <pod name>` per message done, written before its ack
  STARTED_LOG          optional: the same line per message started (what a stopped worker held)

A message's id is its body (the sender's own id: the brokers' message-id headers differ in
form, and Classic's `ack` header is not its message-id), else its `message-id` header.

Prefetch, as each broker counts it (measured on the test brokers):
- Classic counts messages: `activemq.prefetchSize: PREFETCH` holds at most PREFETCH.
- Artemis counts bytes: `consumer-window-size` (which wins over `activemq.prefetchSize`, read as
  bytes too). A window of W bytes holds ceil(W / S) messages of S bytes as Artemis sizes them
  (about 180 to 240 for a short STOMP message: 200 held 1, 300 and 400 held 2, 600 held 3,
  900 held 5);
  0 holds exactly one, the next sent once it is acked; -1 (or no header) holds everything. So
  PREFETCH 1 sends window 0 (one message on either broker); for more on Artemis set
  CONSUMER_WINDOW_SIZE yourself (unset, PREFETCH is read by Artemis as that many bytes: one
  message at a time).

Acks use the MESSAGE frame's `ack` header (STOMP 1.2): Classic's differs from its message-id,
and an ACK naming the message-id is refused. On SIGTERM (or SIGINT) it takes no new message,
finishes and acks the one in hand, and disconnects (with a receipt: the ACK is processed
first); the messages it holds but has not started go back to the queue when the connection
closes. A connection lost to the broker ends it with exit code 1 (no reconnect: a crash is a
finding, the pod runner records it).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import FrameType
from typing import Any

import stomp  # type: ignore[import-untyped]

from queuescaler_testkit.workers.pika_worker import append_record

WORKER = Path(__file__)
WORK_HEADER = "work-seconds"
"""A message's own work time (both brokers pass custom STOMP headers through)."""
CONNECT_SECONDS = 15.0
POLL_SECONDS = 0.2
"""How long the main loop waits for a message before it looks at the stop flag again."""

log = logging.getLogger("stomp-worker")


def stomp_worker_command(pod_name: str) -> list[str]:
    """The command the pod runner starts for each pod (the pod name comes as POD_NAME)."""
    return [sys.executable, str(WORKER)]


def stomp_worker_env(
    stomp_url: str,
    queue_name: str,
    processed_log: Path,
    *,
    user: str | None = None,
    password: str | None = None,
    started_log: Path | None = None,
    prefetch: int = 1,
    consumer_window_size: int | None = None,
    work_seconds: float = 0.05,
) -> dict[str, str]:
    """The environment the consumer reads."""
    env = {
        "STOMP_URL": stomp_url,
        "QUEUE": queue_name,
        "PROCESSED_LOG": str(processed_log),
        "PREFETCH": str(prefetch),
        "WORK_SECONDS": str(work_seconds),
    }
    if user is not None:
        env["STOMP_USER"] = user
        env["STOMP_PASSWORD"] = password or ""
    if started_log is not None:
        env["STARTED_LOG"] = str(started_log)
    if consumer_window_size is not None:
        env["CONSUMER_WINDOW_SIZE"] = str(consumer_window_size)
    return env


def subscribe_headers(prefetch: int, consumer_window_size: int | None) -> dict[str, str]:
    """SUBSCRIBE headers that hold `prefetch` messages on Classic and the window on Artemis
    (0, one message, when none is given and prefetch is 1)."""
    if prefetch < 1:
        raise ValueError("PREFETCH must be at least 1")
    headers = {"activemq.prefetchSize": str(prefetch)}
    if consumer_window_size is None and prefetch == 1:
        consumer_window_size = 0
    if consumer_window_size is not None:
        headers["consumer-window-size"] = str(consumer_window_size)
    return headers


def message_id_of(frame: Any) -> str:
    """The body (the sender's id), else the broker's message-id."""
    body = frame.body
    if isinstance(body, bytes):
        body = body.decode(errors="replace")
    text = str(body or "").strip()
    return text or str(frame.headers.get("message-id", ""))


class _Inbox(stomp.ConnectionListener):  # type: ignore[misc]
    """Hands the reader thread's frames to the main loop."""

    def __init__(self) -> None:
        self.frames: queue.Queue[Any] = queue.Queue()
        self.lost = threading.Event()
        self.errors: list[str] = []

    def on_message(self, frame: Any) -> None:
        self.frames.put(frame)

    def on_error(self, frame: Any) -> None:
        text = f"{frame.headers.get('message', '')} {frame.body}".strip()
        self.errors.append(text)
        log.error("the broker sent ERROR: %s", text)

    def on_disconnected(self) -> None:
        self.lost.set()


class Worker:
    """Consumes one queue; `stopping` is raised by the signal handler."""

    def __init__(self) -> None:
        url = urllib.parse.urlsplit(os.environ["STOMP_URL"])
        if url.scheme != "stomp" or not url.hostname or not url.port:
            raise SystemExit(f"STOMP_URL must be stomp://host:port, not {url.geturl()!r}")
        self.address = (url.hostname, url.port)
        self.user = os.environ.get("STOMP_USER")
        self.password = os.environ.get("STOMP_PASSWORD")
        self.pod_name = os.environ.get("POD_NAME", "stomp-worker")
        self.queue = os.environ["QUEUE"]
        self.prefetch = int(os.environ.get("PREFETCH", "1"))
        window = os.environ.get("CONSUMER_WINDOW_SIZE")
        self.window = int(window) if window else None
        self.work_seconds = float(os.environ.get("WORK_SECONDS", "0.05"))
        self.processed_log = os.environ["PROCESSED_LOG"]
        self.started_log = os.environ.get("STARTED_LOG")
        self.stopping = False

    def ask_to_stop(self, signum: int, frame: FrameType | None) -> None:
        # Only a flag: a sleep in progress resumes (PEP 475), so the message in hand completes.
        log.info("signal %d: finishing the message in hand, then stopping", signum)
        self.stopping = True

    def handle(self, connection: Any, frame: Any) -> None:
        message_id = message_id_of(frame)
        if self.started_log:
            append_record(self.started_log, message_id, self.pod_name)
        time.sleep(float(frame.headers.get(WORK_HEADER, self.work_seconds)))
        append_record(self.processed_log, message_id, self.pod_name)
        # STOMP 1.2: the ACK names the frame's `ack` header (no transaction).
        connection.ack(frame.headers.get("ack") or frame.headers["message-id"])

    def run(self) -> int:
        connection = stomp.Connection12([self.address], timeout=CONNECT_SECONDS,
                                        reconnect_attempts_max=1)
        inbox = _Inbox()
        connection.set_listener("inbox", inbox)
        connection.connect(self.user, self.password, wait=True,
                           headers={"client-id": self.pod_name})
        headers = subscribe_headers(self.prefetch, self.window)
        connection.subscribe(f"/queue/{self.queue}", f"{self.pod_name}-1",
                             ack="client-individual", headers=headers)
        log.info("%s consuming %s (%s)", self.pod_name, self.queue, headers)
        while not self.stopping:
            try:
                frame = inbox.frames.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if inbox.lost.is_set():
                    log.error("%s lost its connection to the broker", self.pod_name)
                    return 1
                continue
            if self.stopping:
                break  # taken after the stop request: left unacked, back to the queue
            self.handle(connection, frame)
        held = inbox.frames.qsize()
        # DISCONNECT with a receipt: the broker has processed every ACK before it answers;
        # closing hands back what was delivered and never acked.
        connection.disconnect(receipt=f"bye-{uuid.uuid4().hex[:8]}")
        log.info("%s stopped cleanly (%d unstarted messages handed back)", self.pod_name, held)
        return 0


def main() -> int:
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(message)s"
    )
    logging.getLogger("stomp.py").setLevel(logging.WARNING)
    worker = Worker()
    signal.signal(signal.SIGTERM, worker.ask_to_stop)
    signal.signal(signal.SIGINT, worker.ask_to_stop)
    return worker.run()


if __name__ == "__main__":
    sys.exit(main())
