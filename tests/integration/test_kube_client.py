"""KubeClient against the real apiserver: /scale of kinds other than Deployment, HPAs, Leases.

A Deployment's replicas come from the watch cache; every other target (a StatefulSet, an Argo
Rollout, any CRD with a /scale subresource) is read and scaled through /scale on each tick,
after a discovery lookup of its plural. These tests create such a CRD here, so the path runs on
every test run rather than only when a generated spec happens to reach it; and one without
/scale, which must read as "cannot be scaled", not as "not found".
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from queuescaler.core.spec import ScaleTargetRef
from queuescaler.kube.client import HpaTarget, KubeClient, KubeError, NotFound
from queuescaler.leader import Elector, LeaseTiming
from queuescaler_testkit.env import TestEnv

pytestmark = pytest.mark.integration

GROUP = "pools.queuescaler-test.io"
VERSION = "v1alpha1"
KIND = "WorkerPool"
PLURAL = "workerpools"

WORKER_POOL_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{PLURAL}.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"kind": KIND, "plural": PLURAL, "singular": "workerpool"},
        "versions": [{
            "name": VERSION,
            "served": True,
            "storage": True,
            "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {
                    "spec": {"type": "object", "properties": {
                        "replicas": {"type": "integer", "minimum": 0},
                        "selector": {"type": "string"},
                    }},
                    "status": {"type": "object", "properties": {
                        "replicas": {"type": "integer"},
                    }},
                },
            }},
            "subresources": {"scale": {
                "specReplicasPath": ".spec.replicas",
                "statusReplicasPath": ".status.replicas",
                "labelSelectorPath": ".spec.selector",
            }},
        }],
    },
}


FIXED_KIND = "FixedPool"
FIXED_PLURAL = "fixedpools"
FIXED_POOL_CRD: dict[str, Any] = copy.deepcopy(WORKER_POOL_CRD)
FIXED_POOL_CRD["metadata"]["name"] = f"{FIXED_PLURAL}.{GROUP}"
FIXED_POOL_CRD["spec"]["names"] = {"kind": FIXED_KIND, "plural": FIXED_PLURAL,
                                   "singular": "fixedpool"}
del FIXED_POOL_CRD["spec"]["versions"][0]["subresources"]


@pytest.fixture(scope="module")
def worker_pool_crd(testenv: TestEnv) -> None:
    """A CRD with a /scale subresource, like an Argo Rollout's, and one without (idempotent)."""
    for crd, plural in ((WORKER_POOL_CRD, PLURAL), (FIXED_POOL_CRD, FIXED_PLURAL)):
        testenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                        input=yaml.safe_dump(crd))
        testenv.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                        f"crd/{plural}.{GROUP}")


@pytest.fixture
def api(testenv: TestEnv) -> Iterator[client.ApiClient]:
    api_client = config.new_client_from_config(config_file=str(testenv.kubeconfig))
    yield api_client
    api_client.close()


@pytest.fixture
def kube(api: client.ApiClient) -> KubeClient:
    return KubeClient(api)


def _target(name: str, kind: str = KIND, api_version: str = f"{GROUP}/{VERSION}") -> ScaleTargetRef:
    return ScaleTargetRef(api_version=api_version, kind=kind, name=name)


def _create_worker_pool(testenv: TestEnv, namespace: str, name: str, replicas: int) -> None:
    manifest = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND,
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas, "selector": f"app={name}"}}
    testenv.kubectl("create", "-f", "-", input=yaml.safe_dump(manifest))


async def test_a_custom_kind_is_read_and_scaled_through_its_scale_subresource(
    testenv: TestEnv, namespace: str, worker_pool_crd: None, kube: KubeClient,
    api: client.ApiClient,
) -> None:
    _create_worker_pool(testenv, namespace, "pool", replicas=1)
    target = _target("pool")

    before = await kube.read_replicas(namespace, target)
    await kube.scale(namespace, target, 3)
    after = await kube.read_replicas(namespace, target)

    assert (before, after) == (1, 3)
    assert await kube.read_selector(namespace, target) == "app=pool"
    stored = client.CustomObjectsApi(api).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pool")
    assert stored["spec"]["replicas"] == 3


