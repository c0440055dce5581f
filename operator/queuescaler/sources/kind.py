"""What the registry knows of one broker: how to read its block, its Secret, and where its
source lives. Pure."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from queuescaler.core.spec import BlockParser
from queuescaler.sources.base import QueueSource


@dataclass(frozen=True)
class SourceKind:
    """One broker kind, as the registry lists it (KEDA's scaler map, in one record)."""

    name: str
    """Its key under `spec.source`."""
    parse_block: BlockParser
    """Reads `spec.source.<name>`."""
    parse_secret: Callable[[Mapping[str, str]], Hashable]
    """Reads the Secret's decoded data into the broker's address: equal addresses share
    one source. Raises SourceError(BAD_CONFIG) naming the key, never quoting a value."""
    defaults: Mapping[str, Any]
    """The block's defaults, keyed by their path inside the block."""
    connector: str
    """`module:attribute` of the source's constructor, called with the address. Named, not
    imported: the parsers above serve the simulator and tools that do no I/O."""

    def connect(self, broker: Hashable, **options: Any) -> QueueSource:
        """A new source for `broker` (its I/O module is imported on first use)."""
        module, _, attribute = self.connector.partition(":")
        constructor: Callable[..., QueueSource] = getattr(
            importlib.import_module(module), attribute
        )
        return constructor(broker, **options)
