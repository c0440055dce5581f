"""The Helm chart against the real local cluster: schemas, RBAC as the apiserver sees it, and
the operator running under the chart's ServiceAccount.

The chart is installed with `--skip-crds`: the QueueScaler CRD is cluster-scoped and shared
by every test of the session, and the `crd` fixture applies it server-side (so it is always
current), while helm only creates missing CRDs and never updates them. Each install
uses its own release name (ClusterRoles are named after the release) and `replicaCount=0`:
kwok's pods run nothing, so the operator runs here as a process under the chart's token.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from kubernetes import client as kube
from kubernetes import config as kube_config

from queuescaler_testkit.chart import CHART, Release, helm, install, uninstall
from queuescaler_testkit.env import CACHE, REPO, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SKIPPED_KINDS = ("ServiceMonitor", "PrometheusRule")
"""Prometheus Operator kinds: their CRDs are not in this cluster, so kubeconform has no schema."""

VALUE_SETS = [
    pytest.param({}, id="defaults"),
    pytest.param({"watchNamespaces": ["team-a", "team-b"]}, id="namespaced"),
    pytest.param(
        {
            "watchNamespaces": ["team-a"],
            "leaderElection": {"enabled": True, "leaseName": "queuescaler"},
            "replicaCount": 2,
            "extraScaleTargets": [{"apiGroup": "argoproj.io", "resources": ["rollouts"]}],
            "metrics": {"serviceMonitor": {"enabled": True}},
            "dashboard": {"enabled": True},
            "prometheusRule": {"enabled": True},
        },
        id="all-switches-on",
    ),
]


# --- kubeconform, with schemas generated from this apiserver -----------------------------------


@dataclass(frozen=True)
class Schemas:
    kubernetes_version: str
    directory: Path


@pytest.fixture(scope="module")
def schemas(testenv: TestEnv) -> Schemas:
    result = subprocess.run(
        [sys.executable, str(REPO / "hack" / "kubeconform-schemas.py"),
         "--kubeconfig", str(testenv.kubeconfig), "--kubectl", str(testenv.bin / "kubectl")],
        capture_output=True, text=True, timeout=300, check=False,
    )
    assert result.returncode == 0, result.stderr
    version, directory = result.stdout.split()
    return Schemas(version, Path(directory))


def kubeconform(testenv: TestEnv, schemas: Schemas, *args: str, input: str | None = None
                ) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(testenv.bin / "kubeconform"), "-strict", "-output", "json", "-verbose",
         "-kubernetes-version", schemas.kubernetes_version,
         "-schema-location", str(schemas.directory), "-skip", ",".join(SKIPPED_KINDS), *args],
        input=input, capture_output=True, text=True, timeout=120, check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    problems = [r for r in report["resources"] if r["status"] not in ("statusValid",
                                                                      "statusSkipped")]
    assert result.returncode == 0 and not problems, json.dumps(problems, indent=1)
    resources: list[dict[str, Any]] = report["resources"]
    return resources


def test_the_cluster_version_is_the_one_schemas_are_made_for(schemas: Schemas) -> None:
    assert schemas.kubernetes_version == "1.36.3"
    strict = schemas.directory / "v1.36.3-standalone-strict"
    assert (strict / "deployment-apps-v1.json").exists()
    assert (strict / "queuescaler-queuescaler-v1alpha1.json").exists()


@pytest.mark.parametrize("values", VALUE_SETS)
def test_every_rendered_manifest_is_valid_for_the_cluster(
    testenv: TestEnv, schemas: Schemas, values: dict[str, Any], tmp_path: Path
) -> None:
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    rendered = helm(testenv, "template", "qs", str(CHART), "--include-crds",
                    "--values", str(values_file)).stdout
    resources = kubeconform(testenv, schemas, "-", input=rendered)
    skipped = {r["kind"] for r in resources if r["status"] == "statusSkipped"}
    assert skipped <= set(SKIPPED_KINDS)
    assert {r["kind"] for r in resources if r["status"] == "statusValid"} >= {
        "CustomResourceDefinition", "Deployment", "ServiceAccount", "Service",
    }


def test_a_strict_schema_refuses_a_misspelt_field(
    testenv: TestEnv, schemas: Schemas
) -> None:
    """The schemas are not permissive: a typo in a securityContext is caught."""
    bad = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {
            "metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "image": "i",
                                     "securityContext": {"readOnlyRootFileSystem": True}}]},
        }},
    }
    with pytest.raises(AssertionError, match="readOnlyRootFileSystem"):
        kubeconform(testenv, schemas, "-", input=yaml.safe_dump(bad))


def test_the_examples_are_valid_for_the_cluster(testenv: TestEnv, schemas: Schemas) -> None:
    resources = kubeconform(testenv, schemas, str(REPO / "examples"))
    assert {r["kind"] for r in resources} >= {"QueueScaler", "Deployment", "Secret"}


# --- an installed chart: RBAC as the apiserver answers it --------------------------------------


Install = Callable[[dict[str, Any]], Release]
"""The `installed` fixture: values -> a release, uninstalled at teardown."""


@pytest.fixture
def other_namespace(testenv: TestEnv) -> Iterator[str]:
    name = f"chart-{uuid.uuid4().hex[:8]}"  # not t-*: the session operator must not act here
    testenv.kubectl("create", "namespace", name)
    yield name
    testenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def installed(
    testenv: TestEnv, crd: None, namespace: str, tmp_path: Path
) -> Iterator[Install]:
    releases: list[Release] = []

    def make(values: dict[str, Any]) -> Release:
        release = install(testenv, namespace, values, tmp_path)
        releases.append(release)
        return release

    yield make
    for release in releases:
        uninstall(testenv, release)



def can_i(testenv: TestEnv, release: Release, verb: str, resource: str, namespace: str | None,
          subresource: str | None = None) -> bool:
    args = ["auth", "can-i", verb, resource, "--as", release.user]
    args += ["--namespace", namespace] if namespace else ["--all-namespaces"]
    if subresource:
        args += ["--subresource", subresource]
    result = testenv.kubectl(*args, check=False)
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), f"kubectl {' '.join(args)}: {result.stderr}"
    return answer == "yes"


# (verb, resource, subresource, allowed); asked in a namespace the release does not live in.
CLUSTER_WIDE_TABLE = [
    pytest.param("list", "queuescalers.queuescaler.io", None, True, id="may-list-queuescalers"),
    pytest.param("watch", "queuescalers.queuescaler.io", None, True,
                 id="may-watch-queuescalers"),
    pytest.param("patch", "queuescalers.queuescaler.io", "status", True,
                 id="may-patch-queuescaler-status"),
    pytest.param("patch", "queuescalers.queuescaler.io", None, False,
                 id="may-not-patch-queuescaler-spec"),
    pytest.param("watch", "deployments.apps", None, True, id="may-watch-deployments"),
    pytest.param("patch", "deployments.apps", "scale", True, id="may-scale-deployments"),
    pytest.param("get", "statefulsets.apps", "scale", True, id="may-read-statefulset-scale"),
    pytest.param("patch", "replicasets.apps", "scale", True, id="may-scale-replicasets"),
    pytest.param("patch", "deployments.apps", None, False,
                 id="may-not-patch-deployments-the-object"),
    pytest.param("update", "deployments.apps", None, False, id="may-not-update-deployments"),
    pytest.param("delete", "deployments.apps", None, False, id="may-not-delete-deployments"),
    pytest.param("get", "secrets", None, True, id="may-get-secrets"),
    pytest.param("list", "secrets", None, False, id="may-not-list-secrets"),
    pytest.param("watch", "secrets", None, False, id="may-not-watch-secrets"),
    pytest.param("create", "events", None, True, id="may-create-events"),
    pytest.param("list", "pods", None, True, id="may-list-pods"),
    pytest.param("patch", "pods", None, True, id="may-mark-pods-with-a-deletion-cost"),
    pytest.param("create", "pods", None, False, id="may-not-create-pods"),
    pytest.param("delete", "pods", None, False, id="may-not-delete-pods"),
    pytest.param("get", "pods", "log", False, id="may-not-read-pod-logs"),
    pytest.param("get", "configmaps", None, False, id="may-not-read-configmaps"),
    pytest.param("create", "rolebindings.rbac.authorization.k8s.io", None, False,
                 id="may-not-create-rolebindings"),
]


@pytest.mark.parametrize(("verb", "resource", "subresource", "allowed"), CLUSTER_WIDE_TABLE)
def test_cluster_wide_install_rbac(
    testenv: TestEnv, installed: Install, other_namespace: str,
    verb: str, resource: str, subresource: str | None, allowed: bool,
) -> None:
    release = installed({})
    assert can_i(testenv, release, verb, resource, other_namespace, subresource) is allowed


def test_cluster_wide_install_grants_no_cluster_wide_secret_listing(
    testenv: TestEnv, installed: Install
) -> None:
    release = installed({})
    assert not can_i(testenv, release, "list", "secrets", None)
    assert not can_i(testenv, release, "watch", "secrets", None)
    assert not can_i(testenv, release, "*", "*", None)
    assert can_i(testenv, release, "watch", "customresourcedefinitions.apiextensions.k8s.io",
                 None)


NAMESPACED_TABLE = [
    # (where: "watched" | "release" | "other", verb, resource, subresource, allowed)
    pytest.param("watched", "get", "secrets", None, True, id="get-secrets-in-watched-namespace"),
    pytest.param("watched", "list", "secrets", None, False, id="cannot-list-secrets"),
    pytest.param("watched", "watch", "secrets", None, False, id="cannot-watch-secrets"),
    pytest.param("other", "get", "secrets", None, False,
                 id="cannot-read-secrets-in-other-namespace"),
    pytest.param("release", "get", "secrets", None, False,
                 id="cannot-read-secrets-in-its-own-unwatched-namespace"),
    pytest.param("watched", "patch", "deployments.apps", "scale", True,
                 id="scale-in-watched-namespace"),
    pytest.param("other", "patch", "deployments.apps", "scale", False,
                 id="cannot-scale-in-other-namespace"),
    pytest.param("other", "list", "queuescalers.queuescaler.io", None, False,
                 id="cannot-list-queuescalers-in-other-namespace"),
    pytest.param("watched", "patch", "deployments.apps", None, False,
                 id="cannot-patch-deployments-the-object"),
    pytest.param("watched", "delete", "deployments.apps", None, False,
                 id="cannot-delete-deployments"),
    pytest.param("watched", "patch", "pods", None, True, id="mark-pods-in-watched-namespace"),
    pytest.param("other", "patch", "pods", None, False, id="cannot-mark-pods-in-other-namespace"),
    pytest.param("watched", "create", "pods", None, False, id="cannot-create-pods"),
    pytest.param("watched", "get", "pods", "log", False, id="cannot-read-pod-logs"),
]


@pytest.mark.parametrize(("where", "verb", "resource", "subresource", "allowed"),
                         NAMESPACED_TABLE)
def test_namespaced_install_rbac(
    testenv: TestEnv, installed: Install, namespace: str, other_namespace: str,
    where: str, verb: str, resource: str, subresource: str | None, allowed: bool,
) -> None:
    watched = other_namespace
    release = installed({"watchNamespaces": [watched]})
    target = {"watched": watched, "release": namespace, "other": "default"}[where]
    assert can_i(testenv, release, verb, resource, target, subresource) is allowed


# --- the operator itself under the chart's ServiceAccount --------------------------------------


def service_account_kubeconfig(testenv: TestEnv, release: Release, out: Path) -> Path:
    """A kubeconfig holding only a fresh token of the release's ServiceAccount."""
    return testenv.service_account_kubeconfig(release.service_account, release.namespace, out)


