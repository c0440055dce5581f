"""ActiveMQ Classic and Artemis: every queue of every QueueScaler on a broker read in one
Jolokia bulk POST per tick.

`KIND` is what the source registry needs; the I/O half (`source.py`, with its HTTP session)
is named, not imported, so the pure parsers can be used without it.
"""

from __future__ import annotations

from queuescaler.sources.activemq.secret import broker_from_secret
from queuescaler.sources.activemq.spec import BROKER, DEFAULTS, parse_block
from queuescaler.sources.kind import SourceKind

KIND = SourceKind(
    name=BROKER,
    parse_block=parse_block,
    parse_secret=broker_from_secret,
    defaults=DEFAULTS,
    connector="queuescaler.sources.activemq.source:ActiveMQSource",
)
