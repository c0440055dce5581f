"""KubeClient against the real apiserver: /scale of kinds other than Deployment.

A Deployment's replicas come from the watch cache; every other target (a StatefulSet, an Argo
Rollout, any CRD with a /scale subresource) is read and scaled through /scale on each tick,
after a discovery lookup of its plural. These tests create such a CRD here, so the path runs on
every test run rather than only when a generated spec happens to reach it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from queuescaler.core.spec import ScaleTargetRef
from queuescaler.kube.client import KubeClient, KubeError
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


@pytest.fixture(scope="module")
def worker_pool_crd(testenv: TestEnv) -> None:
    """A CRD with a /scale subresource, like an Argo Rollout's (applied once, idempotent)."""
    testenv.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-",
                    input=yaml.safe_dump(WORKER_POOL_CRD))
    testenv.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    f"crd/{PLURAL}.{GROUP}")


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
        (_target("pool", kind="NoSuchKind"), "NotFound", "NoSuchKind"),
        (_target("pool", api_version=f"{GROUP}/v9"), "NotFound", f"{GROUP}/v9"),
        (_target("absent"), "NotFound", "absent"),
        (_target("pod", kind="Pod", api_version="v1"), "UnsupportedTarget", "Pod"),
    ],
    ids=["unknown-kind", "unknown-version", "absent-object", "core-kind"],
)
async def test_an_unusable_target_is_a_named_error_not_a_crash(
    namespace: str, worker_pool_crd: None, kube: KubeClient,
    target: ScaleTargetRef, reason: str, named: str,
) -> None:
    with pytest.raises(KubeError) as raised:
        await kube.read_replicas(namespace, target)
    assert (raised.value.reason, named in raised.value.message) == (reason, True), \
        raised.value.message
