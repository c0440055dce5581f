"""Which clients hold messages, out of one Jolokia bulk POST per broker. Pure.

Both flavors can tell, each its own way:
- Classic registers an MBean per consumer (`endpoint=Consumer`), with its `ClientId` (a STOMP
  client's `client-id` header, a JMS connection's client ID), its `ConnectionId`, the queue's
  real name and `DispatchedQueueSize` (dispatched, not acknowledged); and one per connection
  (`connectionViewType=clientId`) with its `RemoteAddress`. Both are read by pattern.
- Artemis has no consumer MBeans: the broker's `listConsumers` operation (an exec, what its
  console uses) answers JSON text with each consumer's `clientID`, `remoteAddress`, queue,
  address, routing type and `messagesInTransit` (delivered, not acknowledged).

A client is one connection: its consumers' counts add up. A consumer whose held count cannot
be read counts as holding one (protection fails closed); one whose queue cannot be read makes
its client's queues unknown.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef
from queuescaler.sources.activemq.jolokia import (
    CLASSIC_DOMAIN,
    NAMES,
    PROBE_ATTRIBUTES,
    Answer,
    Probe,
    Read,
    answers,
    bad,
    broker_mbean,
    classic_part,
    matched,
    named,
    probe,
    several,
)
from queuescaler.sources.activemq.spec import ARTEMIS, CLASSIC, BrokerScope, Flavor

CONSUMER_ATTRIBUTES: Final = ("ClientId", "ConnectionId", "DestinationName", "DispatchedQueueSize")
CONNECTION_ATTRIBUTES: Final = ("ClientId", "RemoteAddress")
PAGE_SIZE: Final = 10_000
"""Artemis consumers asked for in one page: more fail the listing (protection holds) rather
than leave some unseen."""
NO_FILTER: Final = json.dumps({"field": "", "operation": "", "value": ""})


def peer_host(address: object) -> str | None:
    """The host of a remote address as the brokers write it: `tcp://10.0.0.5:45818`
    (Classic), `10.0.0.5:52998` (Artemis), maybe `/10.0.0.5:1` or `[fd00::5]:1`."""
    if not isinstance(address, str) or not address:
        return None
    text = address.partition("://")[2] if "://" in address else address
    text = text.lstrip("/").rpartition("/")[2]  # Java's `host/address` form keeps the address
    if text.startswith("["):
        host = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        host = text.partition(":")[0]
    else:
        host = text  # no port, or an IPv6 address without brackets
    return host or None


def _held(value: Any) -> int | None:
    """A consumer's held count (Artemis writes its numbers as strings); None: unknown."""
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass
class _Client:
    """One connection's consumers, added up."""

    client_name: str | None
    peer: str | None
    consumers: int = 0
    unacked: int = 0
    queues: list[tuple[str, str | None, str] | None] = field(default_factory=list)
    """Each consumer's (queue, address, routing type); None when unreadable."""

    def add(self, queue: tuple[str, str | None, str] | None, held: int | None) -> None:
        self.consumers += 1
        self.unacked += 1 if held is None else held
        self.queues.append(queue)

    def client(self, scope: str, parsed: BrokerScope) -> BrokerClient:
        known = [q for q in self.queues if q is not None]
        queues = None if len(known) < len(self.queues) else frozenset(
            QueueRef(_naming(parsed, address, queue, routing).scope, queue)
            for queue, address, routing in known)
        return BrokerClient(scope, self.client_name, self.peer, self.consumers, self.unacked,
                            queues)


def _naming(scope: BrokerScope, address: str | None, queue: str, routing: str) -> BrokerScope:
    """The scope a spec naming this queue would have, as near to `scope` as it can be: equal
    to it for the queues the scope's QueueScalers read."""
    if address is None or scope.flavor == CLASSIC:
        return scope
    kept = scope.address if address == scope.address else None if address == queue else address
    return BrokerScope(scope.flavor, scope.broker_name, kept, routing)


