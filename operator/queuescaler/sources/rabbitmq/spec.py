"""The `spec.source.rabbitmq` block: queues in a vhost, and the Secret that reaches them. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from queuescaler.core.sample import QueueRef
from queuescaler.core.spec import Fields, SecretRef, SpecError, parse_queue_list

BROKER: Final = "rabbitmq"
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType({"vhost": "/", "includeUnacked": True})
"""Defaults of the block's optional fields (the CRD declares the same; a test compares)."""


@dataclass(frozen=True, slots=True)
class RabbitMQSourceSpec:
    """Where the work waits; several queues add up as if they were one."""

    queue_names: tuple[str, ...]
    """The queues of `queue` or `queues`, whichever the user wrote: never empty."""
    connection_secret_ref: SecretRef
    """Holds `amqpUrl` and optionally `managementUrl`."""
    vhost: str = DEFAULTS["vhost"]
    include_unacked: bool = DEFAULTS["includeUnacked"]
    """Count delivered-but-unacknowledged messages as backlog too."""

    @property
    def broker(self) -> str:
        return BROKER

    @property
    def queues(self) -> tuple[QueueRef, ...]:
        return tuple(QueueRef(self.vhost, name) for name in self.queue_names)

    @property
    def secret_ref(self) -> SecretRef:
        return self.connection_secret_ref

    @property
    def include_in_flight(self) -> bool:
        return self.include_unacked

    @property
    def where(self) -> str:
        return f"vhost {self.vhost!r}"


def parse_block(raw: object, path: str) -> RabbitMQSourceSpec:
    """The block as written under `spec.source.rabbitmq`, checked."""
    fields = Fields(raw, path, "", DEFAULTS)
    if fields.has("queue") == fields.has("queues"):
        raise SpecError(fields.path("queue"), "set exactly one of queue or queues")
    if fields.has("queue"):
        queue_names: tuple[str, ...] = (fields.string("queue"),)
    else:
        queue_names = parse_queue_list(fields.raw("queues"), fields.path("queues"))
    secret = fields.obj("connectionSecretRef", required=True)
    secret_ref = SecretRef(name=secret.string("name", required=True))
    secret.done()
    source = RabbitMQSourceSpec(
        queue_names=queue_names,
        connection_secret_ref=secret_ref,
        vhost=fields.string("vhost"),
        include_unacked=fields.flag("includeUnacked"),
    )
    fields.done()
    return source
