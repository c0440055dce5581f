"""Kafka: a consumer group's lag, every group and topic of a cluster in one round per tick.

`KIND` is what the source registry needs; the I/O half (`source.py`, with aiokafka's
connections) is named, not imported, so the pure parsers can be used without it.
"""

from __future__ import annotations

from queuescaler.sources.kafka.secret import broker_from_secret
from queuescaler.sources.kafka.spec import BROKER, DEFAULTS, parse_block
from queuescaler.sources.kind import SourceKind

KIND = SourceKind(
    name=BROKER,
    parse_block=parse_block,
    parse_secret=broker_from_secret,
    defaults=DEFAULTS,
    connector="queuescaler.sources.kafka.source:KafkaSource",
)
