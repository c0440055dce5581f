"""What the operator knows between ticks: the QueueScalers it serves and their targets' sizes.

In memory only; the rules for what to do with it live in `core.plan`.

Both maps are fed by watches (kopf event handlers), so a tick reads them for free
instead of asking the apiserver about every QueueScaler.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Any

from queuescaler.core.plan import Memory
from queuescaler.core.sample import QueueRef
from queuescaler.core.spec import QueueScalerSpec, SpecError
from queuescaler.core.status import state_from_status
from queuescaler.sources.registry import parse_spec

Key = tuple[str, str]
"""(namespace, name)"""


@dataclass(slots=True)
class Scaler:
    """One QueueScaler as the operator tracks it. The engine replaces its memory each tick."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    spec: QueueScalerSpec | None
    spec_error: SpecError | None
    memory: Memory
    """What the planner remembers (decision state, last written status, marks, ...)."""
    next_due: float = 0.0
    """When the next full sample is due (aligned to the polling interval)."""
    _queues_of: tuple[QueueScalerSpec, tuple[QueueRef, ...]] | None = None
    """The spec the queues were made of, and them: a tick asks several times per
    QueueScaler, and a Kafka or ActiveMQ block builds each QueueRef's scope as JSON (a
    third of an ActiveMQ tick at 1,000 QueueScalers went there)."""

    @property
    def key(self) -> Key:
        return (self.namespace, self.name)

    def queues(self) -> tuple[QueueRef, ...]:
        spec = self.spec
        if spec is None:
            return ()
        made = self._queues_of
        if made is None or made[0] is not spec:
            made = self._queues_of = (spec, spec.source.queues)
        return made[1]


class Fleet:
    """The QueueScalers in scope, keyed by namespace and name."""

    def __init__(self) -> None:
        self._scalers: dict[Key, Scaler] = {}

    def upsert(self, body: Mapping[str, Any], now: float, *, follow_status: bool = False) -> Scaler:
        """Add or refresh a QueueScaler from a watch event's body.

        The spec is parsed again only when the generation moves. The decision state is
        restored from status the first time an object is seen, and on every event while
        `follow_status` (a standby mirrors what the leader writes); a leader's own memory
        is newer than what it wrote, so it ignores the echo of its writes.
        """
        meta = body.get("metadata") or {}
        key = (meta.get("namespace", ""), meta.get("name", ""))
        generation = meta.get("generation")
        known = self._scalers.get(key)
        if known is not None and known.uid == meta.get("uid"):
            if follow_status:
                known.memory = _restored(body.get("status"), now, known.memory)
            if known.generation != generation:
                known.spec, known.spec_error = _parse(body.get("spec"))
                known.generation = generation
                known.next_due = 0.0  # a changed spec is acted on at the next tick
            return known
        spec, error = _parse(body.get("spec"))
        scaler = Scaler(
            namespace=key[0],
            name=key[1],
            uid=meta.get("uid", ""),
            generation=generation,
            spec=spec,
            spec_error=error,
            memory=_restored(body.get("status"), now, Memory()),
        )
        self._scalers[key] = scaler
        return scaler

    def restore_all(self, now: float) -> None:
        """Rebuild every decision state from the status last seen, as of `now` (a replica
        that takes over the Lease starts its windows and cooldowns from there)."""
        for scaler in self._scalers.values():
            scaler.memory = _restored(scaler.memory.status, now, scaler.memory)

    def remove(self, namespace: str, name: str) -> Scaler | None:
        return self._scalers.pop((namespace, name), None)

    def get(self, namespace: str, name: str) -> Scaler | None:
        return self._scalers.get((namespace, name))

    def __iter__(self) -> Iterator[Scaler]:
        return iter(list(self._scalers.values()))

    def __len__(self) -> int:
        return len(self._scalers)


def _restored(raw_status: object, now: float, memory: Memory) -> Memory:
    """The memory a stored status gives back: the decision state and what was written."""
    status = dict(raw_status) if isinstance(raw_status, Mapping) else {}
    return replace(memory, state=state_from_status(status, now)).wrote(status)


def _parse(raw: object) -> tuple[QueueScalerSpec | None, SpecError | None]:
    if not isinstance(raw, Mapping):
        return None, SpecError("spec", "missing")
    try:
        return parse_spec(raw), None
    except SpecError as error:
        return None, error


class ReplicaCache:
    """Deployments' desired replica counts, as the watch last reported them.

    Only Deployments are watched (they are what QueueScalers scale in practice); other
    kinds are read through `/scale` when needed.
    """

    def __init__(self) -> None:
        self._replicas: dict[Key, int] = {}

    def update(self, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        replicas = (body.get("spec") or {}).get("replicas")
        key = (meta.get("namespace", ""), meta.get("name", ""))
        self._replicas[key] = int(replicas) if isinstance(replicas, int) else 1

    def forget(self, namespace: str, name: str) -> None:
        self._replicas.pop((namespace, name), None)

    def set(self, namespace: str, name: str, replicas: int) -> None:
        self._replicas[(namespace, name)] = replicas

    def get(self, namespace: str, name: str) -> int | None:
        return self._replicas.get((namespace, name))