DENIED = re.compile(r"\b403\b|forbidden|not allowed|permission", re.IGNORECASE)
OBJECT = re.compile(r"not allowed to access [A-Za-z ]*?([a-z0-9-]+)/[a-z0-9.-]+")


def about_another_namespace(line: str, namespace: str) -> bool:
    """A cluster-wide operator also sees other tests' QueueScalers, whose namespaces may be
    terminating (the apiserver then refuses new Events there): not this chart's RBAC."""
    found = OBJECT.search(line)
    return found is not None and found.group(1) != namespace


@pytest.mark.parametrize(
    "mode",
    [
        pytest.param("cluster-wide", id="cluster-wide"),
        pytest.param("namespaced", id="namespaced"),
        pytest.param("cluster-wide-leader-election", id="cluster-wide-with-leader-election"),
    ],
)
def test_the_operator_runs_under_the_chart_account_without_a_single_denial(
    testenv: TestEnv, installed: Install, other_namespace: str, tmp_path: Path,
    mode: str,
) -> None:
    """A whole loop (read Secret, sample, read target, patch /scale, status, Events) is allowed.

    Other test sessions may run their own operators on this cluster at the same time, so
    the proof is this operator's own view: its metrics say Ready for this QueueScaler, and
    nothing it logged, and no Event, reports a denied request.
    """
    workload = other_namespace
    values: dict[str, Any] = {}
    extra_args: list[str] = []
    if mode == "namespaced":
        values = {"watchNamespaces": [workload]}
        extra_args = ["--namespace", workload]  # as the chart's Deployment starts it
    if mode == "cluster-wide-leader-election":
        values = {"leaderElection": {"enabled": True, "leaseName": "queuescaler"}}
    release = installed(values)
    if mode == "cluster-wide-leader-election":
        # As the chart's Deployment starts it (POD_NAMESPACE is the release's namespace).
        extra_args = ["--leader-election", "--leader-election-name", "queuescaler",
                      "--leader-election-namespace", release.namespace]
    kubeconfig = service_account_kubeconfig(testenv, release, tmp_path / "sa.kubeconfig")

    queue = f"chart-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    manifests = [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "rabbitmq"},
         "stringData": {"amqpUrl": testenv.amqp_url, "managementUrl": testenv.management_url}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "worker"},
         "spec": {"replicas": 3, "selector": {"matchLabels": {"app": "worker"}},
                  "template": {"metadata": {"labels": {"app": "worker"}},
                               "spec": {"containers": [{"name": "w", "image": "w:fake"}]}}}},
    ]
    for manifest in manifests:
        testenv.kubectl("apply", "-n", workload, "-f", "-", input=yaml.safe_dump(manifest))

    process = OperatorProcess(
        replace(testenv, kubeconfig=kubeconfig), tmp_path / "operator.log", *extra_args
    ).start()
    try:
        scaler = {
            "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
            "metadata": {"name": "worker"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                   "name": "worker"},
                "minReplicas": 1, "maxReplicas": 3, "pollingIntervalSeconds": 1,
                "source": {"rabbitmq": {"queue": queue, "vhost": testenv.vhost,
                                        "connectionSecretRef": {"name": "rabbitmq"}}},
                "behavior": {"scaleDown": {"cooldownSeconds": 0, "stabilizationSeconds": 0,
                                           "maxStepPercent": 100}},
            },
        }
        testenv.kubectl("apply", "-n", workload, "-f", "-", input=yaml.safe_dump(scaler))
        ready = (f'queuescaler_condition{{condition="Ready",scaler="worker",'
                 f'scaler_namespace="{workload}"}} 1.0')
        wait_until(lambda: ready in process.metrics(), timeout=60,
                   what="this operator to report the QueueScaler Ready")
        wait_until(
            lambda: testenv.kubectl("get", "deployment", "worker", "-n", workload, "-o",
                                    "jsonpath={.spec.replicas}").stdout == "1",
            timeout=60, what="the idle pool to be scaled down to minReplicas",
        )
        wait_until(
            lambda: "ScaledDown" in testenv.kubectl(
                "get", "events", "-n", workload, "-o", "jsonpath={.items[*].reason}").stdout,
            timeout=30, what="a ScaledDown Event",
        )
    finally:
        process.stop()
        testenv.kubectl("delete", "qs", "worker", "-n", workload, "--wait=false", check=False)
        connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
        connection.channel().queue_delete(queue)
        connection.close()
    denied = [line for line in process.log().splitlines()
              if DENIED.search(line) and not about_another_namespace(line, workload)]
    assert not denied, "\n".join(denied[:5])
    reasons = testenv.kubectl("get", "events", "-n", workload, "-o",
                              "jsonpath={.items[*].reason}").stdout.split()
    assert "ScaleFailed" not in reasons and "Forbidden" not in reasons


