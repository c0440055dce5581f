"""A loopback HTTP proxy in front of RabbitMQ's management API that misbehaves on demand.

The operator is pointed at the proxy (the Secret's managementUrl names it), and a test flips
the proxy's mode while a scaling run goes on:

    with FaultProxy("127.0.0.1", management_port) as proxy:
        proxy.mode = Mode.SLOW       # every answer held for `delay` seconds (past the timeout)
        proxy.mode = Mode.ERROR      # HTTP 500, whose body echoes the caller's credentials
        proxy.mode = Mode.GARBAGE    # HTTP 200 with a body that is not JSON
        proxy.mode = Mode.NO_STATS   # forwarded, queues' message counts left out
        proxy.mode = Mode.PASS       # forwarded as is
        proxy.only = "/api/consumers"  # the mode applies to these paths; others pass

Only loopback: it listens on 127.0.0.1 and refuses to forward anywhere but 127.0.0.1. A held
request waits on an event, so switching back to PASS (or closing) releases it at once; every
wait is bounded by `delay`.
"""

from __future__ import annotations

import base64
import enum
import http.client
import json
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
QUEUE_COUNTS = ("messages", "messages_ready", "messages_unacknowledged", "consumers")
"""What RabbitMQ leaves out of a queue's entry until its first statistics are emitted."""


class Mode(enum.StrEnum):
    PASS = "pass"
    SLOW = "slow"
    ERROR = "error"
    GARBAGE = "garbage"
    NO_STATS = "no-stats"


@dataclass(frozen=True, slots=True)
class Answered:
    """One request the proxy answered: when, what, in which mode, with which status."""

    arrived: float
    """time.time() when the request came in."""
    answered: float
    """time.time() when the answer was sent (or the client had gone)."""
    path: str
    mode: Mode
    """The mode when the request came in (a SLOW one is forwarded once held: see `answered`)."""
    status: int
    """The HTTP status sent (502: the broker did not answer)."""


class FaultProxy:
    """Forwards GETs to the management API, or fails them the way `mode` says."""

    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 8.0) -> None:
        if upstream_host not in LOOPBACK:
            raise ValueError(f"the fault proxy forwards to loopback only, not {upstream_host!r}")
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        """How long SLOW holds an answer: longer than the operator's 5 s broker timeout."""
        self._mode = Mode.PASS
        self.only: str | None = None
        """When set, only requests whose path starts with it get the mode; the rest pass."""
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.requests: Counter[Mode] = Counter()
        """Requests answered per mode."""
        self.journal: deque[Answered] = deque(maxlen=200_000)
        """Every request answered, oldest first (the latest 200,000)."""
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="faultproxy", daemon=True
        )

    @property
    def port(self) -> int:
        port: int = self._server.server_address[1]
        return port

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    @mode.setter
    def mode(self, mode: Mode) -> None:
        with self._lock:
            self._mode = mode
            if mode is Mode.SLOW:
                self._released.clear()
            else:
                self._released.set()  # held requests go on at once

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self) -> None:
        self._released.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def count(self, mode: Mode) -> int:
        with self._lock:
            return self.requests[mode]

    # -- serving ----------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass  # quiet: the tests report what matters

            def do_GET(self) -> None:
                proxy._serve(self)

        return Handler

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        arrived = time.time()
        mode = self.mode
        if self.only is not None and not request.path.startswith(self.only):
            mode = Mode.PASS
        if mode is Mode.SLOW:
            self._released.wait(self.delay)  # bounded; released early when the fault ends
        with self._lock:
            self.requests[mode] += 1
        if mode is Mode.ERROR:
            status = 500
            self._answer(request, 500, "application/json", self._echoing_error(request))
        elif mode is Mode.GARBAGE:
            status = 200
            self._answer(request, 200, "application/json", b"<html>not json at all</html>")
        else:
            queues = request.path.startswith("/api/queues")
            status = self._forward(request, without_counts=mode is Mode.NO_STATS and queues)
        self.journal.append(Answered(arrived, time.time(), request.path, mode, status))

    @staticmethod
    def _echoing_error(request: BaseHTTPRequestHandler) -> bytes:
        """A 500 whose body quotes the caller's credentials, as careless servers do."""
        credentials = ""
        auth = request.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            try:
                credentials = base64.b64decode(auth[6:]).decode(errors="replace")
            except ValueError:
                credentials = auth
        return json.dumps(
            {"error": "Internal Server Error", "reason": f"crashed serving {credentials}"}
        ).encode()

    def _forward(self, request: BaseHTTPRequestHandler, *, without_counts: bool = False) -> int:
        """Forward as is, or with every queue's counts left out (a body to edit: no gzip).
        Returns the status sent."""
        dropped = HOP_BY_HOP | ({"accept-encoding"} if without_counts else set())
        upstream = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            headers = {k: v for k, v in request.headers.items() if k.lower() not in dropped}
            upstream.request("GET", request.path, headers=headers)
            response = upstream.getresponse()
            body = response.read()
            if without_counts and response.status == 200:
                body = _without_counts(body)
            passed = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_BY_HOP]
            self._answer(request, response.status, "", body, passed)
            return int(response.status)
        except OSError as error:
            self._answer(request, 502, "text/plain", f"upstream failed: {error}".encode())
            return 502
        finally:
            upstream.close()

    @staticmethod
    def _answer(
        request: BaseHTTPRequestHandler, status: int, content_type: str, body: bytes,
        headers: list[tuple[str, str]] | None = None,
    ) -> None:
        """Send `body`; forwarded answers keep their headers (Content-Encoding: gzip...)."""
        try:
            request.send_response(status)
            for name, value in headers or [("Content-Type", content_type)]:
                request.send_header(name, value)
            request.send_header("Content-Length", str(len(body)))
            request.end_headers()
            request.wfile.write(body)
        except OSError:
            pass  # the client gave up (its timeout): nothing to answer


def _without_counts(body: bytes) -> bytes:
    """A queue listing as RabbitMQ answers it for queues too new to have statistics."""
    listing = json.loads(body)
    entries = listing.get("items", []) if isinstance(listing, dict) else listing
    for entry in entries:
        if isinstance(entry, dict):
            for key in QUEUE_COUNTS:
                entry.pop(key, None)
    return json.dumps(listing).encode()
