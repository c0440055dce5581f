"""Reading RabbitMQ's management API answers: pure functions, so they can be fuzzed.

The queue listing is trusted for nothing. A queue whose statistics the broker has not
emitted yet is listed with its name only; a field may be absent or of another type in
another RabbitMQ version. Each such queue gets its own SourceError(BAD_RESPONSE); only an
answer that is not a JSON list at all fails the whole call. An impossible number in a rate or
a utilisation (negative, absurd, not finite) is a glitch of that field: it reads as unknown.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from queuescaler.core.redact import redact
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
)

QUEUE_COLUMNS = (
    "name",
    "vhost",
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "consumer_capacity",
    "consumer_utilisation",
    "message_stats.publish_details.rate",
    "message_stats.ack_details.rate",
    "message_stats.deliver_get_details.rate",
    "message_stats.publish",
    "message_stats.ack",
)
"""Only what a QueueSample needs: ~14x fewer bytes than every field (DESIGN.md)."""

CONNECTION_COLUMNS = ("name", "vhost", "user_provided_name", "client_properties.connection_name")
"""What ties a connection to a pod by name. RabbitMQ 3.7+ copies the client-provided name
to `user_provided_name`; the client properties are the fallback (the broker answers a
dotted column with the whole `client_properties` object)."""
CHANNEL_COLUMNS = (
    "name",
    "vhost",
    "connection_details.name",
    "connection_details.peer_host",
    "consumer_count",
    "messages_unacknowledged",
)
"""Per channel: its name, its connection (name and peer address), its consumers and what it
holds."""
CONSUMER_COLUMNS = (
    "queue.name",
    "queue.vhost",
    "channel_details.name",
    "channel_details.connection_name",
)
"""Per consumer: the queue it reads and the channel (and connection) it is on: which pool's
worker a busy channel is."""

FILTER_MAX_NAMES = 20
"""Up to this many names, a listing filtered by name (one page) is cheaper than the whole vhost.

Measured on 3.10 with 2,000 queues: 10 names 26 ms and 1.4 kB against 132 ms and 260 kB for
the whole listing; the broker's regex grows with the names, 100 already cost 90 ms."""
FILTER_MAX_CHARS = 3000
"""The filter travels in the request line; the broker's HTTP server refuses long ones."""
PAGE_SIZE = 500
"""The management API's largest page; a filter of FILTER_MAX_NAMES names in one vhost fits."""

_RATES = {
    "publish_rate": "publish_details",
    "ack_rate": "ack_details",
    "deliver_rate": "deliver_get_details",
}


class _Malformed(Exception):
    """One queue's entry is unusable; becomes that queue's BAD_RESPONSE."""


def _load_list(body: bytes, what: str) -> list[Any]:
    """The listed items: a plain list, or the `items` of one page of a filtered listing."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise SourceError(ErrorKind.BAD_RESPONSE, f"{what} is not JSON") from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        items: list[Any] = document["items"]
        return items
    if not isinstance(document, list):
        raise SourceError(
            ErrorKind.BAD_RESPONSE, f"{what} is a JSON {type(document).__name__}, not a list"
        )
    return document


_COUNTS = ("messages_ready", "messages_unacknowledged", "consumers")
"""Absent all together only while a new queue's statistics are not emitted yet."""


def _count(entry: Mapping[str, Any], field: str) -> int:
    value = entry.get(field)
    if value is None:
        raise _Malformed(f"no {field!r} (statistics not emitted yet?)")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _Malformed(f"{field!r} is not a count")
    return value


MAX_RATE = 10_000_000.0
"""Messages per second above which a rate is a glitch, not a measurement (it becomes None).

One queue is one Erlang process (tens of thousands of messages/s); whole clusters have been
benchmarked near a million. Rates of 1e12 have been seen after a counter reset: a rate that
large would size a pool for a load that does not exist."""
UTILISATION_SLACK = 0.01
"""How far consumer_capacity may stray outside [0, 1] by rounding and still be clamped in."""


