"""KubeClient over a fake transport: every call has a timeout, every failure is a KubeError.

The fake stands where urllib3's pool manager stands, under the real kubernetes ApiClient, so
the client's own error handling (rest.py turning an SSLError into ApiException(0), the
deserializer swallowing bad JSON) is what these tests go through.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import pytest
import urllib3
from kubernetes import client as k8s
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from queuescaler.core.spec import ScaleTargetRef
from queuescaler.kube import client as kube_client
from queuescaler.kube.client import KubeClient, KubeError, LeaseRecord, ObjectRef

pytestmark = pytest.mark.unit

NS = "jobs"
CONDITION_REASON = re.compile(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?")
"""metav1.Condition's validation of `reason`."""
CAMEL_CASE = re.compile(r"(?:[A-Z][a-z0-9]+)+")

DEPLOYMENT = ScaleTargetRef(api_version="apps/v1", kind="Deployment", name="workers")
POOL = ScaleTargetRef(api_version="pools.example.io/v1", kind="WorkerPool", name="pool")
DAEMONSET = ScaleTargetRef(api_version="apps/v1", kind="DaemonSet", name="agents")
UNSCALABLE_POOL = ScaleTargetRef(api_version="pools.example.io/v1", kind="FixedPool", name="f")
POD = ScaleTargetRef(api_version="v1", kind="Pod", name="lonely")

SCALE = {
    "apiVersion": "autoscaling/v1", "kind": "Scale",
    "metadata": {"name": "workers", "namespace": NS, "resourceVersion": "3"},
    "spec": {"replicas": 2}, "status": {"replicas": 2, "selector": "app=workers"},
}
LEASE = {
    "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
    "metadata": {"name": "queuescaler", "namespace": NS, "resourceVersion": "7"},
    "spec": {"holderIdentity": "me", "leaseDurationSeconds": 15, "leaseTransitions": 1,
             "renewTime": "2026-01-01T00:00:00.000000Z",
             "acquireTime": "2026-01-01T00:00:00.000000Z"},
}
DISCOVERY = {
    "/apis/pools.example.io/v1": [
        {"name": "workerpools", "kind": "WorkerPool", "namespaced": True},
        {"name": "workerpools/scale", "kind": "Scale", "namespaced": True},
        {"name": "workerpools/status", "kind": "WorkerPool", "namespaced": True},
        {"name": "fixedpools", "kind": "FixedPool", "namespaced": True},
        {"name": "fixedpools/status", "kind": "FixedPool", "namespaced": True},
    ],
    "/apis/apps/v1": [
        {"name": "daemonsets", "kind": "DaemonSet", "namespaced": True},
        {"name": "daemonsets/status", "kind": "DaemonSet", "namespaced": True},
        {"name": "deployments", "kind": "Deployment", "namespaced": True},
        {"name": "deployments/scale", "kind": "Scale", "namespaced": True},
    ],
}
SCALABLE = {"deployments", "statefulsets", "replicasets", "workerpools"}
"""The plurals served with a /scale subresource: any other /scale path is a 404."""
HPAS = {
    "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscalerList",
    "metadata": {"resourceVersion": "9"},
    "items": [
        {"metadata": {"name": "cpu", "namespace": NS},
         "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "workers"},
                  "minReplicas": 1, "maxReplicas": 5}},
        {"metadata": {"name": "keda-hpa-pool", "namespace": NS},
         "spec": {"scaleTargetRef": {"apiVersion": "pools.example.io/v1", "kind": "WorkerPool",
                                     "name": "pool"},
                  "maxReplicas": 3}},
    ],
}


def respond(body: Any, status: int = 200) -> urllib3.HTTPResponse:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return urllib3.HTTPResponse(
        body=data, status=status, headers={"Content-Type": "application/json"},
        preload_content=False,
    )


