"""The Kubernetes side: a target's `/scale`, a QueueScaler's status, Secrets and Events.

The official client is synchronous, so every call runs in a worker thread, with a connect
and read timeout (a hung apiserver must not hold a tick or the Lease loop forever). Every
exception a call can raise, from urllib3, the socket, TLS, the JSON decoder or the API,
leaves this module as a KubeError: callers that catch KubeError are never bypassed. This
module and `handlers.py` are the only ones that import the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, NamedTuple

import urllib3.exceptions as u3
from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException, OpenApiException

from queuescaler.core.redact import redact
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.core.workers import DELETION_COST, MARKED_BY, Pod

GROUP = "queuescaler.io"
VERSION = "v1alpha1"
PLURAL = "queuescalers"
KIND = "QueueScaler"
COMPONENT = "queuescaler"

DEFAULT_REQUEST_TIMEOUT = (5.0, 15.0)
"""(connect, read) seconds for each request; urllib3 may retry a GET a few times within."""
DISCOVERY_RETRY_SECONDS = 60.0
"""A kind not (or not yet) scalable is looked up again after this long: CRDs get updated."""

_APPS_SCALE = {
    "Deployment": ("read_namespaced_deployment_scale", "patch_namespaced_deployment_scale"),
    "StatefulSet": ("read_namespaced_stateful_set_scale", "patch_namespaced_stateful_set_scale"),
    "ReplicaSet": ("read_namespaced_replica_set_scale", "patch_namespaced_replica_set_scale"),
}
_FINISHED = frozenset({"Succeeded", "Failed"})
"""Pod phases no controller counts as a replica: an evicted pod stays listed, Failed, with
its podIP, which the network may have given to a live pod since (kubernetes#109414)."""

log = logging.getLogger(__name__)


class ErrorReason(StrEnum):
    """Every `KubeError.reason`: CamelCase words, usable as condition reasons unchanged."""

    NOT_FOUND = "NotFound"
    FORBIDDEN = "Forbidden"
    UNAUTHORIZED = "Unauthorized"
    CONFLICT = "Conflict"
    INVALID = "Invalid"
    TOO_MANY_REQUESTS = "TooManyRequests"
    API_ERROR = "ApiError"
    UNREACHABLE = "Unreachable"
    TIMEOUT = "Timeout"
    TLS_ERROR = "TlsError"
    BAD_RESPONSE = "BadResponse"
    CLIENT_ERROR = "ClientError"
    UNSUPPORTED_TARGET = "UnsupportedTarget"
    NO_SELECTOR = "NoSelector"


class KubeError(Exception):
    """A Kubernetes call failed, whatever the exception class underneath.

    `reason` is one of `ErrorReason`: a CamelCase word ready to be a condition's reason as
    it is (no further case conversion). `message` is redacted and names the object.
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = redact(message)


class NotFound(KubeError):
    """The object is gone (or never was): a target, a Secret, or the QueueScaler itself."""


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """What a Lease says: who holds it, since when it was renewed, for how long.

    `renewed_at` is the holder's wall clock: fit to show, never to judge expiry by.
    """

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


class HpaTarget(NamedTuple):
    """An autoscaling/v2 HorizontalPodAutoscaler's name and the object it scales."""

    name: str
    target: ScaleTargetRef


@dataclass(frozen=True, slots=True)
class _Resource:
    plural: str
    scalable: bool


def _controller(references: Any) -> str | None:
    """The controller among a pod's ownerReferences (a ReplicaSet, a StatefulSet) as
    `kind/name`, None when none controls it."""
    for reference in references or ():
        if reference is not None and reference.controller:
            return f"{reference.kind}/{reference.name}"
    return None


def _ready(status: Any) -> bool:
    """Whether a pod's Ready condition is True."""
    conditions = () if status is None else status.conditions or ()
    return any(c is not None and c.type == "Ready" and c.status == "True" for c in conditions)


def _discarding_answer(call: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Make a write whose answer is not needed, without turning it into Python objects.

    The apiserver answers a status patch with the whole object. Decoding 10,000 of those
    in the first pass only to drop them left the heap fragmented for the process's life.
    Errors still raise ApiException as usual.
    """
    response = call(*args, _preload_content=False, **kwargs)
    try:
        response.drain_conn()
    finally:
        response.release_conn()


_STATUS_REASONS = {
    401: ErrorReason.UNAUTHORIZED,
    403: ErrorReason.FORBIDDEN,
    409: ErrorReason.CONFLICT,
    422: ErrorReason.INVALID,
    429: ErrorReason.TOO_MANY_REQUESTS,
}


def _api_message(error: ApiException) -> str:
    """The apiserver's own explanation (a Status object's message), when it sent one."""
    try:
        body = json.loads(error.body) if error.body else None
    except (ValueError, TypeError):
        return ""
    message = body.get("message") if isinstance(body, dict) else None
    return f": {message[:300]}" if isinstance(message, str) and message else ""


def _api_failure(error: ApiException, what: str) -> KubeError:
    status = error.status or 0
    if status == 404:
        return NotFound(ErrorReason.NOT_FOUND, f"{what} not found")
    if status == 0:  # rest.py's own: a TLS failure, or a request it could not build
        text = str(error.reason or "")
        tls = text.startswith("SSLError")
        reason = ErrorReason.TLS_ERROR if tls else ErrorReason.CLIENT_ERROR
        return KubeError(reason, f"{what}: {' '.join(text.split())[:300]}")
    reason = _STATUS_REASONS.get(status, ErrorReason.API_ERROR)
    said = f"HTTP {status} {error.reason}{_api_message(error)}"
    if reason is ErrorReason.FORBIDDEN:
        return KubeError(reason, f"not allowed to access {what} ({said})")
    return KubeError(reason, f"{what}: {said}")


def _transport_reason(error: BaseException) -> ErrorReason:
    """Which failure a non-API exception is; the order matters (see urllib3's hierarchy)."""
    if isinstance(error, u3.MaxRetryError) and error.reason is not None:
        return _transport_reason(error.reason)
    if isinstance(error, u3.NewConnectionError):  # a subclass of ConnectTimeoutError
        return ErrorReason.UNREACHABLE
    if isinstance(error, u3.TimeoutError | TimeoutError):
        return ErrorReason.TIMEOUT
    if isinstance(error, u3.SSLError | ssl.SSLError):
        return ErrorReason.TLS_ERROR
    if isinstance(error, u3.LocationValueError | OpenApiException):
        return ErrorReason.CLIENT_ERROR  # our configuration or arguments, not the server
    if isinstance(error, u3.DecodeError | u3.HeaderParsingError | ValueError):
        return ErrorReason.BAD_RESPONSE  # json.JSONDecodeError, a model's validation
    if isinstance(error, u3.HTTPError | OSError):
        return ErrorReason.UNREACHABLE  # ProtocolError, IncompleteRead, refused, reset
    return ErrorReason.CLIENT_ERROR


_unexpected_logged: set[type[BaseException]] = set()


def failure(error: Exception, what: str) -> KubeError:
    """`error`, raised by a call about `what`, as the KubeError callers handle."""
    if isinstance(error, KubeError):
        return error
    if isinstance(error, AttributeError) and isinstance(error.__context__, ApiException):
        error = error.__context__  # api_client.py decodes a None body of rest.py's TLS error
    if isinstance(error, ApiException):
        return _api_failure(error, what)
    reason = _transport_reason(error)
    if reason is ErrorReason.CLIENT_ERROR and type(error) not in _unexpected_logged:
        _unexpected_logged.add(type(error))  # a bug more likely than an outage: once each
        log.warning("unexpected %s from the Kubernetes client about %s", type(error).__name__,
                    what, exc_info=error)
    detail = error.reason if isinstance(error, u3.MaxRetryError) and error.reason else error
    text = " ".join(str(detail).split()) or type(detail).__name__
    return KubeError(reason, f"{what}: {type(detail).__name__}: {text[:300]}")


def _bad_response(what: str, missing: str) -> KubeError:
    return KubeError(ErrorReason.BAD_RESPONSE, f"{what}: the answer has no {missing}")


class KubeClient:
    """Thin async wrappers over the calls the operator makes, with errors it can name.

    `request_timeout` is (connect, read) seconds for every request.
    """

    def __init__(
        self,
        api_client: k8s.ApiClient,
        request_timeout: tuple[float, float] = DEFAULT_REQUEST_TIMEOUT,
    ) -> None:
        self._apps = k8s.AppsV1Api(api_client)
        self._core = k8s.CoreV1Api(api_client)
        self._custom = k8s.CustomObjectsApi(api_client)
        self._coordination = k8s.CoordinationV1Api(api_client)
        self._autoscaling = k8s.AutoscalingV2Api(api_client)
        self._api_client = api_client
        self._timeout = request_timeout
        self._discovery: dict[str, tuple[float, dict[str, _Resource]]] = {}

    async def _call(
        self,
        what: str,
        call: Callable[..., Any],
        *args: Any,
        convert: Callable[[Any], Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run `call` in a thread with the timeout; `convert` the answer there too.

        Converting inside the same guard means a malformed answer (a model with no
        metadata, a string where JSON was expected) is a KubeError like any other.
        """

        def run() -> Any:
            answer = call(*args, _request_timeout=self._timeout, **kwargs)
            return convert(answer) if convert is not None else answer

        try:
            return await asyncio.to_thread(run)
        except Exception as error:
            raise failure(error, what) from None

    async def read_replicas(self, namespace: str, target: ScaleTargetRef) -> int:
        """The target's desired replica count, read from its `/scale` subresource."""
        replicas, _ = await self._read_scale(namespace, target)
        return replicas

    async def read_selector(self, namespace: str, target: ScaleTargetRef) -> str:
        """The label selector of the target's pods, from its `/scale` status (string form)."""
        _, selector = await self._read_scale(namespace, target)
        if not selector:
            raise KubeError(
                ErrorReason.NO_SELECTOR,
                f"{target.kind} {namespace}/{target.name}: its /scale reports no pod selector",
            )
        return selector

    async def list_pods(self, namespace: str, selector: str) -> list[Pod]:
        """The pods matching `selector`, reduced to what matching and marking need."""

        def pods(listing: Any) -> list[Pod]:
            found: list[Pod] = []
            for pod in listing.items or ():
                status = pod.status
                if status is not None and status.phase in _FINISHED:
                    continue  # no replica any more, and its podIP may be a live pod's now
                annotations = pod.metadata.annotations or {}
                ip = node_ip = None
                ips: list[str] = []
                if status is not None:
                    ip, node_ip = status.pod_ip or None, status.host_ip or None
                    ips = [entry.ip for entry in status.pod_ips or () if entry and entry.ip]
                if ip is None and pod.spec is not None and pod.spec.host_network:
                    ip = node_ip  # its node's, known once it is scheduled
                found.append(Pod(
                    name=pod.metadata.name,
                    ip=ip,
                    deleting=pod.metadata.deletion_timestamp is not None,
                    deletion_cost=annotations.get(DELETION_COST),
                    marked_by=annotations.get(MARKED_BY),
                    other_ips=tuple(other for other in ips if other != ip),
                    node_ip=node_ip,
                    owner=_controller(pod.metadata.owner_references),
                    scheduled=bool(pod.spec is not None and pod.spec.node_name),
                    phase=None if status is None else status.phase,
                    ready=_ready(status),
                ))
            return found

        result: list[Pod] = await self._call(
            f"pods in {namespace} matching {selector!r}", self._core.list_namespaced_pod,
            namespace, label_selector=selector, convert=pods,
        )
        return result

    async def annotate_pod(
        self, namespace: str, name: str, annotations: Mapping[str, str | None]
    ) -> None:
        """Merge-patch a pod's annotations (None removes one)."""
        body = {"metadata": {"annotations": dict(annotations)}}
        await self._call(
            f"Pod {namespace}/{name}", _discarding_answer, self._core.patch_namespaced_pod,
            name, namespace, body, _content_type="application/merge-patch+json",
        )

    async def scale(self, namespace: str, target: ScaleTargetRef, replicas: int) -> None:
        """Set the target's replica count through `/scale` (works for any scalable kind)."""
        what = f"{target.kind} {namespace}/{target.name}"
        body = {"spec": {"replicas": replicas}}
        apps = _APPS_SCALE.get(target.kind) if _group(target) == "apps" else None
        if apps is not None:
            await self._call(
                what, _discarding_answer, getattr(self._apps, apps[1]), target.name, namespace,
                body,
            )
            return
        group, version, plural = await self._custom_scale(namespace, target)
        await self._call(
            what, _discarding_answer, self._custom.patch_namespaced_custom_object_scale,
            group, version, namespace, plural, target.name, body,
        )

    async def _read_scale(self, namespace: str, target: ScaleTargetRef) -> tuple[int, str | None]:
        """(spec.replicas, status.selector) of the target's `/scale`."""
        what = f"{target.kind} {namespace}/{target.name}"
        apps = _APPS_SCALE.get(target.kind) if _group(target) == "apps" else None
        if apps is not None:

            def typed(scale: Any) -> tuple[int, str | None]:
                if scale.metadata is None or scale.spec is None:
                    raise _bad_response(what, "/scale spec")
                selector = scale.status.selector if scale.status is not None else None
                return int(scale.spec.replicas or 0), selector

            result: tuple[int, str | None] = await self._call(
                what, getattr(self._apps, apps[0]), target.name, namespace, convert=typed
            )
            return result

        def untyped(scale: Any) -> tuple[int, str | None]:
            if not isinstance(scale, dict) or not isinstance(scale.get("spec"), dict):
                raise _bad_response(what, "/scale spec")
            status = scale.get("status")
            selector = status.get("selector") if isinstance(status, dict) else None
            return int(scale["spec"].get("replicas") or 0), (
                selector if isinstance(selector, str) else None
            )

        group, version, plural = await self._custom_scale(namespace, target)
        result = await self._call(
            what, self._custom.get_namespaced_custom_object_scale,
            group, version, namespace, plural, target.name, convert=untyped,
        )
        return result

    async def _custom_scale(
        self, namespace: str, target: ScaleTargetRef
    ) -> tuple[str, str, str]:
        """(group, version, plural) of a target served with a `/scale` subresource."""
        what = f"{target.kind} {namespace}/{target.name}"
        group, _, version = target.api_version.rpartition("/")
        if not group:
            raise KubeError(
                ErrorReason.UNSUPPORTED_TARGET,
                f"{what} has no /scale subresource the operator uses: core ({target.api_version})"
                " kinds are not scale targets; point scaleTargetRef at a Deployment",
            )
        resource = await self._resource(target.api_version, target.kind)
        if not resource.scalable:
            raise KubeError(
                ErrorReason.UNSUPPORTED_TARGET,
                f"{what} has no /scale subresource ({target.api_version} serves "
                f"{resource.plural} without {resource.plural}/scale): it cannot be scaled",
            )
        return group, version, resource.plural

    async def _resource(self, api_version: str, kind: str) -> _Resource:
        """A kind's plural and whether it has /scale, from discovery (cached per version)."""
        cached = self._discovery.get(api_version)
        if cached is not None:
            fetched_at, kinds = cached
            known = kinds.get(kind)
            fresh = time.monotonic() - fetched_at < DISCOVERY_RETRY_SECONDS
            if (known is not None and known.scalable) or fresh:
                if known is None:
                    raise NotFound(ErrorReason.NOT_FOUND,
                                   f"kind {kind} is not served by {api_version}")
                return known
        kinds = await self._call(
            f"API group version {api_version}", self._api_client.call_api,
            f"/apis/{api_version}", "GET", response_types_map={200: "object"},
            auth_settings=["BearerToken"], _return_http_data_only=True,
            convert=lambda answer: _resources(answer, api_version),
        )
        self._discovery[api_version] = (time.monotonic(), kinds)
        if kind not in kinds:
            raise NotFound(ErrorReason.NOT_FOUND, f"kind {kind} is not served by {api_version}")
        resource: _Resource = kinds[kind]
        return resource

    async def read_secret(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's data, decoded. `get` by name only: the operator never lists Secrets."""
        what = f"Secret {namespace}/{name}"

        def decoded(secret: Any) -> dict[str, str]:
            if secret.metadata is None:
                raise _bad_response(what, "metadata")
            data: dict[str, str] = {}
            for key, value in (secret.data or {}).items():
                try:
                    data[key] = base64.b64decode(value).decode()
                except (ValueError, UnicodeDecodeError):
                    data[key] = ""  # not text: the parser reports the key as unusable
            return data

        result: dict[str, str] = await self._call(
            what, self._core.read_namespaced_secret, name, namespace, convert=decoded
        )
        return result

    async def patch_status(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        """Merge-patch a QueueScaler's status subresource."""
        await self._call(
            f"QueueScaler {namespace}/{name}", _discarding_answer,
            self._custom.patch_namespaced_custom_object_status,
            GROUP, VERSION, namespace, PLURAL, name, {"status": dict(status)},
        )

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
        await self._call(
            f"Event on {about.kind} {about.namespace}/{about.name}", _discarding_answer,
            self._core.create_namespaced_event, about.namespace, event,
        )

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        """The autoscaling/v2 HorizontalPodAutoscalers in `namespace` and what each scales.

        An HPA (KEDA makes one per ScaledObject) on a QueueScaler's target would fight it.
        """
        what = f"HorizontalPodAutoscalers in {namespace}"

        def targets(listing: Any) -> list[HpaTarget]:
            found: list[HpaTarget] = []
            for hpa in listing.items or ():
                ref = hpa.spec.scale_target_ref if hpa.spec is not None else None
                if hpa.metadata is None or ref is None:
                    raise _bad_response(what, "HPA metadata or scaleTargetRef")
                found.append(HpaTarget(hpa.metadata.name, ScaleTargetRef(
                    api_version=ref.api_version or "", kind=ref.kind, name=ref.name,
                )))
            return found

        result: list[HpaTarget] = await self._call(
            what, self._autoscaling.list_namespaced_horizontal_pod_autoscaler, namespace,
            convert=targets,
        )
        return result

    async def read_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        """The Lease, or None when it does not exist yet."""
        what = f"Lease {namespace}/{name}"
        try:
            result: LeaseRecord = await self._call(
                what, self._coordination.read_namespaced_lease, name, namespace,
                convert=lambda lease: _lease_record(lease, what),
            )
        except NotFound:
            return None
        return result

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
        what = f"Lease {namespace}/{name}"
        try:
            if seen is None:
                await self._call(what, _discarding_answer,
                                 self._coordination.create_namespaced_lease, namespace, lease)
            else:
                await self._call(what, _discarding_answer,
                                 self._coordination.replace_namespaced_lease, name, namespace,
                                 lease)
        except KubeError as error:
            if error.reason == ErrorReason.CONFLICT:
                raise KubeError(ErrorReason.CONFLICT, f"{what} was taken") from None
            raise

    async def release_lease(self, namespace: str, name: str, holder: str) -> None:
        """Give the Lease up (only if still ours), so a standby need not wait for expiry."""
        seen = await self.read_lease(namespace, name)
        if seen is None or seen.holder != holder:
            return
        body = {
            "metadata": {"resourceVersion": seen.resource_version},
            "spec": {"holderIdentity": None, "renewTime": None},
        }
        await self._call(
            f"Lease {namespace}/{name}", _discarding_answer,
            self._coordination.patch_namespaced_lease, name, namespace, body,
        )


def _group(target: ScaleTargetRef) -> str:
    return target.api_version.rpartition("/")[0]


def _resources(answer: Any, api_version: str) -> dict[str, _Resource]:
    """Kind -> resource from an APIResourceList, noting which have a `/scale` subresource."""
    resources = answer.get("resources") if isinstance(answer, dict) else None
    if not isinstance(resources, list):
        raise _bad_response(f"API group version {api_version}", "resource list")
    names = {r.get("name") for r in resources if isinstance(r, dict)}
    kinds: dict[str, _Resource] = {}
    for resource in resources:
        plural = resource.get("name", "/") if isinstance(resource, dict) else "/"
        if isinstance(plural, str) and "/" not in plural and resource.get("kind"):
            kinds.setdefault(resource["kind"], _Resource(plural, f"{plural}/scale" in names))
    return kinds


def _lease_record(lease: Any, what: str) -> LeaseRecord:
    """A Lease as LeaseRecord; an answer without a resourceVersion is refused.

    Writing back a record with no resourceVersion would replace the Lease blindly.
    """
    if lease.metadata is None or not lease.metadata.resource_version:
        raise _bad_response(what, "resourceVersion")
    spec = lease.spec or k8s.V1LeaseSpec()
    renewed = spec.renew_time or spec.acquire_time
    return LeaseRecord(
        holder=spec.holder_identity,
        renewed_at=renewed.timestamp() if renewed is not None else None,
        duration_seconds=spec.lease_duration_seconds or 15,
        resource_version=lease.metadata.resource_version,
        transitions=spec.lease_transitions or 0,
        acquired_at=spec.acquire_time,
    )
