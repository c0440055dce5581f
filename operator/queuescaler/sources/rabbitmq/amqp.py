"""The AMQP fast path: a passive declare answers in milliseconds with the queue's live count.

The management API lags a burst by up to one statistics interval (DESIGN.md measured
1.9 to 6.2 s); waking a pool from zero in under 2 s needs this path. It knows ready
messages and consumers only: unacknowledged messages are invisible to a passive declare,
so samples from here carry unacked=0 and no rates.

pika's BlockingConnection is synchronous and not thread-safe: calls run in a worker thread
(`asyncio.to_thread`), one at a time per peeker, over one connection and channel per vhost
kept open between calls. A call's declares are pipelined on the channel (all sent, then
all answers read: `_pipeline`), not one round trip each.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import pika
import pika.exceptions
import pika.frame
import pika.spec
from pika.adapters.utils.connection_workflow import AMQPConnectorStackTimeout

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SampleResult, SourceError
from queuescaler.sources.rabbitmq.listing import queue_not_found, vhost_not_found

PER_QUEUE_BUDGET = 0.05
"""Seconds a call may spend per queue on top of `timeout` (a declare takes 1 to 3 ms)."""
NOT_FOUND = 404
CONNECTION_NAME = "queuescaler"
"""Shown by the broker for our connections, so nobody takes them for a worker."""


def _error(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))


class _VhostMissing(Exception):
    """The broker refused the vhost at connection time: its queues fail, the call goes on."""


def _timed_out(error: BaseException) -> bool:
    """Whether a timeout sits anywhere in pika's nest of wrapped connection errors."""
    if isinstance(error, TimeoutError | socket.timeout | AMQPConnectorStackTimeout):
        return True
    inner = getattr(error, "exception", None)
    nested = [*error.args, *([inner] if isinstance(inner, BaseException) else [])]
    return any(isinstance(arg, BaseException) and _timed_out(arg) for arg in nested)


@functools.lru_cache(maxsize=65_536)
def _declare_frame(channel: int, queue: str) -> bytes:
    """A passive declare of `queue` on `channel`, marshaled (the same bytes every tick)."""
    frame: bytes = pika.frame.Method(
        channel, pika.spec.Queue.Declare(queue=queue, passive=True)
    ).marshal()
    return frame


def _nothing() -> None:
    """A callback that only wakes the connection's event loop."""


@dataclass
class _Link:
    """One vhost's open connection and channel (mutable: the channel is reopened after a 404)."""

    connection: Any
    channel: Any