def apiserver(method: str, url: str) -> urllib3.HTTPResponse:
    """Plausible answers to every call KubeClient makes."""
    path = urlsplit(url).path
    if path in DISCOVERY:
        return respond({"kind": "APIResourceList", "resources": DISCOVERY[path]})
    if path.endswith("/scale"):
        plural = path.split("/")[-3]
        return respond(SCALE) if plural in SCALABLE else respond(
            {"kind": "Status", "reason": "NotFound", "code": 404}, 404)
    if path.endswith("/pods"):
        return respond({"items": [{"metadata": {"name": "workers-1"},
                                   "status": {"podIP": "10.0.0.1"}}]})
    if "/leases" in path:
        return respond(LEASE)
    if path.endswith("/horizontalpodautoscalers"):
        return respond(HPAS)
    if "/secrets/" in path:
        return respond({"metadata": {"name": "broker"}, "data": {"amqpUrl": "YW1xcDovL2g="}})
    return respond({"metadata": {"name": "x"}})


@dataclass
class Sent:
    method: str
    path: str
    timeout: Any


class Transport:
    """In urllib3's pool manager's place: answers through `answer` (or raises what it returns)."""

    def __init__(
        self, answer: Callable[[str, str], urllib3.HTTPResponse | Exception] = apiserver
    ) -> None:
        self.answer = answer
        self.sent: list[Sent] = []

    def request(self, method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        self.sent.append(Sent(method, urlsplit(url).path, kwargs.get("timeout")))
        result = self.answer(method, url)
        if isinstance(result, Exception):
            raise result
        return result

    def clear(self) -> None:
        """ApiClient.close() calls this."""


def api_client(transport: Transport | None = None, host: str = "https://apiserver.test:6443"
               ) -> k8s.ApiClient:
    configuration = k8s.Configuration(host=host)
    configuration.api_key = {"authorization": "Bearer t0ken"}
    api = k8s.ApiClient(configuration)
    if transport is not None:
        api.rest_client.pool_manager = transport
    return api


@pytest.fixture
def transport() -> Transport:
    return Transport()


@pytest.fixture
def api(transport: Transport) -> Iterator[k8s.ApiClient]:
    api = api_client(transport)
    yield api
    api.close()


Call = Callable[[KubeClient], Awaitable[Any]]
SEEN = LeaseRecord(holder="me", renewed_at=0.0, duration_seconds=15, resource_version="7",
                   transitions=1)
EVERY_CALL = [
    pytest.param(lambda k: k.read_replicas(NS, DEPLOYMENT), id="read_replicas-deployment"),
    pytest.param(lambda k: k.read_replicas(NS, POOL), id="read_replicas-custom"),
    pytest.param(lambda k: k.read_selector(NS, DEPLOYMENT), id="read_selector"),
    pytest.param(lambda k: k.scale(NS, DEPLOYMENT, 3), id="scale-deployment"),
    pytest.param(lambda k: k.scale(NS, POOL, 3), id="scale-custom"),
    pytest.param(lambda k: k.list_pods(NS, "app=workers"), id="list_pods"),
    pytest.param(lambda k: k.annotate_pod(NS, "workers-1", {"a": "b"}), id="annotate_pod"),
    pytest.param(lambda k: k.read_secret(NS, "broker"), id="read_secret"),
    pytest.param(lambda k: k.patch_status(NS, "qs", {"replicas": 1}), id="patch_status"),
    pytest.param(
        lambda k: k.emit_event(ObjectRef("apps/v1", "Deployment", NS, "workers"), "Normal",
                               "Scaled", "1 -> 2"),
        id="emit_event",
    ),
    pytest.param(lambda k: k.read_lease(NS, "queuescaler"), id="read_lease"),
    pytest.param(lambda k: k.write_lease(NS, "queuescaler", "me", 15, None),
                 id="write_lease-create"),
    pytest.param(lambda k: k.write_lease(NS, "queuescaler", "me", 15, SEEN),
                 id="write_lease-replace"),
    pytest.param(lambda k: k.release_lease(NS, "queuescaler", "me"), id="release_lease"),
    pytest.param(lambda k: k.list_hpas(NS), id="list_hpas"),
]
READING_CALLS = [
    p for p in EVERY_CALL
    if p.id in {"read_replicas-deployment", "read_replicas-custom", "read_selector",
                "list_pods", "read_secret", "read_lease", "list_hpas"}
]


@pytest.mark.parametrize("call", EVERY_CALL)
async def test_every_call_has_the_default_connect_and_read_timeout(
    call: Call, transport: Transport, api: k8s.ApiClient
) -> None:
    await call(KubeClient(api))

    assert transport.sent
    assert [(s.path, s.timeout.connect_timeout, s.timeout.read_timeout)
            for s in transport.sent if isinstance(s.timeout, urllib3.Timeout)
            ] == [(s.path, 5, 15) for s in transport.sent]


async def test_the_timeout_is_set_by_the_constructor(
    transport: Transport, api: k8s.ApiClient
) -> None:
    await KubeClient(api, request_timeout=(1.5, 4.0)).read_replicas(NS, POOL)

    assert {(s.timeout.connect_timeout, s.timeout.read_timeout) for s in transport.sent} == {
        (1.5, 4.0)
    }


CREDENTIALED = "https://admin:hunter2@apiserver.test:6443"
NO_POOL: Any = None
"""urllib3's errors name the pool or connection that raised them; these come from none."""
FAULTS = [
    pytest.param(
        MaxRetryError(NO_POOL, f"{CREDENTIALED}/api/v1/secrets", NewConnectionError(
            NO_POOL, "Failed to establish a new connection: [Errno 111] Connection refused")),
        "Unreachable", "Connection refused", id="connection-refused-after-retries",
    ),
    pytest.param(
        MaxRetryError(NO_POOL, "/api", ConnectTimeoutError(NO_POOL, "timed out")),
        "Timeout", "timed out", id="connect-timeout-after-retries",
    ),
    pytest.param(
        ReadTimeoutError(NO_POOL, "/api", "Read timed out. (read timeout=15)"),
        "Timeout", "Read timed out", id="read-timeout",
    ),
    pytest.param(
        ProtocolError("Connection aborted.", ConnectionResetError(104, "reset by peer")),
        "Unreachable", "Connection aborted", id="connection-reset-mid-response",
    ),
    pytest.param(
        SSLError("certificate verify failed: self-signed certificate"),
        "TlsError", "certificate verify failed", id="tls-handshake",
    ),
    pytest.param(
        MaxRetryError(NO_POOL, "/api", SSLError("wrong version number")),
        "TlsError", "wrong version number", id="tls-after-retries",
    ),
    pytest.param(OSError(24, "Too many open files"), "Unreachable", "Too many open files",
                 id="os-error"),
    pytest.param(TimeoutError("timed out"), "Timeout", "timed out", id="socket-timeout"),
    pytest.param(json.JSONDecodeError("Expecting value", "<html>", 0), "BadResponse",
                 "Expecting value", id="json-decode-error"),
    pytest.param(RuntimeError("no more threads"), "ClientError", "no more threads",
                 id="anything-else"),
    pytest.param(respond({"message": "boom"}, 500), "ApiError", "500", id="http-500"),
    pytest.param(respond({"message": "no"}, 401), "Unauthorized", "401", id="http-401"),
    pytest.param(respond({"message": "no"}, 403), "Forbidden", "not allowed", id="http-403"),
    pytest.param(respond({"message": "slow down"}, 429), "TooManyRequests", "429",
                 id="http-429"),
]


@pytest.mark.parametrize(("fault", "reason", "says"), FAULTS)
async def test_a_failure_of_any_class_is_a_kube_error_with_a_condition_ready_reason(
    fault: Exception | urllib3.HTTPResponse, reason: str, says: str
) -> None:
    api = api_client(Transport(lambda method, url: fault))

    with pytest.raises(KubeError) as raised:
        await KubeClient(api).read_secret(NS, "broker")

    error = raised.value
    assert (error.reason, says in error.message) == (reason, True), error.message
    assert "Secret jobs/broker" in error.message
    assert CAMEL_CASE.fullmatch(error.reason) and CONDITION_REASON.fullmatch(error.reason)
    assert "hunter2" not in error.message


@pytest.mark.parametrize("call", EVERY_CALL)
async def test_every_call_turns_a_dropped_connection_into_a_kube_error(call: Call) -> None:
    dropped = ProtocolError("Connection aborted.", ConnectionResetError(104, "reset"))
    api = api_client(Transport(lambda method, url: dropped))

    with pytest.raises(KubeError) as raised:
        await call(KubeClient(api))

    assert raised.value.reason == "Unreachable"


@pytest.mark.parametrize("call", READING_CALLS)
async def test_a_garbled_answer_is_a_bad_response_not_a_crash_or_an_empty_object(
    call: Call
) -> None:
    api = api_client(Transport(lambda method, url: respond(b"<html>bad gateway</html>")))

    with pytest.raises(KubeError) as raised:
        await call(KubeClient(api))

    assert raised.value.reason == "BadResponse"


def test_every_reason_is_ready_for_a_condition_as_it_is() -> None:
    assert [r.value for r in kube_client.ErrorReason if not CAMEL_CASE.fullmatch(r.value)] == []
    assert all(CONDITION_REASON.fullmatch(r.value) for r in kube_client.ErrorReason)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_refused_connection_on_a_real_socket_is_unreachable() -> None:
    api = api_client(host=f"http://127.0.0.1:{closed_port()}")

    with pytest.raises(KubeError) as raised:
        await KubeClient(api).read_lease(NS, "queuescaler")

    assert raised.value.reason == "Unreachable", raised.value.message
    api.close()


@pytest.mark.timeout(30)
async def test_a_server_that_never_answers_times_out_within_the_read_timeout() -> None:
    """The kernel accepts the connection into the backlog; nobody ever reads the request."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        api = api_client(host=f"http://127.0.0.1:{silent.getsockname()[1]}")
        started = time.monotonic()

        with pytest.raises(KubeError) as raised:
            await asyncio.wait_for(
                KubeClient(api, request_timeout=(0.5, 0.5)).patch_status(NS, "qs", {}), 10
            )

        assert raised.value.reason == "Timeout", raised.value.message
        assert time.monotonic() - started < 5
        api.close()


SCALE_CALLS = [
    pytest.param(lambda k, t: k.read_replicas(NS, t), id="read_replicas"),
    pytest.param(lambda k, t: k.read_selector(NS, t), id="read_selector"),
    pytest.param(lambda k, t: k.scale(NS, t, 2), id="scale"),
]


@pytest.mark.parametrize("call", SCALE_CALLS)
@pytest.mark.parametrize(
    ("target", "says"),
    [
        pytest.param(DAEMONSET, "DaemonSet jobs/agents has no /scale subresource",
                     id="daemonset"),
        pytest.param(UNSCALABLE_POOL, "FixedPool jobs/f has no /scale subresource",
                     id="custom-kind-without-scale"),
        pytest.param(POD, "Pod jobs/lonely has no /scale subresource", id="core-kind"),
    ],
)
async def test_a_kind_without_scale_is_an_unsupported_target_not_a_missing_one(
    call: Callable[[KubeClient, ScaleTargetRef], Awaitable[Any]], target: ScaleTargetRef,
    says: str, api: k8s.ApiClient,
) -> None:
    with pytest.raises(KubeError) as raised:
        await call(KubeClient(api), target)

    assert (raised.value.reason, raised.value.message.startswith(says)) == (
        "UnsupportedTarget", True), raised.value.message


async def test_discovery_is_asked_once_per_api_version(
    transport: Transport, api: k8s.ApiClient
) -> None:
    kube = KubeClient(api)
    await kube.read_replicas(NS, POOL)
    await kube.scale(NS, POOL, 4)
    with pytest.raises(KubeError):
        await kube.read_replicas(NS, UNSCALABLE_POOL)

    assert [s.path for s in transport.sent].count("/apis/pools.example.io/v1") == 1


async def test_the_hpas_of_a_namespace_name_what_they_scale(
    transport: Transport, api: k8s.ApiClient
) -> None:
    hpas = await KubeClient(api).list_hpas(NS)

    assert hpas == [
        ("cpu", ScaleTargetRef("apps/v1", "Deployment", "workers")),
        ("keda-hpa-pool", ScaleTargetRef("pools.example.io/v1", "WorkerPool", "pool")),
    ]
    assert [s.path for s in transport.sent] == [
        "/apis/autoscaling/v2/namespaces/jobs/horizontalpodautoscalers"]


async def test_pods_no_controller_counts_are_not_listed_and_every_address_is() -> None:
    """Review 49: an evicted pod stays listed, Failed, with a podIP the network may have
    given to a live worker since: listed as live, it took that worker's busy connection.
    A dual-stack pod's second address is one its connections may come from, and a pod on
    its node's network has its node's before the kubelet reports a podIP."""
    both = [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]
    items = [
        {"metadata": {"name": "w-0"},
         "status": {"phase": "Running", "podIP": "10.0.0.1", "podIPs": both,
                    "hostIP": "192.168.0.2"}},
        {"metadata": {"name": "w-old"},
         "status": {"phase": "Failed", "podIP": "10.0.0.2"}},
        {"metadata": {"name": "w-done"}, "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "w-new"}, "status": {"phase": "Pending"}},
        {"metadata": {"name": "w-host"}, "spec": {"hostNetwork": True, "containers": []},
         "status": {"phase": "Pending", "hostIP": "192.168.0.1"}},
    ]
    api = api_client(Transport(lambda method, url: respond({"items": items})))
    try:
        pods = await KubeClient(api).list_pods(NS, "app=workers")
    finally:
        api.close()
    assert [(p.name, p.addresses) for p in pods] == [
        ("w-0", frozenset({"10.0.0.1", "fd00::1"})), ("w-new", frozenset()),
        ("w-host", frozenset({"192.168.0.1"}))]
    assert [p.node_ip for p in pods] == ["192.168.0.2", None, "192.168.0.1"]


async def test_a_pods_owner_and_rank_for_removal_are_read() -> None:
    """Mid-rollout a Deployment's pods have two ReplicaSets: each pod's controller is the
    ownerReference marked as such, by kind and name; a reference that does not control it is none.
    Its node, phase and Ready condition rank it for removal before its cost does."""
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "w-5d4f", "uid": "u-1",
          "controller": True}
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "keep", "uid": "u-2"}
    ready = [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}]
    items = [
        {"metadata": {"name": "w-0", "ownerReferences": [other, rs]},
         "spec": {"nodeName": "n-1", "containers": []},
         "status": {"phase": "Running", "conditions": ready}},
        {"metadata": {"name": "w-1", "ownerReferences": [other]},
         "spec": {"nodeName": "n-1", "containers": []},
         "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "False"}]}},
        {"metadata": {"name": "w-2"}, "status": {"phase": "Pending"}},
    ]
    api = api_client(Transport(lambda method, url: respond({"items": items})))
    try:
        pods = await KubeClient(api).list_pods(NS, "app=workers")
    finally:
        api.close()
    assert [p.owner for p in pods] == ["ReplicaSet/w-5d4f", None, None]
    assert [(p.scheduled, p.phase, p.ready) for p in pods] == [
        (True, "Running", True), (True, "Running", False), (False, "Pending", False)]
