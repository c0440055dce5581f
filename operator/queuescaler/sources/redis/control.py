"""Celery's remote control (`celery inspect`) over kombu's Redis transport, as data. Pure.

Read from kombu 5.7's `kombu/pidbox.py` and `kombu/transport/redis.py`, and Celery 5.7's
`celery/app/control.py` and `celery/worker/control.py`, then checked against a real
`app.control.inspect()` round on a real server (MONITOR):
- a broadcast is a PUBLISH of kombu's message envelope on the Redis channel
  `<global_keyprefix>/<db>.<control exchange>.pidbox` (kombu's fanout exchanges are pub/sub
  channels; `fanout_prefix` puts the database in front, since channels span databases). Every
  worker subscribes to it, so PUBLISH answers with the number of workers that got it;
- the envelope's body (base64 of JSON) is `{method, arguments, destination, pattern, matcher,
  ticket, reply_to: {exchange: reply.<control exchange>.pidbox, routing_key: <oid>}}`;
- each worker answers `{<its hostname>: <reply>}` in the same envelope, headers carrying the
  ticket, with an LPUSH to the lists that `reply.<control exchange>.pidbox`'s binding set
  routes `<oid>` to: the client adds `<oid> sep sep <oid>.reply.<...>.pidbox` to
  `_kombu.binding.reply.<...>.pidbox` before it publishes, and removes it afterwards;
- `reserved` lists the tasks a worker took and has not started, `active` the ones it runs
  (acked already unless acks_late: Redis alone cannot see them), `active_queues` the queues it
  consumes. A worker's hostname is `celery@<host>` by default; in a pod the host is the pod's
  name, which is what busy-worker protection matches.

A worker that got the broadcast and does not answer in time (a solo pool busy with a task
blocks the loop that would answer; a pickle-only worker answers what is not read here) is
still counted: it becomes a client of unknown name that holds work, so the core keeps the
pods it could be (core.workers: protection fails closed).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from queuescaler.core.sample import BrokerClient, QueueRef
from queuescaler.sources.redis.layout import Layout

CONTROL_EXCHANGE: Final = "celery"
"""Celery's `control_exchange` setting (its default): the pidbox names derive from it."""
RESERVED: Final = "reserved"
ACTIVE: Final = "active"
QUEUES: Final = "active_queues"
COMMANDS: Final = (RESERVED, ACTIVE, QUEUES)
"""In the order sent: a task that starts between a worker's two answers is then counted twice
(reserved, then active), never missed."""
ARGUMENTS: Final[Mapping[str, Mapping[str, Any]]] = {ACTIVE: {"safe": True}}
"""`safe`: the worker does not deserialize task arguments for the answer (only counts matter)."""
PERMANENT_KEY: Final = "_kombu.binding_permanent."
"""kombu 5.7 sweeps a binding set whose deadline passed unless this set lists a member."""


def broadcast_channel(layout: Layout, database: int) -> str:
    """The pub/sub channel every worker of a layout's app listens on for broadcasts."""
    return f"{layout.key_prefix}/{database}.{CONTROL_EXCHANGE}.pidbox"


def reply_exchange() -> str:
    return f"reply.{CONTROL_EXCHANGE}.pidbox"


def reply_queue(oid: str) -> str:
    """The list workers push their answers to (kombu's reply queue for `oid`)."""
    return f"{oid}.{reply_exchange()}"


@dataclass(frozen=True, slots=True)
class ReplyRoute:
    """The keys that route a worker's answer to our reply list, in one layout."""

    binding_key: str
    permanent_key: str
    member: str
    reply_key: str


def reply_route(layout: Layout, oid: str) -> ReplyRoute:
    """What to add before the broadcast (and remove after) so that answers reach `reply_key`."""
    exchange = reply_exchange()
    queue = reply_queue(oid)
    return ReplyRoute(
        binding_key=layout.binding_key(exchange),
        permanent_key=f"{layout.key_prefix}{PERMANENT_KEY}{exchange}",
        member=layout.separator.join((oid, "", queue)),
        reply_key=layout.key_prefix + queue,
    )


def request(command: str, *, ticket: str, oid: str, tag: str, expires: float) -> str:
    """One broadcast as kombu's Redis transport publishes it: JSON, body base64-encoded."""
    body = {
        "method": command,
        "arguments": dict(ARGUMENTS.get(command, {})),
        "destination": None,
        "pattern": None,
        "matcher": None,
        "ticket": ticket,
        "reply_to": {"exchange": reply_exchange(), "routing_key": oid},
    }
    return json.dumps({
        "body": base64.b64encode(json.dumps(body).encode()).decode("ascii"),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {"clock": 1, "expires": expires},
        "properties": {
            "delivery_mode": 2,
            "delivery_info": {"exchange": f"{CONTROL_EXCHANGE}.pidbox", "routing_key": ""},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": tag,
        },
    })