class AmqpPeeker:
    """Ready and consumer counts by passive declare, one connection per vhost."""

    def __init__(self, url: str, *, timeout: float, tls: Callable[[], ssl.SSLContext]) -> None:
        self._url = url
        self._timeout = timeout
        self._tls = tls
        self._links: dict[str, _Link] = {}
        self._turn = asyncio.Lock()
        """Callers queue here, so at most one worker thread waits per peeker."""
        self._thread_lock = threading.Lock()
        """Held by the thread using pika; outlives a caller that gave up waiting for it."""

    def __repr__(self) -> str:
        return f"AmqpPeeker({redact(self._url)!r})"

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        """Live counts for every queue; SourceError when the broker fails as a whole."""
        refs = list(queues)
        if not refs:
            return {}
        budget = self._timeout + PER_QUEUE_BUDGET * len(refs)
        async with self._turn:
            try:
                return await asyncio.wait_for(asyncio.to_thread(self._peek, refs), budget)
            except TimeoutError:
                raise _error(
                    ErrorKind.TIMEOUT,
                    f"AMQP broker: no answer for {len(refs)} queues within {budget:.1f}s",
                ) from None

    async def close(self) -> None:
        async with self._turn:
            await asyncio.to_thread(self._close_all)

    # Below: worker thread only.

    def _peek(self, refs: list[QueueRef]) -> SampleResult:
        if not self._thread_lock.acquire(timeout=self._timeout):
            raise _error(ErrorKind.TIMEOUT, "AMQP broker: an earlier call is still waiting for it")
        try:
            by_vhost: dict[str, list[QueueRef]] = {}
            for ref in dict.fromkeys(refs):
                by_vhost.setdefault(ref.scope, []).append(ref)
            result: dict[QueueRef, QueueSample | SourceError] = {}
            for vhost, mine in by_vhost.items():
                try:
                    result.update(self._declare_all(vhost, mine))
                except _VhostMissing:
                    result.update((ref, vhost_not_found(vhost)) for ref in mine)
            return result
        finally:
            self._thread_lock.release()

    def _declare_all(
        self, vhost: str, refs: list[QueueRef]
    ) -> dict[QueueRef, QueueSample | SourceError]:
        """Passive declares of one vhost's queues, pipelined on its channel (`_pipeline`).

        A missing queue makes the broker close the channel, and it ignores what was sent
        after: that queue is reported, and the declares after it are sent again on a new
        channel. A lost connection is reopened and the unanswered declares sent again; lost
        again before any answer came, the broker is unreachable.
        """
        found: dict[QueueRef, QueueSample | SourceError] = {
            ref: queue_not_found(ref)  # a passive declare of "" would name another queue
            for ref in refs if not ref.name
        }
        pending = [ref for ref in refs if ref.name]
        retried = False
        while pending:
            answers: dict[str, Any] = {}
            refused: Any = None
            try:
                link = self._link(vhost)
                refused = self._pipeline(link, [ref.name for ref in pending], answers)
            except SourceError:
                # Timed out (or could not connect): its late answers must not meet the next
                # call, and a close would wait for a broker that does not answer; its
                # heartbeat ends the connection on its side.
                self._links.pop(vhost, None)
                raise
            except (pika.exceptions.AMQPError, OSError) as lost:
                self._drop(vhost)
                if retried and not answers:
                    raise _error(
                        ErrorKind.UNREACHABLE, f"AMQP broker: connection lost: {lost!r}"
                    ) from None
                retried = True
            taken_at = time.time()
            samples: dict[tuple[int, int], QueueSample] = {}  # idle queues answer alike
            unanswered = []
            for ref in pending:
                ok = answers.get(ref.name)
                if ok is None:
                    unanswered.append(ref)
                    continue
                counts = (int(ok.message_count), int(ok.consumer_count))
                sample = samples.get(counts)
                if sample is None:
                    sample = samples[counts] = QueueSample(
                        ready=counts[0],
                        unacked=0,  # unknown on this path: a passive declare does not report it
                        complete=False,
                        consumers=counts[1],
                        taken_at=taken_at,
                    )
                found[ref] = sample
            pending = unanswered
            if refused is not None and pending:
                link.channel = None
                ref = pending.pop(0)  # answers come in order: the first unanswered was refused
                if refused.reply_code == NOT_FOUND:
                    found[ref] = queue_not_found(ref)
                else:
                    where = f"queue {ref.name!r} in vhost {ref.scope!r}"
                    found[ref] = _error(ErrorKind.BAD_RESPONSE, f"{where}: {refused.reply_text}")
        return found

    def _pipeline(self, link: _Link, names: list[str], answers: dict[str, Any]) -> Any:
        """Send a passive declare of every queue in `names` at once on the link's channel,
        then read the answers into `answers` (Queue.DeclareOk by queue name) until all came
        or the broker closed the channel (its Channel.Close is returned; None otherwise).

        pika's BlockingChannel.queue_declare waits for each answer before it sends the next
        declare: a round trip, a send and a poll per queue, most of the fast path's CPU
        here and in the broker (bench/fast_path_cost.py). AMQP lets a client pipeline them,
        and the broker answers a channel's methods in order, so this goes one level down,
        to the asynchronous connection the blocking one drives (`_impl`): it writes the
        method frames itself, in one buffer, and watches the channel's DeclareOk and Close
        frames through the connection's callback registry, beside the channel's own
        handlers. `_impl`, `_output_marshaled_frames` and `callbacks` are pika 1.x
        internals (pinned `<2`; tests/unit/test_amqp_pipeline.py checks they are there).
        """
        connection, channel = link.connection, link.channel
        impl, number = connection._impl, channel.channel_number
        closed: list[Any] = []

        def answered(frame: Any) -> None:
            answers[frame.method.queue] = frame.method
            if len(answers) == len(names):
                connection.add_callback_threadsafe(_nothing)  # ends process_data_events

        def refused(frame: Any) -> None:
            closed.append(frame.method)

        impl.callbacks.add(number, pika.spec.Queue.DeclareOk, answered, one_shot=False)
        impl.callbacks.add(number, pika.spec.Channel.Close, refused, one_shot=False)
        try:
            # One buffer for them all: pika would send each frame with a call of its own.
            impl._output_marshaled_frames([b"".join(_declare_frame(number, n) for n in names)])
            deadline = time.monotonic() + self._timeout + PER_QUEUE_BUDGET * len(names)
            while len(answers) < len(names) and not closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise _error(
                        ErrorKind.TIMEOUT,
                        f"AMQP broker: {len(names) - len(answers)} of {len(names)} passive "
                        "declares unanswered",
                    )
                connection.process_data_events(time_limit=left)
        finally:
            impl.callbacks.remove(number, pika.spec.Queue.DeclareOk, answered)
            impl.callbacks.remove(number, pika.spec.Channel.Close, refused)
        return closed[0] if closed else None

    def _parameters(self, vhost: str) -> Any:
        try:
            parameters = pika.URLParameters(self._url)
        except Exception:  # pika evaluates some query options as Python literals: anything goes
            raise _error(ErrorKind.BAD_CONFIG, "amqpUrl: pika cannot read its options") from None
        parameters.virtual_host = vhost
        parameters.connection_attempts = 1
        parameters.socket_timeout = self._timeout
        parameters.stack_timeout = self._timeout
        parameters.blocked_connection_timeout = self._timeout
        parameters.client_properties = {"connection_name": CONNECTION_NAME}
        if self._url.lower().startswith("amqps:"):
            parameters.ssl_options = pika.SSLOptions(self._tls(), server_hostname=parameters.host)
        return parameters

    def _link(self, vhost: str) -> _Link:
        link = self._links.get(vhost)
        if link is not None and link.connection.is_open:
            if link.channel is None or not link.channel.is_open:
                link.channel = link.connection.channel()
            return link
        self._drop(vhost)
        connection = self._connect(vhost)
        link = _Link(connection=connection, channel=connection.channel())
        self._links[vhost] = link
        return link

    def _connect(self, vhost: str) -> Any:
        parameters = self._parameters(vhost)
        where = f"AMQP broker at {parameters.host}:{parameters.port}"
        try:
            return pika.BlockingConnection(parameters)
        except pika.exceptions.ProbableAuthenticationError as error:
            raise _error(ErrorKind.AUTH, f"{where} refused the credentials: {error}") from None
        except pika.exceptions.ProbableAccessDeniedError:
            raise _VhostMissing(vhost) from None
        except (pika.exceptions.AMQPError, AMQPConnectorStackTimeout, OSError) as error:
            kind = ErrorKind.TIMEOUT if _timed_out(error) else ErrorKind.UNREACHABLE
            raise _error(kind, f"{where}: {error!r}") from None

    def _drop(self, vhost: str) -> None:
        link = self._links.pop(vhost, None)
        if link is not None and link.connection.is_open:
            with contextlib.suppress(pika.exceptions.AMQPError, OSError):  # already gone
                link.connection.close()

    def _close_all(self) -> None:
        if not self._thread_lock.acquire(timeout=self._timeout):
            return  # a stuck call still holds the links; the broker's heartbeat ends them
        try:
            for vhost in list(self._links):
                self._drop(vhost)
        finally:
            self._thread_lock.release()
