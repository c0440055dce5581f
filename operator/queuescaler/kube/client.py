"""The Kubernetes side: a target's `/scale`, a QueueScaler's status, Secrets and Events.

The official client is synchronous, so every call runs in a worker thread. This module
and `handlers.py` are the only ones that import the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from queuescaler.core.redact import redact
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import DELETION_COST, MARKED_BY, Pod

GROUP = "queuescaler.io"
VERSION = "v1alpha1"
PLURAL = "queuescalers"
KIND = "QueueScaler"
COMPONENT = "queuescaler"

_APPS_SCALE = {
    "Deployment": ("read_namespaced_deployment_scale", "patch_namespaced_deployment_scale"),
    "StatefulSet": ("read_namespaced_stateful_set_scale", "patch_namespaced_stateful_set_scale"),
    "ReplicaSet": ("read_namespaced_replica_set_scale", "patch_namespaced_replica_set_scale"),
}


class KubeError(Exception):
    """A Kubernetes call failed; `reason` is a CamelCase word for conditions."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = redact(message)


class NotFound(KubeError):
    """The object is gone (or never was): a target, a Secret, or the QueueScaler itself."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease says: who holds it, since when it was renewed, for how long."""

    holder: str | None
    renewed_at: float | None
    duration_seconds: int
    resource_version: str | None
    transitions: int
    acquired_at: datetime.datetime | None = None