async def test_a_statefulset_is_read_and_scaled_through_the_apps_scale_subresource(
    namespace: str, kube: KubeClient, api: client.ApiClient
) -> None:
    labels = {"app": "stateful"}
    client.AppsV1Api(api).create_namespaced_stateful_set(namespace, {
        "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "stateful"},
        "spec": {"replicas": 0, "serviceName": "stateful", "selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "w", "image": "worker:fake"}]}}},
    })
    target = _target("stateful", kind="StatefulSet", api_version="apps/v1")

    await kube.scale(namespace, target, 2)

    assert await kube.read_replicas(namespace, target) == 2
    assert await kube.read_selector(namespace, target) == "app=stateful"


@pytest.mark.parametrize(
    ("target", "reason", "named"),
    [
        pytest.param(_target("pool", kind="NoSuchKind"), "NotFound", "NoSuchKind",
                     id="unknown-kind"),
        pytest.param(_target("pool", api_version=f"{GROUP}/v9"), "NotFound", f"{GROUP}/v9",
                     id="unknown-version"),
        pytest.param(_target("absent"), "NotFound", "absent", id="absent-object"),
        pytest.param(_target("pod", kind="Pod", api_version="v1"), "UnsupportedTarget",
                     "Pod", id="core-kind"),
        pytest.param(_target("agents", kind="DaemonSet", api_version="apps/v1"),
                     "UnsupportedTarget", "DaemonSet", id="daemonset"),
        pytest.param(_target("once", kind="Job", api_version="batch/v1"),
                     "UnsupportedTarget", "Job", id="job"),
        pytest.param(_target("fixed", kind=FIXED_KIND), "UnsupportedTarget", FIXED_KIND,
                     id="custom-kind-without-scale"),
    ],
)
async def test_an_unusable_target_is_a_named_error_not_a_crash(
    namespace: str, worker_pool_crd: None, kube: KubeClient,
    target: ScaleTargetRef, reason: str, named: str,
) -> None:
    with pytest.raises(KubeError) as raised:
        await kube.read_replicas(namespace, target)
    assert (raised.value.reason, named in raised.value.message) == (reason, True), \
        raised.value.message


async def test_an_existing_daemonset_cannot_be_scaled_and_is_not_reported_missing(
    namespace: str, kube: KubeClient, api: client.ApiClient
) -> None:
    labels = {"app": "agents"}
    client.AppsV1Api(api).create_namespaced_daemon_set(namespace, {
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agents"},
        "spec": {"selector": {"matchLabels": labels},
                 "template": {"metadata": {"labels": labels},
                              "spec": {"containers": [{"name": "a", "image": "agent:fake"}]}}},
    })
    target = _target("agents", kind="DaemonSet", api_version="apps/v1")

    for call in (kube.read_replicas(namespace, target), kube.read_selector(namespace, target),
                 kube.scale(namespace, target, 2)):
        with pytest.raises(KubeError) as raised:
            await call
        assert not isinstance(raised.value, NotFound)
        assert raised.value.reason == "UnsupportedTarget"
        assert raised.value.message.startswith(
            f"DaemonSet {namespace}/agents has no /scale subresource"), raised.value.message


def _hpa(name: str, api_version: str, kind: str, target: str) -> dict[str, Any]:
    return {
        "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"apiVersion": api_version, "kind": kind, "name": target},
                 "minReplicas": 1, "maxReplicas": 4,
                 "metrics": [{"type": "Resource", "resource": {
                     "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80},
                 }}]},
    }


async def test_list_hpas_names_each_hpa_and_what_it_scales(
    namespace: str, kube: KubeClient, api: client.ApiClient
) -> None:
    assert await kube.list_hpas(namespace) == []
    autoscaling = client.AutoscalingV2Api(api)
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        namespace, _hpa("cpu", "apps/v1", "Deployment", "workers"))
    autoscaling.create_namespaced_horizontal_pod_autoscaler(
        namespace, _hpa("keda-hpa-pool", f"{GROUP}/{VERSION}", KIND, "pool"))

    hpas = await kube.list_hpas(namespace)

    assert sorted(hpas) == [
        HpaTarget("cpu", ScaleTargetRef("apps/v1", "Deployment", "workers")),
        HpaTarget("keda-hpa-pool", _target("pool")),
    ]


async def test_a_lease_is_created_renewed_refused_when_stale_and_released(
    namespace: str, kube: KubeClient
) -> None:
    assert await kube.read_lease(namespace, "lead") is None
    await kube.write_lease(namespace, "lead", "a", 15, None)
    first = await kube.read_lease(namespace, "lead")
    assert first is not None and first.holder == "a"

    await kube.write_lease(namespace, "lead", "a", 15, first)
    renewed = await kube.read_lease(namespace, "lead")
    assert renewed is not None and renewed.resource_version != first.resource_version

    with pytest.raises(KubeError) as stale:
        await kube.write_lease(namespace, "lead", "b", 15, first)
    assert stale.value.reason == "Conflict"

    await kube.release_lease(namespace, "lead", "a")
    released = await kube.read_lease(namespace, "lead")
    assert released is not None and not released.holder


async def test_two_electors_one_leads_and_a_release_hands_over_at_once(
    namespace: str, api: client.ApiClient
) -> None:
    timing = LeaseTiming(duration_seconds=5, renew_deadline_seconds=3.0, retry_seconds=0.2)
    changes: dict[str, list[bool]] = {"a": [], "b": []}
    stops = {who: asyncio.Event() for who in changes}
    electors = {who: Elector(KubeClient(api), namespace, "lead", who, timing,
                             on_change=changes[who].append) for who in changes}
    tasks = {who: asyncio.create_task(e.run(stops[who])) for who, e in electors.items()}
    try:
        async with asyncio.timeout(10):
            while not any(e.is_leader() for e in electors.values()):
                await asyncio.sleep(0.05)
        first = next(who for who, e in electors.items() if e.is_leader())
        second = "b" if first == "a" else "a"
        await asyncio.sleep(1.0)  # a few renewals: the standby must not take a live Lease
        assert not electors[second].is_leader()

        stops[first].set()
        await tasks[first]
        async with asyncio.timeout(timing.duration_seconds - 1):  # released: no expiry wait
            while not electors[second].is_leader():
                await asyncio.sleep(0.05)
    finally:
        for stop in stops.values():
            stop.set()
        await asyncio.gather(*tasks.values())

    assert changes[first] == [True, False]
    assert changes[second] == [True, False]
