"""A loopback TCP relay that counts the HTTP requests passing through it.

Benchmarks put it in front of the RabbitMQ management port and point the operator's
Secret at it, so "broker requests per tick" is counted at the wire, not trusted from
the operator's own bookkeeping. It also counts the TCP connections it accepted and how
many are open, so in front of the AMQP port (where no request line matches) it counts
AMQP connections opened.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
from dataclasses import dataclass, field

_REQUEST_LINE = re.compile(
    rb"(?:^|\r\n\r\n)(GET|POST|PUT|DELETE|HEAD|PATCH) (/\S*) HTTP/1\.[01]\r\n"
)


@dataclass
class RequestCounter:
    """Counts request lines by path prefix; a background thread runs the relay."""

    upstream_port: int
    listen_port: int = 0
    requests: dict[str, int] = field(default_factory=dict)
    connections: int = 0
    """TCP connections accepted so far."""
    open_connections: int = 0
    """Of those, still open at both ends."""
    _loop: asyncio.AbstractEventLoop | None = None
    _server: asyncio.AbstractServer | None = None
    _ready: threading.Event = field(default_factory=threading.Event)

    def total(self) -> int:
        return sum(self.requests.values())

    def start(self) -> RequestCounter:
        threading.Thread(target=self._run, daemon=True, name="request-counter").start()
        if not self._ready.wait(10):
            raise RuntimeError("the request counter did not start")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            self._loop.call_soon_threadsafe(self._server.close)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.listen_port)
        self.listen_port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        async with self._server:
            with contextlib.suppress(asyncio.CancelledError):
                await self._server.serve_forever()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_r, upstream_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        self.open_connections += 1

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter, count: bool) -> None:
            tail = b""
            try:
                while chunk := await r.read(65536):
                    if count:
                        window = tail + chunk if tail else b"\r\n\r\n" + chunk
                        for match in _REQUEST_LINE.finditer(window):
                            path = match.group(2).decode(errors="replace").split("?")[0]
                            key = "/".join(path.split("/")[:3])
                            self.requests[key] = self.requests.get(key, 0) + 1
                        tail = window[-4:]
                    w.write(chunk)
                    await w.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                w.close()

        try:
            await asyncio.gather(pipe(client_r, upstream_w, True),
                                 pipe(upstream_r, client_w, False))
        finally:
            self.open_connections -= 1