# --- the admission policy: the operator's pods: patch reaches two annotations only ----------------
# The patches are sent as the operator sends them: one PATCH with the Kubernetes client (kubectl
# patch would GET the pod first, which the operator's account may not do).

MARKS = ("controller.kubernetes.io/pod-deletion-cost", "queuescaler.io/marked-by")
POLICY_DENIAL = re.compile(
    r"ValidatingAdmissionPolicy '[^']+-pod-marks' with binding '[^']+' denied request: "
    r"the queuescaler operator may only change a pod's annotations"
    r" controller.kubernetes.io/pod-deletion-cost and queuescaler.io/marked-by"
)


def core_api(kubeconfig: Path) -> kube.CoreV1Api:
    return kube.CoreV1Api(kube_config.new_client_from_config(config_file=str(kubeconfig)))


@dataclass(frozen=True)
class Marking:
    """A cluster-wide release with the policy on, and a client as its ServiceAccount."""

    release: Release
    namespace: str
    """Where the test pods live: not the release's namespace."""
    as_operator: kube.CoreV1Api


@dataclass(frozen=True)
class Answer:
    status: int
    message: str


def make_pod(testenv: TestEnv, namespace: str, marked: bool = False) -> str:
    name = f"pod-{uuid.uuid4().hex[:8]}"
    annotations = {"keep": "me"}
    if marked:
        annotations |= {MARKS[0]: "-1", MARKS[1]: f"{namespace}/worker"}
    pod = {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "worker"}, "annotations": annotations},
        "spec": {"containers": [{"name": "w", "image": "worker:1"}]},
    }
    testenv.kubectl("create", "-n", namespace, "-f", "-", input=json.dumps(pod))
    return name


