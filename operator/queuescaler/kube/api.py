"""The Kubernetes calls the engine makes, as a protocol: `KubeClient` is the real one, and
unit tests pass a small fake of their own without casts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import Pod
from queuescaler.kube.client import HpaTarget, ObjectRef


class KubeApi(Protocol):
    """Reads and writes of one tick; each raises KubeError (NotFound for a 404)."""

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int: ...

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None: ...

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str: ...

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]: ...

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None: ...

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]: ...

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None: ...

    async def emit_event(
        self, about: ObjectRef, event_type: str, reason: str, message: str
    ) -> None: ...

    async def list_hpas(self, namespace: str) -> list[HpaTarget]: ...
