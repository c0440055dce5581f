"""Redis streams read by a consumer group, for workers that are not Celery's. Pure.

What Redis 7 gives (read from its XINFO documentation, checked on Debian's 7.0):
- `XINFO GROUPS <stream>`: per group its `lag` (entries not yet delivered to the group: the
  backlog waiting), `pending` (delivered and not acknowledged: in flight), `consumers`, and
  `entries-read` (entries the group has read, a counter). `lag` is null when Redis cannot
  tell it (entries deleted inside the group's unread range, or a group created at an
  arbitrary ID): ready is then the stream's `length` (XINFO STREAM), an upper bound, and the
  sample incomplete;
- `XINFO STREAM <stream>`: `entries-added`, every entry ever added (a counter);
- `XINFO CONSUMERS <stream> <group>`: per consumer its name and `pending` count: the busy
  consumers, named as the workers named themselves (the pod's name, by convention).

So ready = lag, unacked = pending, published_total = entries-added and acked_total =
entries-read - pending (read and no longer pending: acknowledged), which core.throughput
differences into rates as it does RabbitMQ's counters.

A stream QueueRef's scope names the stream and the group as JSON (an object, which no kombu
layout scope is), so that the busy-consumer listing, handed scopes only, knows both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError


@dataclass(frozen=True, slots=True)
class StreamGroup:
    """One consumer group of one stream (the stream's key, its global key prefix included)."""

    stream: str
    group: str

    @property
    def scope(self) -> str:
        return json.dumps({"stream": self.stream, "group": self.group})

    @property
    def ref(self) -> QueueRef:
        return QueueRef(self.scope, self.stream)

    @classmethod
    def from_scope(cls, scope: str) -> StreamGroup | None:
        """The stream group a scope names, or None when it names none (a kombu layout)."""
        if not scope.startswith("{"):
            return None
        try:
            value = json.loads(scope)
        except ValueError:
            return None
        if (
            not isinstance(value, dict)
            or set(value) != {"stream", "group"}
            or not all(isinstance(part, str) and part for part in value.values())
        ):
            return None
        return cls(stream=value["stream"], group=value["group"])


def _text(value: object) -> str | None:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else None


def _field(entry: Mapping[object, object], name: str) -> object:
    """A field of redis-py's parsed XINFO reply (keys are str; bytes on RESP3 replies)."""
    return entry.get(name, entry.get(name.encode()))


def missing(error: BaseException, where: StreamGroup) -> SourceError:
    """The server refused an XINFO: the stream or the group is not there, or it is no stream."""
    text = str(error)
    if "no such key" in text or "NOGROUP" in text:
        return SourceError(
            ErrorKind.QUEUE_NOT_FOUND,
            f"stream {where.stream!r} or its group {where.group!r} does not exist",
        )
    return SourceError(ErrorKind.BAD_RESPONSE, f"stream {where.stream!r}: {text}")


def stream_sample(
    where: StreamGroup, groups: object, stream: object, taken_at: float, *, full: bool
) -> QueueSample | SourceError:
    """The group's backlog from XINFO GROUPS and the stream's counter from XINFO STREAM (either
    may be the error the server answered instead)."""
    for reply in (groups, stream):
        if isinstance(reply, BaseException):
            return missing(reply, where)
    if not isinstance(groups, list) or not isinstance(stream, Mapping):
        return SourceError(ErrorKind.BAD_RESPONSE, f"stream {where.stream!r}: not XINFO's shape")
    info = next(
        (g for g in groups if isinstance(g, Mapping) and _text(_field(g, "name")) == where.group),
        None,
    )
    if info is None:
        return missing(Exception("NOGROUP"), where)
    lag, pending = _field(info, "lag"), _field(info, "pending")
    consumers, read = _field(info, "consumers"), _field(info, "entries-read")
    added = _field(stream, "entries-added")
    if not isinstance(pending, int) or not isinstance(consumers, int):
        return SourceError(ErrorKind.BAD_RESPONSE, f"stream {where.stream!r}: not XINFO's shape")
    note = None
    if not isinstance(lag, int):
        # Redis cannot tell it (entries deleted in the unread range, or a group created at an
        # arbitrary ID); the stream's length bounds the backlog from above: an incomplete
        # sample may still grow the pool, never shrink it.
        length = _field(stream, "length")
        if not isinstance(length, int):
            return SourceError(
                ErrorKind.BAD_RESPONSE, f"stream {where.stream!r}: not XINFO's shape")
        lag, full = length, False
        note = (
            f"backlog bounded by the stream's length: Redis cannot tell group {where.group!r}'s "
            "lag (entries deleted in its unread range, or the group was created at an "
            "arbitrary ID)"
        )
    return QueueSample(
        ready=lag,
        unacked=pending,
        consumers=consumers,
        taken_at=taken_at,
        complete=full,
        note=note,
        published_total=added if isinstance(added, int) else None,
        acked_total=read - pending if isinstance(read, int) and read >= pending else None,
    )


def consumer_clients(where: StreamGroup, consumers: object) -> list[BrokerClient]:
    """The group's consumers from XINFO CONSUMERS: each a client named as the worker named
    itself, holding its pending entries, consuming this stream."""
    if isinstance(consumers, BaseException):
        raise missing(consumers, where)
    if not isinstance(consumers, list):
        raise SourceError(ErrorKind.BAD_RESPONSE, f"stream {where.stream!r}: not XINFO's shape")
    found: list[BrokerClient] = []
    for consumer in consumers:
        if not isinstance(consumer, Mapping):
            raise SourceError(ErrorKind.BAD_RESPONSE,
                              f"stream {where.stream!r}: not XINFO's shape")
        name, pending = _text(_field(consumer, "name")), _field(consumer, "pending")
        found.append(BrokerClient(
            where.scope, name, None, consumers=1,
            unacked=pending if isinstance(pending, int) else 1,
            queues=frozenset({where.ref}),
        ))
    return found
