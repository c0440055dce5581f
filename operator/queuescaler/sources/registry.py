"""The source registry: each key allowed under `spec.source`, and the broker behind it.

Adding a broker is one folder under `sources/`, one line here, and one branch in the CRD.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final

from queuescaler.core import spec as core_spec
from queuescaler.sources.activemq import KIND as ACTIVEMQ
from queuescaler.sources.kafka import KIND as KAFKA
from queuescaler.sources.kind import SourceKind
from queuescaler.sources.rabbitmq import KIND as RABBITMQ
from queuescaler.sources.redis import KIND as REDIS

KINDS: Final = (RABBITMQ, REDIS, KAFKA, ACTIVEMQ)
"""Every broker kind, in the order `kubectl explain` lists them."""
SOURCES: Final[Mapping[str, SourceKind]] = MappingProxyType({kind.name: kind for kind in KINDS})


def parse_spec(raw: Mapping[str, Any]) -> core_spec.QueueScalerSpec:
    """A QueueScaler's `spec`, its broker block included; SpecError names the bad field."""
    return core_spec.parse_spec(raw, {name: kind.parse_block for name, kind in SOURCES.items()})


def all_defaults() -> dict[str, Any]:
    """Every default a spec can take, keyed by its path under `spec` (the CRD has the same)."""
    merged = dict(core_spec.DEFAULTS)
    for name, kind in SOURCES.items():
        merged.update({f"source.{name}.{path}": value for path, value in kind.defaults.items()})
    return merged