def patch_pod(api: kube.CoreV1Api, namespace: str, name: str, patch: Any,
              dry_run: bool = False) -> Answer:
    """A JSON patch (a list) or a merge patch (a dict) of one pod; the apiserver's answer."""
    kind = ("application/json-patch+json" if isinstance(patch, list)
            else "application/merge-patch+json")
    try:
        api.patch_namespaced_pod(name, namespace, patch, dry_run="All" if dry_run else None,
                                 _content_type=kind)
    except kube.ApiException as error:
        body = json.loads(error.body) if error.body else {}
        return Answer(int(error.status), " ".join(str(body.get("message", error)).split()))
    return Answer(200, "")


def read_pod(testenv: TestEnv, namespace: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = json.loads(
        testenv.kubectl("get", "pod", name, "-n", namespace, "-o", "json").stdout)
    return pod


@pytest.fixture(scope="module")
def marking(
    testenv: TestEnv, crd: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Marking]:
    tmp = tmp_path_factory.mktemp("marking")
    release_namespace, workload = (f"chart-{uuid.uuid4().hex[:8]}" for _ in range(2))
    for name in (release_namespace, workload):
        testenv.kubectl("create", "namespace", name)
    release = install(testenv, release_namespace, {}, tmp)
    try:
        as_operator = core_api(service_account_kubeconfig(testenv, release, tmp / "sa.yaml"))
        probe = make_pod(testenv, workload)

        def in_force() -> bool:
            # A server-side dry run goes through admission and changes nothing.
            answer = patch_pod(as_operator, workload, probe,
                               {"metadata": {"labels": {"app": "probe"}}}, dry_run=True)
            return POLICY_DENIAL.search(answer.message) is not None

        wait_until(in_force, timeout=60, what="the pod-marks admission policy to be in force")
        yield Marking(release, workload, as_operator)
    finally:
        helm(testenv, "uninstall", release.name, "--namespace", release_namespace, "--wait")
        for name in (release_namespace, workload):
            testenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_the_pod_patch_policy_type_checks_cleanly(testenv: TestEnv, marking: Marking) -> None:
    name = f"{marking.release.service_account}-pod-marks"
    policy = json.loads(testenv.kubectl("get", "validatingadmissionpolicy", name, "-o",
                                        "json").stdout)
    assert policy["status"].get("typeChecking", {}).get("expressionWarnings") in (None, []), (
        policy["status"])


@pytest.mark.parametrize(
    ("marked", "patch", "expected"),
    [
        pytest.param(False, {"metadata": {"annotations": {MARKS[0]: "-1", MARKS[1]: "ns/w"}}},
                     {MARKS[0]: "-1", MARKS[1]: "ns/w"}, id="set-the-deletion-cost"),
        pytest.param(True, {"metadata": {"annotations": {MARKS[0]: "7"}}},
                     {MARKS[0]: "7"}, id="change-the-deletion-cost"),
        pytest.param(True, {"metadata": {"annotations": {MARKS[0]: None, MARKS[1]: None}}},
                     {MARKS[0]: None, MARKS[1]: None}, id="clear-the-marks"),
        pytest.param(True, [{"op": "replace", "path": "/metadata/annotations/"
                             "controller.kubernetes.io~1pod-deletion-cost", "value": "3"}],
                     {MARKS[0]: "3"}, id="json-patch-of-the-deletion-cost"),
    ],
)
def test_the_operator_may_mark_a_pod(
    testenv: TestEnv, marking: Marking, marked: bool, patch: Any,
    expected: dict[str, str | None],
) -> None:
    pod = make_pod(testenv, marking.namespace, marked=marked)
    answer = patch_pod(marking.as_operator, marking.namespace, pod, patch)
    assert answer.status == 200, answer.message
    annotations = read_pod(testenv, marking.namespace, pod)["metadata"]["annotations"]
    assert {key: annotations.get(key) for key in expected} == expected
    assert annotations["keep"] == "me"


@pytest.mark.parametrize(
    "patch",
    [
        pytest.param([{"op": "replace", "path": "/spec/containers/0/image",
                       "value": "attacker:latest"}], id="image"),
        pytest.param([{"op": "add", "path": "/metadata/annotations/"
                       "controller.kubernetes.io~1pod-deletion-cost", "value": "-1"},
                      {"op": "replace", "path": "/spec/containers/0/image",
                       "value": "attacker:latest"}], id="image-along-with-a-mark"),
        pytest.param({"metadata": {"labels": {"app": "elsewhere"}}}, id="label-changed"),
        pytest.param({"metadata": {"labels": {"extra": "x"}}}, id="label-added"),
        pytest.param({"metadata": {"labels": None}}, id="labels-removed"),
        pytest.param({"metadata": {"annotations": {"other": "x"}}}, id="other-annotation-added"),
        pytest.param({"metadata": {"annotations": {"keep": None}}},
                     id="other-annotation-removed"),
        pytest.param({"metadata": {"finalizers": ["example.com/hold"]}}, id="finalizer-added"),
        pytest.param({"spec": {"activeDeadlineSeconds": 5}}, id="deadline-set"),
    ],
)
def test_the_operator_may_change_nothing_else_of_a_pod(
    testenv: TestEnv, marking: Marking, patch: Any
) -> None:
    pod = make_pod(testenv, marking.namespace)
    before = read_pod(testenv, marking.namespace, pod)
    answer = patch_pod(marking.as_operator, marking.namespace, pod, patch)
    assert answer.status == 403, answer
    assert POLICY_DENIAL.search(answer.message), answer.message
    after = read_pod(testenv, marking.namespace, pod)
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]
    assert after["spec"]["containers"][0]["image"] == "worker:1"


def test_the_policy_leaves_other_users_alone(testenv: TestEnv, marking: Marking) -> None:
    pod = make_pod(testenv, marking.namespace)
    answer = patch_pod(core_api(testenv.kubeconfig), marking.namespace, pod,
                       {"metadata": {"labels": {"app": "relabelled"}}})
    assert answer.status == 200, answer.message


def test_without_the_policy_the_operator_account_could_change_an_image(
    testenv: TestEnv, installed: Install, other_namespace: str, tmp_path: Path
) -> None:
    """What the policy is for: RBAC alone lets the account's `pods: patch` change anything."""
    release = installed({"podPatchPolicy": {"enabled": False}})
    as_operator = core_api(service_account_kubeconfig(testenv, release, tmp_path / "sa.yaml"))
    pod = make_pod(testenv, other_namespace)
    answer = patch_pod(as_operator, other_namespace, pod, [
        {"op": "replace", "path": "/spec/containers/0/image", "value": "attacker:latest"}],
        dry_run=True)
    assert answer.status == 200, answer.message


def test_schema_cache_lives_outside_the_repository(schemas: Schemas) -> None:
    assert schemas.directory.is_relative_to(CACHE)
