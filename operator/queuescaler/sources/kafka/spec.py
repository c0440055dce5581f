"""The `spec.source.kafka` block: a consumer group's lag on one or more topics. Pure.

A QueueRef names a topic (`name`) within its group's scope (`scope`). The scope carries what
makes one group's lag read differently from another QueueScaler's reading of the same group
(the reset policy, the replica cap) and, when the spec names them, the bootstrap servers: the
source groups its requests by cluster and by group from the scopes alone, and the busy-member
listing, handed scopes only, knows the group.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final, Literal

from queuescaler.core.sample import QueueRef
from queuescaler.core.spec import Fields, SecretRef, SpecError
from queuescaler.sources.kafka.servers import BadServer, normalize

BROKER: Final = "kafka"
EARLIEST: Final = "earliest"
LATEST: Final = "latest"
RESET_POLICIES: Final = (EARLIEST, LATEST)
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType(
    {"offsetResetPolicy": LATEST, "allowIdleConsumers": False, "limitToPartitionsWithLag": True}
)
"""Defaults of the block's optional fields (the CRD declares the same; a test compares).

`offsetResetPolicy` latest is Kafka's own `auto.offset.reset` default (and KEDA's): a
partition the group never committed on has no lag. `limitToPartitionsWithLag` true: replicas
beyond the partitions with messages waiting would join the group and idle."""
MAX_TOPICS: Final = 32
MAX_TOPIC: Final = 249
"""Kafka's own limit on a topic name."""
MAX_GROUP: Final = 255
_TOPIC: Final = re.compile(r"^[A-Za-z0-9._\-]+$")

Cap = Literal["lag", "partitions", "none"]


@dataclass(frozen=True, slots=True)
class GroupScope:
    """What a kafka QueueRef's scope says: the group, how its lag counts, and where."""

    group: str
    reset: str = LATEST
    """earliest: a partition without a committed offset lags from its log start; latest: 0."""
    cap: Cap = "lag"
    """lag: no more replicas than partitions with lag; partitions: than partitions; none."""
    servers: tuple[str, ...] | None = None
    """The spec's bootstrap servers (normalized); None: the Secret's."""

    @property
    def scope(self) -> str:
        return json.dumps(
            {"group": self.group, "reset": self.reset, "cap": self.cap,
             "servers": list(self.servers) if self.servers is not None else None},
            sort_keys=True, separators=(",", ":"),
        )

    def ref(self, topic: str) -> QueueRef:
        return QueueRef(self.scope, topic)

    @classmethod
    def from_scope(cls, scope: str) -> GroupScope | None:
        """The group scope a QueueRef's scope names, or None when it names none."""
        try:
            value = json.loads(scope)
        except ValueError:
            return None
        if not isinstance(value, dict) or set(value) != {"group", "reset", "cap", "servers"}:
            return None
        group, reset, cap, servers = (value[k] for k in ("group", "reset", "cap", "servers"))
        if not isinstance(group, str) or not group or reset not in RESET_POLICIES:
            return None
        if cap not in ("lag", "partitions", "none"):
            return None
        if servers is not None and (
            not isinstance(servers, list) or not servers
            or not all(isinstance(s, str) and s for s in servers)
        ):
            return None
        return cls(group, reset, cap, tuple(servers) if servers is not None else None)


@dataclass(frozen=True, slots=True)
class KafkaSourceSpec:
    """A consumer group reading one or more topics; the topics' lags add up."""

    topics: tuple[str, ...]
    """The topics of `topic` or `topics`, whichever the user wrote: never empty."""
    consumer_group: str
    connection_secret_ref: SecretRef
    """Holds the SASL and TLS settings, and `bootstrapServers` unless the spec names them."""
    bootstrap_servers: tuple[str, ...] | None = None
    """Normalized `host:port`s; None: the Secret's."""
    offset_reset_policy: str = DEFAULTS["offsetResetPolicy"]
    allow_idle_consumers: bool = DEFAULTS["allowIdleConsumers"]
    limit_to_partitions_with_lag: bool = DEFAULTS["limitToPartitionsWithLag"]

    @property
    def broker(self) -> str:
        return BROKER

    @property
    def group_scope(self) -> GroupScope:
        cap: Cap = "none" if self.allow_idle_consumers else (
            "lag" if self.limit_to_partitions_with_lag else "partitions")
        return GroupScope(self.consumer_group, self.offset_reset_policy, cap,
                          self.bootstrap_servers)

    @property
    def queues(self) -> tuple[QueueRef, ...]:
        scope = self.group_scope
        return tuple(scope.ref(topic) for topic in self.topics)

    @property
    def secret_ref(self) -> SecretRef:
        return self.connection_secret_ref

    @property
    def include_in_flight(self) -> bool:
        """The lag counts every message not committed, those being processed included."""
        return True

    @property
    def where(self) -> str:
        return f"consumer group {self.consumer_group!r}"


def _topic(value: object, path: str) -> str:
    if not isinstance(value, str) or not value:
        raise SpecError(path, "must be a non-empty string")
    if len(value) > MAX_TOPIC or not _TOPIC.match(value) or value in (".", ".."):
        raise SpecError(
            path, f"must be a Kafka topic name: letters, digits, '.', '_' and '-', at most "
            f"{MAX_TOPIC} characters")
    return value


def _topics(fields: Fields) -> tuple[str, ...]:
    if fields.has("topic") == fields.has("topics"):
        raise SpecError(fields.path("topic"), "set exactly one of topic or topics")
    if fields.has("topic"):
        return (_topic(fields.raw("topic"), fields.path("topic")),)
    value, path = fields.raw("topics"), fields.path("topics")
    if not isinstance(value, list) or not value:
        raise SpecError(path, "must be a non-empty list of topic names")
    if len(value) > MAX_TOPICS:
        raise SpecError(path, f"must name at most {MAX_TOPICS} topics")
    topics = tuple(_topic(name, f"{path}[{index}]") for index, name in enumerate(value))
    if len(set(topics)) != len(topics):
        raise SpecError(path, "must not name a topic twice (its lag would count twice)")
    return topics


def _servers(fields: Fields) -> tuple[str, ...] | None:
    value, path = fields.raw("bootstrapServers"), fields.path("bootstrapServers")
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise SpecError(path, "must be a list of host:port strings")
    try:
        return normalize(value, "the list")
    except BadServer as error:
        raise SpecError(path, str(error)) from None


def parse_block(raw: object, path: str) -> KafkaSourceSpec:
    """The block as written under `spec.source.kafka`, checked."""
    fields = Fields(raw, path, "", DEFAULTS)
    topics = _topics(fields)
    group = fields.string("consumerGroup", required=True)
    if len(group) > MAX_GROUP:
        raise SpecError(fields.path("consumerGroup"), f"must be at most {MAX_GROUP} characters")
    secret = fields.obj("connectionSecretRef", required=True)
    secret_ref = SecretRef(name=secret.string("name", required=True))
    secret.done()
    reset = fields.string("offsetResetPolicy")
    if reset not in RESET_POLICIES:
        raise SpecError(fields.path("offsetResetPolicy"), "must be earliest or latest")
    source = KafkaSourceSpec(
        topics=topics,
        consumer_group=group,
        connection_secret_ref=secret_ref,
        bootstrap_servers=_servers(fields),
        offset_reset_policy=reset,
        allow_idle_consumers=fields.flag("allowIdleConsumers"),
        limit_to_partitions_with_lag=fields.flag("limitToPartitionsWithLag"),
    )
    fields.done()
    return source