@dataclass(frozen=True, slots=True)
class ObjectRef:
    """What an Event is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str | None = None


def _discarding_answer(call: Callable[..., Any], *args: Any) -> None:
    """Make a write whose answer is not needed, without turning it into Python objects.

    The apiserver answers a status patch with the whole object. Decoding 10,000 of those
    in the first pass only to drop them left the heap fragmented for the process's life.
    Errors still raise ApiException as usual.
    """
    response = call(*args, _preload_content=False)
    try:
        response.drain_conn()
    finally:
        response.release_conn()


def _failure(error: ApiException, what: str) -> KubeError:
    if error.status == 404:
        return NotFound("NotFound", f"{what} not found")
    if error.status == 403:
        return KubeError("Forbidden", f"not allowed to access {what}")
    return KubeError("ApiError", f"{what}: HTTP {error.status} {error.reason}")


class KubeClient:
    """Thin async wrappers over the calls the operator makes, with errors it can name."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._apps = k8s.AppsV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self._api_client = api_client
        self._plurals: dict[tuple[str, str], str] = {}

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        """The target's desired replica count, read from its `/scale` subresource."""
        scale = await self._scale_call(namespace, target, read=True)
        replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
        if replicas is None and not isinstance(scale, dict):
            replicas = scale.spec.replicas
        return int(replicas or 0)

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        """The label selector of the target's pods, from its `/scale` status (string form)."""
        scale = await self._scale_call(namespace, target, read=True)
        if isinstance(scale, dict):
            selector = (scale.get("status") or {}).get("selector")
        else:
            selector = scale.status.selector if scale.status is not None else None
        if not isinstance(selector, str) or not selector:
            raise KubeError(
                "NoSelector",
                f"{target.kind} {namespace}/{target.name}: its /scale reports no pod selector",
            )
        return selector

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        """The pods matching `selector`, reduced to what matching and marking need."""
        try:
            listing = await asyncio.to_thread(
                self._core.list_namespaced_pod, namespace, label_selector=selector
            )
        except ApiException as error:
            raise _failure(error, f"pods in {namespace} matching {selector!r}") from None
        pods: list[Pod] = []
        for pod in listing.items or ():
            annotations = pod.metadata.annotations or {}
            pods.append(Pod(
                name=pod.metadata.name,
                ip=(pod.status.pod_ip or None) if pod.status is not None else None,
                deleting=pod.metadata.deletion_timestamp is not None,
                deletion_cost=annotations.get(DELETION_COST),
                marked_by=annotations.get(MARKED_BY),
            ))
        return pods

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch a pod's annotations (None removes one)."""
        body = {"metadata": {"annotations": dict(annotations)}}
        try:
            await asyncio.to_thread(
                self._core.patch_namespaced_pod, name, namespace, body,
                _content_type="application/merge-patch+json",
            )
        except ApiException as error:
            raise _failure(error, f"Pod {namespace}/{name}") from None

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        """Set the target's replica count through `/scale` (works for any scalable kind)."""
        await self._scale_call(namespace, target, read=False, replicas=replicas)

    async def _scale_call(
        self, namespace: str, target: ScaleTargetRef, *, read: bool, replicas: int = 0
    ) -> Any:
        what = f"{target.kind} {namespace}/{target.name}"
        body = {"spec": {"replicas": replicas}}
        try:
            group, _, version = target.api_version.rpartition("/")
            if group == "apps" and target.kind in _APPS_SCALE:
                reader, patcher = _APPS_SCALE[target.kind]
                if read:
                    return await asyncio.to_thread(
                        getattr(self._apps, reader), target.name, namespace
                    )
                return await asyncio.to_thread(
                    getattr(self._apps, patcher), target.name, namespace, body
                )
            if not group:
                raise KubeError("UnsupportedTarget", f"{what}: core kinds have no /scale we use")
            plural = await self._plural(target.api_version, target.kind)
            if read:
                return await asyncio.to_thread(
                    self._custom.get_namespaced_custom_object_scale,
                    group, version, namespace, plural, target.name,
                )
            return await asyncio.to_thread(
                self._custom.patch_namespaced_custom_object_scale,
                group, version, namespace, plural, target.name, body,
            )
        except ApiException as error:
            raise _failure(error, what) from None

    async def _plural(self, api_version: str, kind: str) -> str:
        """The resource name of a kind, from discovery (cached: kinds do not move)."""
        key = (api_version, kind)
        if key not in self._plurals:
            path = f"/apis/{api_version}"
            try:
                response = await asyncio.to_thread(
                    self._api_client.call_api,
                    path, "GET", response_types_map={200: "object"}, auth_settings=["BearerToken"],
                    _return_http_data_only=True,
                )
            except ApiException as error:
                raise _failure(error, f"API group version {api_version}") from None
            for resource in (response or {}).get("resources", []):
                if resource.get("kind") == kind and "/" not in resource.get("name", "/"):
                    self._plurals[key] = resource["name"]
                    break
            else:
                raise NotFound("NotFound", f"kind {kind} is not served by {api_version}")
        return self._plurals[key]

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded. `get` by name only: the operator never lists Secrets."""
        try:
            secret = await asyncio.to_thread(self._core.read_namespaced_secret, name, namespace)
        except ApiException as error:
            raise _failure(error, f"Secret {namespace}/{name}") from None
        decoded: dict[str, str] = {}
        for key, value in (secret.data or {}).items():
            try:
                decoded[key] = base64.b64decode(value).decode()
            except (ValueError, UnicodeDecodeError):
                decoded[key] = ""  # not text: the parser reports the key as unusable
        return decoded

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a QueueScaler's status subresource."""
        try:
            await asyncio.to_thread(
                _discarding_answer, self._custom.patch_namespaced_custom_object_status,
                GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)},
            )
        except ApiException as error:
            raise _failure(error, f"QueueScaler {namespace}/{name}") from None

    async def emit_event(
        self, about: ObjectRef, event_type: str, reason: str, message: str
    ) -> None:
        """Post a core/v1 Event (what `kubectl describe` shows). Failures are not fatal."""
        now = datetime.datetime.now(datetime.UTC)
        event = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(
                name=f"{about.name}.{uuid.uuid4().hex[:12]}", namespace=about.namespace
            ),
            involved_object=k8s.V1ObjectReference(
                api_version=about.api_version, kind=about.kind, name=about.name,
                namespace=about.namespace, uid=about.uid,
            ),
            type=event_type,
            reason=reason,
            message=redact(message)[:1024],
            source=k8s.V1EventSource(component=COMPONENT),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await asyncio.to_thread(
                _discarding_answer, self._core.create_namespaced_event, about.namespace, event
            )
        except ApiException as error:
            raise _failure(error, f"Event on {about.kind} {about.namespace}/{about.name}") from None

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        """The Lease, or None when it does not exist yet."""
        try:
            lease = await asyncio.to_thread(
                self._coordination.read_namespaced_lease, name, namespace
            )
        except ApiException as error:
            if error.status == 404:
                return None
            raise _failure(error, f"Lease {namespace}/{name}") from None
        spec = lease.spec
        renewed = spec.renew_time or spec.acquire_time
        return LeaseRecord(
            holder=spec.holder_identity,
            renewed_at=renewed.timestamp() if renewed is not None else None,
            duration_seconds=spec.lease_duration_seconds or 15,
            resource_version=lease.metadata.resource_version,
            transitions=spec.lease_transitions or 0,
            acquired_at=spec.acquire_time,
        )

    async def write_lease(
        self, namespace: str, name: str, holder: str, duration: int, seen: LeaseRecord | None
    ) -> None:
        """Create the Lease, or replace the version we read (a conflict means we lost)."""
        now = datetime.datetime.now(datetime.UTC)
        taking_over = seen is None or seen.holder != holder
        transitions = (seen.transitions if seen else 0) + (1 if taking_over and seen else 0)
        lease = k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=name, namespace=namespace,
                resource_version=seen.resource_version if seen else None,
            ),
            spec=k8s.V1LeaseSpec(
                holder_identity=holder,
                lease_duration_seconds=duration,
                renew_time=now,
                acquire_time=now if taking_over or seen is None else seen.acquired_at,
                lease_transitions=transitions,
            ),
        )
        try:
            if seen is None:
                await asyncio.to_thread(
                    self._coordination.create_namespaced_lease, namespace, lease
                )
            else:
                await asyncio.to_thread(
                    self._coordination.replace_namespaced_lease, name, namespace, lease
                )
        except ApiException as error:
            if error.status == 409:
                raise KubeError("Conflict", f"Lease {namespace}/{name} was taken") from None
            raise _failure(error, f"Lease {namespace}/{name}") from None

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Give the Lease up (only if still ours), so a standby need not wait for expiry."""
        seen = await self.read_lease(namespace, name)
        if seen is None or seen.holder != holder:
            return
        body = {
            "metadata": {"resourceVersion": seen.resource_version},
            "spec": {"holderIdentity": None, "renewTime": None},
        }
        try:
            await asyncio.to_thread(
                self._coordination.patch_namespaced_lease, name, namespace, body
            )
        except ApiException as error:
            raise _failure(error, f"Lease {namespace}/{name}") from None
