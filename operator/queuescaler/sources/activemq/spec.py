"""The `spec.source.activemq` block: queues on an ActiveMQ Classic or Artemis broker. Pure.

A QueueRef names a queue (`name`) within a scope (`scope`) that says how to find its MBean:
the broker's flavor (None: found out from the broker), its name (None: the Secret's, or the
only broker the Jolokia agent serves) and, for Artemis, the address and routing type the
queue is bound with. The source groups its reads by broker from the scopes alone, and the
consumer listing, handed scopes only, knows which broker each names.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from queuescaler.core.sample import QueueRef
from queuescaler.core.spec import Fields, SecretRef, SpecError, parse_queue_list

BROKER: Final = "activemq"
CLASSIC: Final = "classic"
ARTEMIS: Final = "artemis"
FLAVORS: Final = (CLASSIC, ARTEMIS)
ANYCAST: Final = "anycast"
MULTICAST: Final = "multicast"
ROUTING_TYPES: Final = (ANYCAST, MULTICAST)
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType({"includeUnacked": True})
"""Defaults of the block's optional fields (the CRD declares the same; a test compares).

`flavor`, `brokerName`, `address` and `routingType` have none: absent means found out from
the broker, the Secret's (or the only broker there is), the queue's own name, and anycast
(what a JMS or STOMP queue is bound with); an Artemis-only default would sit in every
Classic block."""
MAX_NAME: Final = 255
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")
"""No broker takes a control character in a name: an ObjectName refuses a raw newline."""

Flavor = Literal["classic", "artemis"]


@dataclass(frozen=True, slots=True)
class BrokerScope:
    """What an activemq QueueRef's scope says: which broker, and how its queues are named."""

    flavor: Flavor | None = None
    """None: Classic or Artemis, whichever the Jolokia agent serves."""
    broker_name: str | None = None
    """The broker's name in its MBeans; None: the Secret's `brokerName`, else the only one."""
    address: str | None = None
    """Artemis: the address the queues are bound to; None: each queue's own name."""
    routing_type: str = ANYCAST
    """Artemis: anycast (a queue) or multicast (a topic subscription's queue)."""

    @property
    def scope(self) -> str:
        return json.dumps(
            {"flavor": self.flavor, "broker": self.broker_name, "address": self.address,
             "routing": self.routing_type},
            sort_keys=True, separators=(",", ":"),
        )

    def ref(self, queue: str) -> QueueRef:
        return QueueRef(self.scope, queue)

    @classmethod
    def from_scope(cls, scope: str) -> BrokerScope | None:
        """The broker scope a QueueRef's scope names, or None when it names none."""
        try:
            value = json.loads(scope)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {"flavor", "broker", "address", "routing"}:
            return None
        flavor, broker, address, routing = (
            value[k] for k in ("flavor", "broker", "address", "routing"))
        if (flavor is not None and flavor not in FLAVORS) or routing not in ROUTING_TYPES:
            return None
        for name in (broker, address):
            if name is not None and (not isinstance(name, str) or not name):
                return None
        return cls(flavor, broker, address, routing)


@dataclass(frozen=True, slots=True)
class ActiveMQSourceSpec:
    """Queues on one ActiveMQ broker; their backlogs and counters add up."""

    queue_names: tuple[str, ...]
    """The queues of `queue` or `queues`, whichever the user wrote: never empty."""
    connection_secret_ref: SecretRef
    """Holds `jolokiaUrl` and optionally `username`, `password`, `ca.crt`, `brokerName`."""
    flavor: Flavor | None = None
    broker_name: str | None = None
    address: str | None = None
    routing_type: str = ANYCAST
    include_unacked: bool = DEFAULTS["includeUnacked"]
    """Count messages dispatched to consumers and not yet acknowledged as backlog too."""

    @property
    def broker(self) -> str:
        return BROKER

    @property
    def broker_scope(self) -> BrokerScope:
        return BrokerScope(self.flavor, self.broker_name, self.address, self.routing_type)

    @property
    def queues(self) -> tuple[QueueRef, ...]:
        scope = self.broker_scope
        return tuple(scope.ref(name) for name in self.queue_names)

    @property
    def secret_ref(self) -> SecretRef:
        return self.connection_secret_ref

    @property
    def include_in_flight(self) -> bool:
        return self.include_unacked

    @property
    def where(self) -> str:
        if self.broker_name is None:
            return "the ActiveMQ broker"
        return f"ActiveMQ broker {self.broker_name!r}"


def _name(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must be a non-empty string")
    if len(value) > MAX_NAME:
        raise SpecError(path, f"must be at most {MAX_NAME} characters")
    if _CONTROL.search(value):
        raise SpecError(path, "must not hold control characters")
    return value


def _optional(fields: Fields, key: str) -> str | None:
    value = fields.raw(key)
    return None if value is None else _name(value, fields.path(key))


def _choice(fields: Fields, key: str, choices: tuple[str, ...]) -> str | None:
    value = fields.raw(key)
    if value is not None and value not in choices:
        raise SpecError(fields.path(key), f"must be {' or '.join(choices)}")
    return value if isinstance(value, str) else None


def parse_block(raw: object, path: str) -> ActiveMQSourceSpec:
    """The block as written under `spec.source.activemq`, checked."""
    fields = Fields(raw, path, "", DEFAULTS)
    if fields.has("queue") == fields.has("queues"):
        raise SpecError(fields.path("queue"), "set exactly one of queue or queues")
    if fields.has("queue"):
        names: tuple[str, ...] = (_name(fields.raw("queue"), fields.path("queue")),)
    else:
        names = parse_queue_list(fields.raw("queues"), fields.path("queues"))
        for index, name in enumerate(names):
            _name(name, f"{fields.path('queues')}[{index}]")
    secret = fields.obj("connectionSecretRef", required=True)
    secret_ref = SecretRef(name=secret.string("name", required=True))
    secret.done()
    flavor = _choice(fields, "flavor", FLAVORS)
    address = _optional(fields, "address")
    routing = _choice(fields, "routingType", ROUTING_TYPES)
    if flavor == CLASSIC:
        for artemis_only in ("address", "routingType"):
            if fields.has(artemis_only):
                raise SpecError(fields.path(artemis_only), "is an Artemis option: not for classic")
    source = ActiveMQSourceSpec(
        queue_names=names,
        connection_secret_ref=secret_ref,
        flavor=CLASSIC if flavor == CLASSIC else ARTEMIS if flavor == ARTEMIS else None,
        broker_name=_optional(fields, "brokerName"),
        address=address,
        routing_type=routing or ANYCAST,
        include_unacked=fields.flag("includeUnacked"),
    )
    fields.done()
    return source
