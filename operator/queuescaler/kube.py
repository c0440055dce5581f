"""The Kubernetes side: a target's `/scale`, a QueueScaler's status, Secrets and Events.

The official client is synchronous, so every call runs in a worker thread. This module
and `handlers.py` are the only ones that import the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from queuescaler.redact import redact
from queuescaler.spec import ScaleTargetRef

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
class ObjectRef:
    """What an Event is about."""

    api_version: str
    kind: str
    namespace: str
    name: str
    uid: str | None = None


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
        self._api_client = api_client
        self._plurals: dict[tuple[str, str], str] = {}

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        """The target's desired replica count, read from its `/scale` subresource."""
        scale = await self._scale_call(namespace, target, read=True)
        replicas = (scale.get("spec") or {}).get("replicas") if isinstance(scale, dict) else None
        if replicas is None and not isinstance(scale, dict):
            replicas = scale.spec.replicas
        return int(replicas or 0)

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
                    path, "GET", response_type="object", auth_settings=["BearerToken"],
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
                self._custom.patch_namespaced_custom_object_status,
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
            await asyncio.to_thread(self._core.create_namespaced_event, about.namespace, event)
        except ApiException as error:
            raise _failure(error, f"Event on {about.kind} {about.namespace}/{about.name}") from None