def _number(value: Any, field: str) -> float | None:
    """A number, or None when absent, null or '' (older brokers) or not finite.

    Not finite (NaN, Infinity, an integer beyond any float) is a broker's glitch in one field,
    unknown like any other impossible value; failing the queue would take its counts, which
    the decision needs most. A wrong type means the entry is not what we think: malformed.
    """
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Malformed(f"{field!r} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return number if math.isfinite(number) else None


def _utilisation(entry: Mapping[str, Any], field: str) -> float | None:
    """A fraction of time; None outside [0, 1] beyond rounding, which only a glitch gives."""
    number = _number(entry.get(field), field)
    if number is None or not -UTILISATION_SLACK <= number <= 1.0 + UTILISATION_SLACK:
        return None
    return min(max(number, 0.0), 1.0)


def _rate(entry: Mapping[str, Any], details: str) -> float | None:
    """Messages per second; None when not reported or impossible (negative, above MAX_RATE).

    A negative rate is RabbitMQ's known glitch after a counter reset: the counts are still
    good, so only the rate is dropped.
    """
    stats = entry.get("message_stats")
    if stats is None:
        return None  # nothing published or delivered yet
    if not isinstance(stats, dict):
        raise _Malformed("'message_stats' is not an object")
    detail = stats.get(details)
    if detail is None:
        return None
    if not isinstance(detail, dict):
        raise _Malformed(f"'message_stats.{details}' is not an object")
    rate = _number(detail.get("rate"), f"message_stats.{details}.rate")
    if rate is None or not 0.0 <= rate <= MAX_RATE:
        return None
    return rate


def _counter(entry: Mapping[str, Any], key: str) -> int | None:
    """A cumulative count (`message_stats.publish`, `.ack`); None when not reported yet or
    impossible (negative, fractional), like a rate: the core differences it between ticks
    and takes a count that went down for a reset."""
    stats = entry.get("message_stats")
    if not isinstance(stats, dict):
        return None  # no statistics yet; a malformed object is _rate's to report
    number = _number(stats.get(key), f"message_stats.{key}")
    if number is None or number < 0 or not number.is_integer():
        return None
    return int(number)


def _queue_sample(entry: Mapping[str, Any], taken_at: float) -> QueueSample:
    capacity = _utilisation(entry, "consumer_capacity")
    if capacity is None:  # consumer_capacity replaced consumer_utilisation in 3.9
        capacity = _utilisation(entry, "consumer_utilisation")
    return QueueSample(
        ready=_count(entry, "messages_ready"),
        unacked=_count(entry, "messages_unacknowledged"),
        consumers=_count(entry, "consumers"),
        taken_at=taken_at,
        consumer_utilisation=capacity,
        publish_rate=_rate(entry, _RATES["publish_rate"]),
        ack_rate=_rate(entry, _RATES["ack_rate"]),
        deliver_rate=_rate(entry, _RATES["deliver_rate"]),
        published_total=_counter(entry, "publish"),
        acked_total=_counter(entry, "ack"),
    )


def _wanted_entries(
    listing: list[Any], wanted: Collection[QueueRef]
) -> dict[QueueRef, Mapping[str, Any]]:
    """The listing's entries for wanted queues; entries without a string name and vhost skipped."""
    entries: dict[QueueRef, Mapping[str, Any]] = {}
    for entry in listing:
        if not isinstance(entry, dict):
            continue
        name, vhost = entry.get("name"), entry.get("vhost")
        if isinstance(name, str) and isinstance(vhost, str):
            ref = QueueRef(scope=vhost, name=name)
            if ref in wanted:
                entries.setdefault(ref, entry)
    return entries


def parse_queue_listing(body: bytes, wanted: Collection[QueueRef], taken_at: float) -> SampleResult:
    """Samples for the `wanted` queues out of a `/api/queues` answer asked for QUEUE_COLUMNS.

    The answer is the listing (a JSON list) or one page of it (an object with `items`).
    A wanted queue not listed is QUEUE_NOT_FOUND (the caller tells a missing vhost apart).
    Raises SourceError(BAD_RESPONSE), and nothing else, when the body is not a JSON list.
    """
    wanted = frozenset(wanted)
    entries = _wanted_entries(_load_list(body, "the queue listing"), wanted)
    result: dict[QueueRef, QueueSample | SourceError] = {}
    for ref in wanted:
        entry = entries.get(ref)
        if entry is None:
            result[ref] = queue_not_found(ref)
            continue
        if all(entry.get(f) is None for f in _COUNTS):
            result[ref] = SourceError(
                ErrorKind.STATS_PENDING,
                redact(f"queue {ref.name!r} in vhost {ref.scope!r}: no statistics yet"),
            )
            continue
        try:
            result[ref] = _queue_sample(entry, taken_at)
        except _Malformed as problem:
            result[ref] = SourceError(
                ErrorKind.BAD_RESPONSE,
                redact(f"queue {ref.name!r} in vhost {ref.scope!r}: {problem}"),
            )
    return result


def name_filter_query(names: Iterable[str]) -> str | None:
    """Query parameters listing only `names` (exact, anchored, escaped), or None when too many.

    Only for a per-vhost listing: names are unique in a vhost, so one page holds them all.
    """
    unique = sorted(set(names))
    if not unique or len(unique) > FILTER_MAX_NAMES:
        return None
    pattern = "^(?:" + "|".join(re.escape(name) for name in unique) + ")$"
    query = f"page=1&page_size={PAGE_SIZE}&use_regex=true&name={quote(pattern, safe='')}"
    return query if len(query) <= FILTER_MAX_CHARS else None


def parse_vhost_names(body: bytes) -> frozenset[str]:
    """The vhost names in a `/api/vhosts` answer; SourceError(BAD_RESPONSE) if it is no list."""
    listing = _load_list(body, "the vhost listing")
    return frozenset(
        entry["name"]
        for entry in listing
        if isinstance(entry, dict) and isinstance(entry.get("name"), str)
    )


def queue_not_found(ref: QueueRef) -> SourceError:
    """The error of a queue the broker does not have, worded alike on both paths."""
    return SourceError(
        ErrorKind.QUEUE_NOT_FOUND, redact(f"queue {ref.name!r} not found in vhost {ref.scope!r}")
    )


def vhost_not_found(vhost: str) -> SourceError:
    """The error of every queue in a vhost the broker does not have (or will not show us)."""
    return SourceError(
        ErrorKind.VHOST_NOT_FOUND,
        redact(f"vhost {vhost!r} not found (or the user has no permission on it)"),
    )


def mark_missing_vhosts(result: SampleResult, vhosts: Collection[str]) -> SampleResult:
    """Turn QUEUE_NOT_FOUND into VHOST_NOT_FOUND for queues whose vhost is not in `vhosts`."""
    return {
        ref: vhost_not_found(ref.scope)
        if isinstance(outcome, SourceError)
        and outcome.kind is ErrorKind.QUEUE_NOT_FOUND
        and ref.scope not in vhosts
        else outcome
        for ref, outcome in result.items()
    }


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _channel_count(value: Any) -> int | None:
    """A channel's count; None when absent or not a count (that channel is not trusted)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _client_name(entry: Mapping[str, Any]) -> str | None:
    name = _text(entry.get("user_provided_name"))
    if name is None:
        properties = entry.get("client_properties")
        if isinstance(properties, dict):
            name = _text(properties.get("connection_name"))
    return name


@dataclass(frozen=True, slots=True)
class ChannelConsumers:
    """What the consumer listing says about one channel."""

    connection: str | None
    """The name of the channel's connection."""
    queues: list[QueueRef | None]
    """One entry per consumer listed on the channel: its queue, None when unreadable."""


ConsumerListing = Mapping[str, ChannelConsumers]
"""Channel name -> its consumers, out of `/api/consumers`."""


def parse_consumer_listing(body: bytes) -> ConsumerListing:
    """The consumers of a `/api/consumers` answer (CONSUMER_COLUMNS), by channel name.

    A consumer whose channel cannot be read is left out (its channel then lists fewer
    consumers than it has, which makes that channel's queues unknown); one whose queue cannot
    be read is listed as None. Raises SourceError(BAD_RESPONSE), and nothing else, when the
    body is not a JSON list.
    """
    channels: dict[str, ChannelConsumers] = {}
    for entry in _load_list(body, "the consumer listing"):
        details = entry.get("channel_details") if isinstance(entry, dict) else None
        if not isinstance(details, dict) or _text(details.get("name")) is None:
            continue
        queue, ref = entry.get("queue"), None
        if isinstance(queue, dict):
            name, vhost = queue.get("name"), queue.get("vhost")
            if isinstance(name, str) and isinstance(vhost, str):
                ref = QueueRef(scope=vhost, name=name)
        listed = channels.setdefault(
            details["name"], ChannelConsumers(_text(details.get("connection_name")), [])
        )
        listed.queues.append(ref)
    return channels


def _channel_queues(
    name: str | None, consumers: int | None, unacked: int, listing: ConsumerListing | None
) -> frozenset[QueueRef] | None:
    """The queues one channel consumes, or None when the listings cannot say.

    Known only when the consumer listing has at least as many readable consumers on the
    channel as the channel's statistics count (it was taken a moment later: a consumer
    cancelled in between, or a channel missing from it, leaves the channel unknown), and,
    for a channel holding messages, at least one (messages held with no consumer came from
    a queue nobody can name: a cancelled consumer's, or `basic.get`).
    """
    if listing is None or name is None or consumers is None:
        return None
    listed = listing.get(name)
    queues = listed.queues if listed is not None else []
    if len(queues) < consumers or (unacked > 0 and not queues):
        return None
    known = frozenset(ref for ref in queues if ref is not None)
    return None if len(known) < len(set(queues)) else known  # an unreadable queue: unknown


def parse_client_connections(
    connections_body: bytes,
    channels_body: bytes,
    vhosts: Collection[str],
    consumers_body: bytes | None = None,
) -> list[BrokerClient]:
    """The connections in `vhosts` that consume or hold messages, out of the answers of
    `/api/connections` (CONNECTION_COLUMNS) and `/api/channels` (CHANNEL_COLUMNS), with
    the queues they consume from `/api/consumers` (CONSUMER_COLUMNS).

    Channels are grouped by their connection's name; the connection listing adds the name
    the client gave (a connection opened between the two requests simply has none). A
    channel whose statistics are not emitted yet is not listed, or listed without counts:
    one without its unacknowledged count counts as holding a message (it may: protection
    fails closed). A connection's queues are those of its channels, plus those of consumers
    on its channels the channel listing did not have yet; unknown (None) when the consumer
    listing is absent or unreadable, or cannot say for one of its channels. Raises
    SourceError(BAD_RESPONSE), and nothing else, when the connection or channel body is
    not a JSON list.
    """
    vhosts = frozenset(vhosts)
    names: dict[str, str] = {}
    for entry in _load_list(connections_body, "the connection listing"):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            client_name = _client_name(entry)
            if client_name is not None:
                names[entry["name"]] = client_name
    listing: ConsumerListing | None = None
    if consumers_body is not None:
        with contextlib.suppress(SourceError):  # unreadable: every client's queues unknown
            listing = parse_consumer_listing(consumers_body)
    grouped: dict[tuple[str, str], list[int]] = {}
    peers: dict[tuple[str, str], str | None] = {}
    consumed: dict[tuple[str, str], set[QueueRef]] = {}
    unknown: set[tuple[str, str]] = set()
    """Connections with a channel whose queues the listings cannot say."""
    seen: set[str] = set()
    """The channels the channel listing has."""
    for entry in _load_list(channels_body, "the channel listing"):
        if not isinstance(entry, dict):
            continue
        vhost, details = entry.get("vhost"), entry.get("connection_details")
        if not isinstance(vhost, str) or vhost not in vhosts or not isinstance(details, dict):
            continue
        connection = details.get("name")
        if not isinstance(connection, str):
            continue
        channel = _text(entry.get("name"))
        counted = _channel_count(entry.get("consumer_count"))
        consumers = counted or 0
        unacked = _channel_count(entry.get("messages_unacknowledged"))
        if unacked is None:
            unacked = 1  # unknown: it may hold work, so it counts as busy (fails closed)
        key = (vhost, connection)
        totals = grouped.setdefault(key, [0, 0])
        totals[0] += consumers
        totals[1] += unacked
        peers.setdefault(key, _text(details.get("peer_host")))
        if channel is not None:
            seen.add(channel)
        found = consumed.setdefault(key, set())
        if consumers > 0 or unacked > 0 or counted is None:
            these = _channel_queues(channel, counted, unacked, listing)
            if these is None:
                unknown.add(key)
            else:
                found |= these
    connections = {connection: (vhost, connection) for vhost, connection in consumed}
    for channel, listed in (listing or {}).items():
        # Consumers on a channel the channel listing did not have yet (opened between the
        # two requests): what its connection consumes grows, never shrinks.
        grown = connections.get(listed.connection or "")
        if channel not in seen and grown is not None:
            consumed[grown] |= {ref for ref in listed.queues if ref is not None}
    return [
        BrokerClient(
            scope=vhost,
            client_name=names.get(connection),
            peer_host=peers[(vhost, connection)],
            consumers=consumers,
            unacked=unacked,
            queues=None if (vhost, connection) in unknown
            else frozenset(consumed[(vhost, connection)]),
        )
        for (vhost, connection), (consumers, unacked) in sorted(grouped.items())
        if consumers > 0 or unacked > 0
    ]
