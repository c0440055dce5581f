"""A target's pods: found through the selector its /scale reports, and marked with a
deletion cost so that a scale-down removes idle pods first."""

from __future__ import annotations

import asyncio
import builtins
import logging
from collections.abc import Iterable, Mapping

from queuescaler.core.plan import expired
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import DELETION_COST, Marks, Pod
from queuescaler.kube.api import KubeApi
from queuescaler.kube.client import HpaTarget, KubeError, NotFound

log = logging.getLogger(__name__)

HPA_REFRESH_SECONDS = 60.0
"""HorizontalPodAutoscalers are listed per namespace this often."""
SELECTOR_REFRESH_SECONDS = 300.0
"""A target's pod selector is read from its /scale again after this long (it rarely moves)."""


class Autoscalers:
    """HorizontalPodAutoscalers by namespace, listed at most once a minute: an HPA on a
    QueueScaler's target is a second owner (KEDA makes one per ScaledObject)."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube
        self._found: dict[str, tuple[float, list[HpaTarget]]] = {}

    async def around(
        self, namespaces: Iterable[str], now: float
    ) -> list[tuple[str, str, ScaleTargetRef]]:
        """(namespace, HPA name, its target) in `namespaces`; a namespace whose HPAs cannot be
        listed keeps what was last seen there."""
        for namespace in set(namespaces):
            cached = self._found.get(namespace)
            if cached is None or expired(cached[0], now, HPA_REFRESH_SECONDS):
                try:
                    found = await self._kube.list_hpas(namespace)
                except KubeError as error:
                    log.debug("HPAs in %s not read: %s", namespace, error.message)
                    found = cached[1] if cached else []
                self._found[namespace] = (now + HPA_REFRESH_SECONDS, found)
        return [
            (namespace, hpa.name, hpa.target)
            for namespace, (_, found) in self._found.items() for hpa in found
        ]


class Pods:
    """Lists and marks the pods of scale targets; caches each target's selector."""

    def __init__(self, kube: KubeApi) -> None:
        self._kube = kube
        self._selectors: dict[tuple[str, str, str, str], tuple[float, str]] = {}

    async def list(self, namespace: str, target: ScaleTargetRef, now: float) -> list[Pod]:
        """The target's pods; raises KubeError."""
        key = (namespace, target.api_version, target.kind, target.name)
        cached = self._selectors.get(key)
        if cached is None or expired(cached[0], now, SELECTOR_REFRESH_SECONDS):
            selector = await self._kube.read_selector(namespace, target)
            cached = self._selectors[key] = (now + SELECTOR_REFRESH_SECONDS, selector)
        return await self._kube.list_pods(namespace, cached[1])

    def prune(self, now: float) -> None:
        """Forget selectors that expired long ago (their targets may be gone)."""
        for key, (expires, _) in list(self._selectors.items()):
            if now >= expires + SELECTOR_REFRESH_SECONDS:
                del self._selectors[key]

    async def annotate(
        self, namespace: str, marks: Marks, held: Mapping[str, str]
    ) -> tuple[dict[str, str], builtins.list[str]]:
        """Patch the marks; the pods marked afterwards and their costs (`held` updated),
        and the pods that could not be patched.

        A pod that is gone is forgotten; one that could not be patched keeps what it had.
        """
        updated = dict(held)
        failed: builtins.list[str] = []
        if not marks:
            return updated, failed
        results = await asyncio.gather(
            *(self._kube.annotate_pod(namespace, pod, annotations)
              for pod, annotations in marks.items()),
            return_exceptions=True,
        )
        for (pod, wanted), result in zip(marks.items(), results, strict=True):
            if isinstance(result, NotFound):
                updated.pop(pod, None)
            elif isinstance(result, KubeError):
                log.warning("pod %s/%s not marked: %s", namespace, pod, result.message)
                failed.append(pod)
            elif isinstance(result, BaseException):
                raise result
            elif (cost := wanted.get(DELETION_COST)) is None:
                updated.pop(pod, None)
            else:
                updated[pod] = cost
        return updated, failed
