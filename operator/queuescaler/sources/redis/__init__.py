"""Redis: Celery's queues on kombu's Redis transport, every queue of a tick in one pipeline.

`KIND` is what the source registry needs; the I/O half (`source.py`, with redis-py) is
named, not imported, so the pure parsers can be used without it.
"""

from __future__ import annotations

from queuescaler.sources.kind import SourceKind
from queuescaler.sources.redis.secret import broker_from_secret
from queuescaler.sources.redis.spec import BROKER, DEFAULTS, parse_block

KIND = SourceKind(
    name=BROKER,
    parse_block=parse_block,
    parse_secret=broker_from_secret,
    defaults=DEFAULTS,
    connector="queuescaler.sources.redis.source:RedisSource",
)
