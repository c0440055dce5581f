"""RabbitMQ: the management HTTP API for full samples, AMQP passive declares for live counts.

`KIND` is what the source registry needs; the I/O half (`source.py`, with aiohttp and
pika) is named, not imported, so the pure parsers can be used without it.
"""

from __future__ import annotations

from queuescaler.sources.kind import SourceKind
from queuescaler.sources.rabbitmq.secret import broker_from_secret
from queuescaler.sources.rabbitmq.spec import BROKER, DEFAULTS, parse_block

KIND = SourceKind(
    name=BROKER,
    parse_block=parse_block,
    parse_secret=broker_from_secret,
    defaults=DEFAULTS,
    connector="queuescaler.sources.rabbitmq.source:RabbitMQSource",
)