@dataclass(frozen=True, slots=True)
class Reply:
    """One worker's answer to one command."""

    ticket: str
    hostname: str
    value: object


def parse_reply(raw: bytes | str) -> Reply | None:
    """A worker's answer from our reply list, or None when it is not a JSON answer we can read
    (another serializer, another shape): that worker then counts as silent."""
    try:
        envelope = json.loads(raw)
        if not isinstance(envelope, dict) or envelope.get("content-type") != "application/json":
            return None
        headers = envelope.get("headers")
        properties = envelope.get("properties")
        body = envelope.get("body")
        if not isinstance(headers, dict) or not isinstance(properties, dict):
            return None
        ticket = headers.get("ticket")
        if not isinstance(ticket, str):
            return None
        if properties.get("body_encoding") == "base64" and isinstance(body, str):
            body = base64.b64decode(body, validate=True)
        answer = json.loads(body) if isinstance(body, str | bytes) else body
    except (ValueError, TypeError, binascii.Error, RecursionError):
        return None
    if not isinstance(answer, dict) or len(answer) != 1:
        return None
    ((hostname, value),) = answer.items()
    if not isinstance(hostname, str) or not hostname:
        return None
    return Reply(ticket=ticket, hostname=hostname, value=value)


def pod_name(hostname: str) -> str:
    """The host part of a Celery node name (`celery@<host>`, or `<name>@<host>` with -n): in a
    pod the host is the pod's name. A name without '@' is a host already."""
    _, at, host = hostname.partition("@")
    return host if at and host else hostname


@dataclass
class Round:
    """One broadcast round of a layout: who got each command, and who answered what."""

    scope: str
    tickets: Mapping[str, str]
    """Ticket -> command."""
    receivers: dict[str, int] = field(default_factory=dict)
    """Command -> workers the PUBLISH reached."""
    answers: dict[str, dict[str, object]] = field(default_factory=dict)
    """Hostname -> command -> the worker's answer."""

    def take(self, reply: Reply | None) -> None:
        """Keep an answer to one of this round's tickets (others are late answers: dropped)."""
        if reply is None or reply.ticket not in self.tickets:
            return
        self.answers.setdefault(reply.hostname, {})[self.tickets[reply.ticket]] = reply.value

    @property
    def complete(self) -> bool:
        """Every worker the broadcasts reached answered every command."""
        return all(
            sum(1 for got in self.answers.values() if command in got) >= reached
            for command, reached in self.receivers.items()
        )

    @property
    def reached(self) -> int:
        """Workers that got the broadcast (the PUBLISHes may differ by a worker starting)."""
        return max(self.receivers.values(), default=0)

    def clients(self) -> list[BrokerClient]:
        """The workers as clients: each answering one by its pod name, and one client of
        unknown name holding work for each worker reached that did not answer."""
        found = [
            _client(self.scope, hostname, got) for hostname, got in sorted(self.answers.items())
        ]
        silent = max(0, self.reached - len(self.answers))
        found += [BrokerClient(self.scope, None, None, consumers=1, unacked=1)] * silent
        return found


def _count(value: object) -> int | None:
    """Tasks in a `reserved` or `active` answer; None when it is not a list (an error)."""
    return len(value) if isinstance(value, list) else None


def _queues(scope: str, value: object) -> frozenset[QueueRef] | None:
    if not isinstance(value, list):
        return None
    names = [q.get("name") if isinstance(q, dict) else None for q in value]
    if not all(isinstance(name, str) and name for name in names):
        return None
    return frozenset(QueueRef(scope, str(name)) for name in names)


def _client(scope: str, hostname: str, got: Mapping[str, object]) -> BrokerClient:
    """One answering worker. What it did not say is taken at its worst: tasks unknown mean
    busy, queues unknown mean it may serve any pool."""
    counts = [_count(got.get(command)) for command in (RESERVED, ACTIVE)]
    held = sum(count or 0 for count in counts)
    if any(count is None for count in counts):
        held = max(held, 1)
    queues = _queues(scope, got.get(QUEUES))
    consumers = len(queues) if queues is not None else 1
    return BrokerClient(scope, pod_name(hostname), None, consumers=consumers, unacked=held,
                        queues=queues)