class ListingPlan:
    """The bulk POST that lists one agent's consumers, for the scopes of one flavor."""

    def __init__(
        self,
        flavor: Flavor,
        scopes: Iterable[tuple[str, BrokerScope]],
        broker_name: str | None,
    ) -> None:
        """`broker_name`: the broker the scopes name (their own, or the Secret's); None: the
        only one there is. Artemis needs it: an exec names one MBean, never a pattern."""
        self.flavor = flavor
        self.scopes = list(scopes)
        self.broker_name = broker_name
        name = "*" if broker_name is None else classic_part(broker_name)
        self.probe = Read(broker_mbean(flavor, broker_name), PROBE_ATTRIBUTES[flavor],
                          pattern=broker_name is None)
        self.consumers = Read(
            f"{CLASSIC_DOMAIN}:type=Broker,brokerName={name},destinationType=Queue,"
            "destinationName=*,endpoint=Consumer,clientId=*,consumerId=*",
            CONSUMER_ATTRIBUTES, pattern=True)
        self.connections = Read(
            f"{CLASSIC_DOMAIN}:type=Broker,brokerName={name},connector=clientConnectors,"
            "connectorName=*,connectionViewType=clientId,connectionName=*",
            CONNECTION_ATTRIBUTES, pattern=True)

    def body(self) -> list[dict[str, Any]]:
        if self.flavor == CLASSIC:
            return [self.probe.request(), self.consumers.request(), self.connections.request()]
        assert self.broker_name is not None, "an Artemis listing names its broker"
        return [self.probe.request(), {
            "type": "exec", "mbean": broker_mbean(ARTEMIS, self.broker_name),
            "operation": "listConsumers(java.lang.String,int,int)",
            "arguments": [NO_FILTER, 1, PAGE_SIZE],
        }]

    def parse(self, document: Any) -> list[BrokerClient]:
        """The clients holding or consuming messages, once per scope; SourceError when the
        broker cannot be told (not found, the listing refused or unreadable)."""
        expected = 3 if self.flavor == CLASSIC else 2
        entries = answers(document, expected)
        seen, _ = probe(self.flavor, self.probe, entries[0])
        if seen is Probe.SEVERAL:
            raise bad(ErrorKind.BAD_CONFIG, several(self.flavor))
        if seen is Probe.ABSENT:
            raise bad(ErrorKind.BAD_CONFIG, f"no {NAMES[self.flavor]} broker"
                      f"{named(self.broker_name)} answers behind the Jolokia URL")
        if seen is Probe.STANDBY:  # its consumers are not its master's: none would be seen
            raise bad(ErrorKind.UNREACHABLE, f"the {NAMES[self.flavor]} broker"
                      f"{named(self.broker_name)} is a slave: its consumers are not listed")
        if self.flavor == CLASSIC:
            clients = self._classic(entries[1], entries[2])
        else:
            clients = self._artemis(entries[1])
        return [
            client.client(text, parsed)
            for text, parsed in self.scopes
            for client in clients
            if client.consumers > 0 or client.unacked > 0
        ]

    def _classic(self, consumers: Answer, connections: Answer) -> Sequence[_Client]:
        """Busy clients out of the consumer and connection MBeans read by pattern. Anything
        in the listing it cannot read fails it: a consumer skipped would be an idle pod."""
        what = f"the consumers of {NAMES[CLASSIC]}"
        if not consumers.ok and not consumers.absent:
            raise consumers.problem(what)
        if not connections.ok and not connections.absent:
            raise connections.problem(what)
        for listing in (consumers, connections):
            if listing.ok and not _whole(listing):
                raise bad(ErrorKind.BAD_RESPONSE, f"{what}: the listing holds an entry that is "
                          "not an MBean's attributes (a Jolokia limit cut it?): a consumer "
                          "could go unseen")
        peers: dict[str, str | None] = {}
        for _, attributes in matched(self.connections, connections) if connections.ok else ():
            client_id = _text(attributes.get("ClientId"))
            if client_id is not None:
                peers[client_id] = peer_host(attributes.get("RemoteAddress"))
        grouped: dict[str, _Client] = {}
        for keys, attributes in matched(self.consumers, consumers) if consumers.ok else ():
            client_id = _text(attributes.get("ClientId"))
            connection = _text(attributes.get("ConnectionId")) or client_id or (
                (keys or {}).get("clientId") or "")
            found = grouped.setdefault(
                connection, _Client(client_id, peers.get(client_id or "")))
            queue = _text(attributes.get("DestinationName"))
            found.add(None if queue is None else (queue, None, "anycast"),
                      _held(attributes.get("DispatchedQueueSize")))
        return [grouped[key] for key in sorted(grouped)]

    def _artemis(self, listing: Answer) -> Sequence[_Client]:
        what = f"the consumers of {NAMES[ARTEMIS]}"
        if not listing.ok:
            raise listing.problem(what)
        try:
            page = json.loads(listing.value) if isinstance(listing.value, str) else None
        except (ValueError, RecursionError):
            page = None
        data = page.get("data") if isinstance(page, dict) else None
        if not isinstance(data, list):
            raise bad(ErrorKind.BAD_RESPONSE, f"{what}: listConsumers answered no data list")
        count = page.get("count") if isinstance(page, dict) else None
        if isinstance(count, int) and count > len(data):
            raise bad(ErrorKind.BAD_RESPONSE, f"{what}: listConsumers answered {len(data)} of "
                      f"{count} consumers (one page of at most {PAGE_SIZE})")
        grouped: dict[str, _Client] = {}
        for entry in data:
            if not isinstance(entry, dict):
                raise bad(ErrorKind.BAD_RESPONSE, f"{what}: a consumer is not an object")
            remote = _text(entry.get("remoteAddress"))
            key = remote or _text(entry.get("session")) or str(entry.get("id"))
            found = grouped.setdefault(key, _Client(_text(entry.get("clientID")),
                                                    peer_host(remote)))
            queue, address = _text(entry.get("queue")), _text(entry.get("address"))
            routing = _text(entry.get("queueType"))
            found.add((queue, address, routing)
                      if queue is not None and routing in ("anycast", "multicast") else None,
                      _held(entry.get("messagesInTransit")))
        return [grouped[key] for key in sorted(grouped)]


def _whole(listing: Answer) -> bool:
    """Whether a pattern read's answer is MBean names each with its attributes, and nothing
    else (Jolokia writes what a limit cut as a string, not as attributes)."""
    value = listing.value
    return isinstance(value, dict) and all(
        isinstance(name, str) and isinstance(attributes, dict)
        for name, attributes in value.items())
