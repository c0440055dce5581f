"""The `spec.source.redis` block: Celery queues on Redis (kombu's transport), or a Redis stream
read by a consumer group. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from queuescaler.core.sample import QueueRef
from queuescaler.core.spec import Fields, SecretRef, SpecError, parse_queue_list
from queuescaler.sources.redis.layout import DEFAULT_SEPARATOR, MAX_PREFIX, MAX_SEPARATOR, Layout
from queuescaler.sources.redis.streams import StreamGroup

BROKER: Final = "redis"
DEFAULTS: Final[Mapping[str, Any]] = MappingProxyType({"includeUnacked": True})
"""Defaults of the block's optional fields (the CRD declares the same; a test compares).

`keyPrefix` and `prioritySeparator` have none in the CRD: absent means kombu's own (no
prefix, its "\\x06\\x16" separator), which is not a value a user would type."""


@dataclass(frozen=True, slots=True)
class RedisSourceSpec:
    """Where the work waits: kombu lists in one Redis database; several queues add up."""

    queue_names: tuple[str, ...]
    """The queues of `queue` or `queues`, whichever the user wrote: never empty."""
    connection_secret_ref: SecretRef
    """Holds `redisUrl` and optionally `username`, `password`, `database` and `ca.crt`."""
    layout: Layout = field(default_factory=Layout)
    """Kombu's key names: its `global_keyprefix` and priority separator (`sep`)."""
    include_unacked: bool = DEFAULTS["includeUnacked"]
    """Count messages a worker took and has not acknowledged (kombu's `unacked` hash, or a
    stream group's pending entries)."""
    group: str | None = None
    """Set for a Redis stream: `queue_names` holds the stream's key, this its consumer group."""

    @property
    def broker(self) -> str:
        return BROKER

    @property
    def queues(self) -> tuple[QueueRef, ...]:
        """The queues, scoped by their layout (or the stream by its group): the source reads
        the scope back into keys."""
        if self.group is not None:
            return tuple(StreamGroup(name, self.group).ref for name in self.queue_names)
        return tuple(QueueRef(self.layout.scope, name) for name in self.queue_names)

    @property
    def secret_ref(self) -> SecretRef:
        return self.connection_secret_ref

    @property
    def include_in_flight(self) -> bool:
        return self.include_unacked

    @property
    def where(self) -> str:
        if self.group is not None:
            return f"stream group {self.group!r}"
        prefix = self.layout.key_prefix
        return f"the Celery app's Redis (key prefix {prefix!r})" if prefix else "the Redis"


def _optional_text(fields: Fields, key: str, longest: int) -> str | None:
    """A string that may be anything (a control character, a colon), only not too long."""
    value = fields.raw(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise SpecError(fields.path(key), "must be a non-empty string")
    if len(value) > longest:
        raise SpecError(fields.path(key), f"must be at most {longest} characters")
    return value


def parse_block(raw: object, path: str) -> RedisSourceSpec:
    """The block as written under `spec.source.redis`, checked."""
    fields = Fields(raw, path, "", DEFAULTS)
    if sum(fields.has(key) for key in ("queue", "queues", "stream")) != 1:
        raise SpecError(fields.path("queue"), "set exactly one of queue, queues or stream")
    if fields.has("stream"):
        return _stream_block(fields)
    if fields.has("group"):
        raise SpecError(fields.path("group"), "a consumer group is for a stream: set stream")
    if fields.has("queue"):
        queue_names: tuple[str, ...] = (fields.string("queue"),)
    else:
        queue_names = parse_queue_list(fields.raw("queues"), fields.path("queues"))
    secret = fields.obj("connectionSecretRef", required=True)
    secret_ref = SecretRef(name=secret.string("name", required=True))
    secret.done()
    prefix = _optional_text(fields, "keyPrefix", MAX_PREFIX) or ""
    separator = _optional_text(fields, "prioritySeparator", MAX_SEPARATOR) or DEFAULT_SEPARATOR
    source = RedisSourceSpec(
        queue_names=queue_names,
        connection_secret_ref=secret_ref,
        layout=Layout(key_prefix=prefix, separator=separator),
        include_unacked=fields.flag("includeUnacked"),
    )
    fields.done()
    return source


def _stream_block(fields: Fields) -> RedisSourceSpec:
    """A Redis stream read by a consumer group (`stream` and `group`): no kombu options."""
    for kombu_only in ("keyPrefix", "prioritySeparator"):
        if fields.has(kombu_only):
            raise SpecError(fields.path(kombu_only), "is a kombu option: not for a stream")
    stream = fields.string("stream")
    group = fields.string("group", required=True)
    secret = fields.obj("connectionSecretRef", required=True)
    secret_ref = SecretRef(name=secret.string("name", required=True))
    secret.done()
    source = RedisSourceSpec(
        queue_names=(stream,),
        connection_secret_ref=secret_ref,
        include_unacked=fields.flag("includeUnacked"),
        group=group,
    )
    fields.done()
    return source
