"""The Helm chart, rendered offline: lint, what each mode renders, pod security and RBAC.

No cluster: `helm lint` and `helm template` only (helm from the cache's tool directory).
The rendered RBAC is checked by a small evaluator of its rules, so "may the operator list
Secrets?" is answered from the manifests themselves; tests/integration/test_chart_install.py asks
the real apiserver the same questions after a `helm install`.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml

from support import CACHE, REPO

pytestmark = pytest.mark.unit

CHART = REPO / "charts" / "queuescaler"
HELM = CACHE / "bin" / "helm"
RELEASE = "qs"
RELEASE_NAMESPACE = "qs-system"
FULLNAME = "qs-queuescaler"

NAMESPACED = {"watchNamespaces": ["team-a", "team-b"]}
ALL_SWITCHES = {
    "watchNamespaces": ["team-a", "team-b"],
    "leaderElection": {"enabled": True, "leaseName": "queuescaler"},
    "replicaCount": 2,
    "extraScaleTargets": [{"apiGroup": "argoproj.io", "resources": ["rollouts"]}],
    "metrics": {"serviceMonitor": {"enabled": True}},
    "dashboard": {"enabled": True},
    "prometheusRule": {"enabled": True},
}
ALL_SWITCHES_CLUSTER_WIDE = {k: v for k, v in ALL_SWITCHES.items() if k != "watchNamespaces"}

POLICY = {"ValidatingAdmissionPolicy": 1, "ValidatingAdmissionPolicyBinding": 1}
"""The admission policy that narrows pods: patch, rendered unless switched off."""

VALUE_SETS = [
    pytest.param({}, id="defaults"),
    pytest.param(NAMESPACED, id="namespaced"),
    pytest.param(ALL_SWITCHES, id="namespaced-all-switches-on"),
    pytest.param(ALL_SWITCHES_CLUSTER_WIDE, id="cluster-wide-all-switches-on"),
    pytest.param({"replicaCount": 0}, id="demo-no-operator-pod"),
]


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    if not HELM.exists():
        pytest.fail(f"helm is not installed at {HELM}: run `make deps`", pytrace=False)
    result = subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=60, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


def values_file(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def render(tmp_path: Path, values: dict[str, Any]) -> list[dict[str, Any]]:
    """Every manifest `helm template` renders for these values (CRDs left out)."""
    out = helm(
        "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE,
        "--values", str(values_file(tmp_path, values)),
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def of_kind(manifests: Iterable[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] == kind]


def rules_by_namespace(manifests: list[dict[str, Any]]) -> dict[str | None, list[dict[str, Any]]]:
    """The rules granted to the chart's ServiceAccount, by namespace (None: cluster-wide)."""
    roles = {
        (m["kind"], m["metadata"].get("namespace"), m["metadata"]["name"]): m.get("rules") or []
        for m in manifests
        if m["kind"] in ("ClusterRole", "Role")
    }
    granted: dict[str | None, list[dict[str, Any]]] = {}
    for binding in manifests:
        if binding["kind"] not in ("ClusterRoleBinding", "RoleBinding"):
            continue
        subjects = binding["subjects"]
        assert subjects == [{"kind": "ServiceAccount", "name": FULLNAME,
                             "namespace": RELEASE_NAMESPACE}], binding["metadata"]["name"]
        namespace = binding["metadata"].get("namespace")
        ref = binding["roleRef"]
        role_namespace = namespace if ref["kind"] == "Role" else None
        rules = roles[(ref["kind"], role_namespace, ref["name"])]
        granted.setdefault(namespace, []).extend(rules)
    return granted


def allows(rules: Iterable[dict[str, Any]], group: str, resource: str, verb: str) -> bool:
    return any(
        group in rule.get("apiGroups", ())
        and resource in rule.get("resources", ())
        and verb in rule.get("verbs", ())
        for rule in rules
    )


def can(
    manifests: list[dict[str, Any]], group: str, resource: str, verb: str, namespace: str
) -> bool:
    granted = rules_by_namespace(manifests)
    return allows(granted.get(None, []), group, resource, verb) or allows(
        granted.get(namespace, []), group, resource, verb
    )


# --- the chart's files ------------------------------------------------------------------------


def test_the_chart_crd_is_a_byte_identical_copy_of_the_repository_crd() -> None:
    assert (CHART / "crds" / "queuescaler.yaml").read_bytes() == (
        REPO / "crds" / "queuescaler.yaml"
    ).read_bytes(), "run: cp crds/queuescaler.yaml charts/queuescaler/crds/"


def test_chart_metadata() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["apiVersion"] == "v2"
    assert chart["appVersion"] == "0.1.0"


@pytest.mark.parametrize("values", VALUE_SETS)
def test_helm_lint_passes_strictly(values: dict[str, Any], tmp_path: Path) -> None:
    helm("lint", "--strict", str(CHART), "--values", str(values_file(tmp_path, values)))


# --- what each mode renders -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param({}, {
            "ServiceAccount": 1, "ClusterRole": 2, "ClusterRoleBinding": 2, "Deployment": 1,
            "Service": 1,
            **POLICY,
        }, id="defaults-cluster-wide"),
        pytest.param(NAMESPACED, {
            "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 2,
            "RoleBinding": 2, "Deployment": 1, "Service": 1,
            **POLICY,
        }, id="namespaced-a-role-per-watched-namespace"),
        pytest.param(ALL_SWITCHES, {
            "ServiceAccount": 1, "ClusterRole": 1, "ClusterRoleBinding": 1, "Role": 3,
            "RoleBinding": 3, "Deployment": 1, "Service": 1, "ServiceMonitor": 1,
            "PrometheusRule": 1, "ConfigMap": 1,
            **POLICY,
        }, id="namespaced-all-switches-on"),
        pytest.param(ALL_SWITCHES_CLUSTER_WIDE, {
            "ServiceAccount": 1, "ClusterRole": 2, "ClusterRoleBinding": 2, "Role": 1,
            "RoleBinding": 1, "Deployment": 1, "Service": 1, "ServiceMonitor": 1,
            "PrometheusRule": 1, "ConfigMap": 1,
            **POLICY,
        }, id="cluster-wide-all-switches-on"),
        pytest.param({"serviceAccount": {"create": False, "name": "existing"},
                      "rbac": {"create": False}},
                     {"Deployment": 1, "Service": 1, **POLICY},
                     id="bring-your-own-account-and-rbac"),
        pytest.param({"podPatchPolicy": {"enabled": False}}, {
            "ServiceAccount": 1, "ClusterRole": 2, "ClusterRoleBinding": 2, "Deployment": 1,
            "Service": 1,
        }, id="without-the-pod-patch-policy"),
    ],
)
def test_each_mode_renders_these_kinds(
    values: dict[str, Any], expected: dict[str, int], tmp_path: Path
) -> None:
    manifests = render(tmp_path, values)
    counted: dict[str, int] = {}
    for manifest in manifests:
        counted[manifest["kind"]] = counted.get(manifest["kind"], 0) + 1
    assert counted == expected


@pytest.mark.parametrize(
    ("values", "expected_args"),
    [
        pytest.param({}, [], id="cluster-wide-no-namespace-flags"),
        pytest.param(NAMESPACED, ["--namespace=team-a", "--namespace=team-b"],
                     id="namespaced-one-flag-per-namespace"),
    ],
)
def test_operator_arguments(
    values: dict[str, Any], expected_args: list[str], tmp_path: Path
) -> None:
    (deployment,) = of_kind(render(tmp_path, values), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert container["command"] == ["queuescaler", "run"]
    assert "--log-format=json" in args
    assert "--metrics-port=8080" in args
    assert [a for a in args if a.startswith("--namespace")] == expected_args
    assert not [a for a in args if a.startswith("--leader-election")]
    assert deployment["spec"]["replicas"] == 1


def test_leader_election_runs_replicas_that_share_one_lease(tmp_path: Path) -> None:
    (deployment,) = of_kind(render(tmp_path, ALL_SWITCHES_CLUSTER_WIDE), "Deployment")
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert "--leader-election" in container["args"]
    assert "--leader-election-name=queuescaler" in container["args"]
    env = {e["name"]: e["valueFrom"]["fieldRef"]["fieldPath"]
           for e in container["env"] if "valueFrom" in e}
    assert env == {"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"}


def test_without_leader_election_an_old_pod_stops_before_a_new_one_starts(
    tmp_path: Path,
) -> None:
    (deployment,) = of_kind(render(tmp_path, {}), "Deployment")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}


def test_replica_count_zero_runs_no_operator_pod(tmp_path: Path) -> None:
    (deployment,) = of_kind(render(tmp_path, {"replicaCount": 0}), "Deployment")
    assert deployment["spec"]["replicas"] == 0


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param({"replicaCount": 2}, "replicaCount",
                     id="two-replicas-need-leader-election"),
        pytest.param({"watchNamespaces": ["team-*"]}, "watchNamespaces",
                     id="no-namespace-globs"),
        pytest.param({"extraScaleTargets": [{"apiGroup": "*", "resources": ["rollouts"]}]},
                     "apiGroup", id="no-wildcard-scale-group"),
        pytest.param({"extraScaleTargets": [{"apiGroup": "argoproj.io", "resources": ["*"]}]},
                     "resources", id="no-wildcard-scale-resource"),
        pytest.param({"metrics": {"port": "8080"}}, "port", id="port-is-a-number"),
        pytest.param({"replicas": 1}, "replicas", id="unknown-top-level-key"),
        pytest.param({"podPatchPolicy": {"enabled": "yes"}}, "podPatchPolicy",
                     id="policy-switch-is-a-boolean"),
    ],
)
def test_values_schema_refuses(values: dict[str, Any], complaint: str, tmp_path: Path) -> None:
    result = helm(
        "template", RELEASE, str(CHART), "--values", str(values_file(tmp_path, values)),
        check=False,
    )
    assert result.returncode != 0
    assert complaint in result.stderr


# --- pod security -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_operator_pods_are_locked_down(values: dict[str, Any], tmp_path: Path) -> None:
    for deployment in of_kind(render(tmp_path, values), "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        for container in pod["containers"] + pod.get("initContainers", []):
            security = container["securityContext"]
            assert security["runAsNonRoot"] is True
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["privileged"] is False
            assert security["capabilities"] == {"drop": ["ALL"]}
            assert "add" not in security["capabilities"]
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}
            assert container["resources"]["requests"] and container["resources"]["limits"]
            assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
            assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
            assert container["ports"] == [
                {"name": "metrics", "containerPort": 8080, "protocol": "TCP"}
            ]


# --- RBAC -------------------------------------------------------------------------------------


@pytest.mark.parametrize("values", VALUE_SETS)
def test_rbac_has_no_wildcards_and_never_lists_or_watches_secrets(
    values: dict[str, Any], tmp_path: Path
) -> None:
    manifests = render(tmp_path, values)
    rules = [r for role in manifests if role["kind"] in ("ClusterRole", "Role")
             for r in role["rules"]]
    assert rules
    for rule in rules:
        for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
            assert not any("*" in item for item in rule.get(field, ())), (field, rule)
        if "" in rule["apiGroups"] and "secrets" in rule["resources"]:
            assert rule["verbs"] == ["get"], rule
        for verb in ("escalate", "bind", "impersonate", "delete", "deletecollection"):
            assert verb not in rule["verbs"], rule
        if "update" in rule["verbs"]:  # only the leader-election Lease is ever replaced
            assert rule["resources"] == ["leases"] and rule["resourceNames"], rule


CLUSTER = RELEASE_NAMESPACE  # any namespace: cluster-wide grants apply everywhere
RBAC_TABLE = [
    # (group, resource, verb, allowed)
    ("queuescaler.io", "queuescalers", "watch", True),
    ("queuescaler.io", "queuescalers/status", "patch", True),
    ("queuescaler.io", "queuescalers", "patch", False),
    ("queuescaler.io", "queuescalers", "delete", False),
    ("apps", "deployments", "list", True),
    ("apps", "deployments", "watch", True),
    ("apps", "deployments", "patch", False),
    ("apps", "deployments", "update", False),
    ("apps", "deployments", "delete", False),
    ("apps", "deployments/scale", "patch", True),
    ("apps", "statefulsets/scale", "patch", True),
    ("apps", "replicasets/scale", "get", True),
    ("", "secrets", "get", True),
    ("", "secrets", "list", False),
    ("", "secrets", "watch", False),
    ("", "events", "create", True),
    ("", "pods", "list", True),
    ("", "pods", "patch", True),
    ("", "pods", "create", False),
    ("", "pods", "delete", False),
    ("", "pods/log", "get", False),
    ("", "configmaps", "get", False),
    ("coordination.k8s.io", "leases", "create", False),
    # `queuescaler run -n NS` under the cluster-wide account: kopf lists namespaces.
    ("", "namespaces", "list", True),
    ("autoscaling", "horizontalpodautoscalers", "list", True),
    ("autoscaling", "horizontalpodautoscalers", "patch", False),
]


@pytest.mark.parametrize(
    ("group", "resource", "verb", "allowed"),
    [pytest.param(*row, id=f"{'may' if row[3] else 'may-not'}-{row[2]}-{row[1]}")
     for row in RBAC_TABLE],
)
def test_cluster_wide_rbac(
    group: str, resource: str, verb: str, allowed: bool, tmp_path: Path
) -> None:
    assert can(render(tmp_path, {}), group, resource, verb, CLUSTER) is allowed


@pytest.mark.parametrize(
    ("namespace", "group", "resource", "verb", "allowed"),
    [
        pytest.param("team-a", "", "secrets", "get", True, id="get-secrets-in-watched-namespace"),
        pytest.param("team-b", "apps", "deployments/scale", "patch", True,
                     id="scale-in-second-watched-namespace"),
        pytest.param("elsewhere", "", "secrets", "get", False,
                     id="cannot-read-secrets-in-other-namespace"),
        pytest.param("elsewhere", "apps", "deployments/scale", "patch", False,
                     id="cannot-scale-in-other-namespace"),
        pytest.param("elsewhere", "queuescaler.io", "queuescalers", "list", False,
                     id="cannot-list-queuescalers-in-other-namespace"),
        pytest.param("team-a", "", "secrets", "list", False, id="cannot-list-secrets"),
        pytest.param("team-a", "apiextensions.k8s.io", "customresourcedefinitions", "watch",
                     True, id="kopf-may-watch-crds"),
        pytest.param("team-a", "", "namespaces", "list", True,
                     id="kopf-may-list-namespaces-when-namespaced"),
        pytest.param("team-a", "autoscaling", "horizontalpodautoscalers", "list", True,
                     id="may-list-hpas-for-conflicts"),
    ],
)
def test_namespaced_rbac(
    namespace: str, group: str, resource: str, verb: str, allowed: bool, tmp_path: Path
) -> None:
    manifests = render(tmp_path, NAMESPACED)
    assert can(manifests, group, resource, verb, namespace) is allowed


def test_namespaced_mode_grants_nothing_namespaced_cluster_wide(tmp_path: Path) -> None:
    manifests = render(tmp_path, NAMESPACED)
    cluster_rules = rules_by_namespace(manifests)[None]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "customresourcedefinitions", "namespaces",
    }
    assert {v for rule in cluster_rules for v in rule["verbs"]} == {"get", "list", "watch"}


@pytest.mark.parametrize(
    "values",
    [
        pytest.param(ALL_SWITCHES_CLUSTER_WIDE, id="cluster-wide"),
        pytest.param(ALL_SWITCHES, id="namespaced"),
    ],
)
def test_leader_election_rbac_is_one_lease_in_the_release_namespace(
    values: dict[str, Any], tmp_path: Path
) -> None:
    manifests = render(tmp_path, values)
    granted = rules_by_namespace(manifests)
    lease_rules = [r for r in granted[RELEASE_NAMESPACE] if "leases" in r["resources"]]
    assert lease_rules == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
         "resourceNames": ["queuescaler"], "verbs": ["get", "update", "patch"]},
    ]
    for namespace, rules in granted.items():
        if namespace != RELEASE_NAMESPACE:
            assert not allows(rules, "coordination.k8s.io", "leases", "create"), namespace
    without = render(tmp_path, {**values, "replicaCount": 1,
                                "leaderElection": {"enabled": False, "leaseName": "x"}})
    assert not can(without, "coordination.k8s.io", "leases", "create", RELEASE_NAMESPACE)


def test_extra_scale_targets_grant_only_their_scale_subresource(tmp_path: Path) -> None:
    manifests = render(tmp_path, ALL_SWITCHES_CLUSTER_WIDE)
    assert can(manifests, "argoproj.io", "rollouts/scale", "patch", CLUSTER)
    assert can(manifests, "argoproj.io", "rollouts/scale", "get", CLUSTER)
    assert not can(manifests, "argoproj.io", "rollouts", "patch", CLUSTER)
    assert not can(manifests, "argoproj.io", "rollouts", "get", CLUSTER)


# --- the admission policy that narrows pods: patch -------------------------------------------

MARKS = {"controller.kubernetes.io/pod-deletion-cost", "queuescaler.io/marked-by"}


@pytest.mark.parametrize(
    ("values", "user"),
    [
        pytest.param({}, f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}",
                     id="chart-account"),
        pytest.param(NAMESPACED, f"system:serviceaccount:{RELEASE_NAMESPACE}:{FULLNAME}",
                     id="namespaced"),
        pytest.param({"serviceAccount": {"create": False, "name": "existing"},
                      "rbac": {"create": False}},
                     f"system:serviceaccount:{RELEASE_NAMESPACE}:existing", id="own-account"),
    ],
)
def test_the_pod_patch_policy_applies_to_the_operators_pod_updates_only(
    values: dict[str, Any], user: str, tmp_path: Path
) -> None:
    manifests = render(tmp_path, values)
    (policy,) = of_kind(manifests, "ValidatingAdmissionPolicy")
    (binding,) = of_kind(manifests, "ValidatingAdmissionPolicyBinding")
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    spec = policy["spec"]
    assert spec["failurePolicy"] == "Fail"
    assert spec["matchConstraints"]["resourceRules"] == [
        {"apiGroups": [""], "apiVersions": ["v1"], "resources": ["pods"],
         "operations": ["UPDATE"]},
    ]
    assert spec["matchConditions"] == [
        {"name": "by-the-operator", "expression": f'request.userInfo.username == "{user}"'},
    ]
    assert binding["spec"] == {"policyName": policy["metadata"]["name"],
                               "validationActions": ["Deny"]}
    (marks,) = [v["expression"] for v in spec["variables"] if v["name"] == "marks"]
    assert set(yaml.safe_load(marks)) == MARKS
    expressions = " ".join(v["expression"] for v in spec["validations"])
    for compared in ("spec", "metadata.?labels", "metadata.?ownerReferences",
                     "metadata.?finalizers"):
        assert f"object.{compared}" in expressions and f"oldObject.{compared}" in expressions
    for validation in spec["validations"]:
        assert validation["reason"] == "Forbidden"
        assert all(mark in validation["message"] for mark in MARKS), validation


def test_the_pod_patch_policy_can_be_switched_off(tmp_path: Path) -> None:
    kinds = {m["kind"] for m in render(tmp_path, {"podPatchPolicy": {"enabled": False}})}
    assert not kinds & {"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"}


def test_the_pod_patch_policy_is_on_by_default() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["podPatchPolicy"] == {"enabled": True}


# --- observability switches -------------------------------------------------------------------


def test_observability_objects_are_off_by_default(tmp_path: Path) -> None:
    kinds = {m["kind"] for m in render(tmp_path, {})}
    assert not kinds & {"ServiceMonitor", "PrometheusRule", "ConfigMap"}


def test_dashboard_configmap_carries_the_dashboard_for_the_grafana_sidecar(
    tmp_path: Path,
) -> None:
    (configmap,) = of_kind(render(tmp_path, {"dashboard": {"enabled": True}}), "ConfigMap")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads((CHART / "dashboards" / "queuescaler.json").read_text())
    assert json.loads(configmap["data"]["queuescaler.json"]) == shipped


def test_prometheus_rule_carries_the_shipped_rule_groups(tmp_path: Path) -> None:
    (rule,) = of_kind(render(tmp_path, {"prometheusRule": {"enabled": True}}), "PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    shipped = yaml.safe_load((CHART / "rules" / "queuescaler.rules.yaml").read_text())
    assert rule["spec"] == {"groups": shipped["groups"]}


def test_service_monitor_scrapes_the_metrics_service_as_job_queuescaler(tmp_path: Path) -> None:
    values = {"metrics": {"serviceMonitor": {"enabled": True}}}
    manifests = render(tmp_path, values)
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    (service,) = of_kind(manifests, "Service")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    for key, value in monitor["spec"]["selector"]["matchLabels"].items():
        assert service["metadata"]["labels"][key] == value
    # The shipped alerts select job="queuescaler": the job name comes from this Service label.
    assert service["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "queuescaler"


def test_the_default_image_is_the_one_make_image_tags() -> None:
    """A user who runs `make image` (or the README's build line) and `helm install` with the
    defaults gets the image just built, not a name the cluster cannot resolve."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())["image"]
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    built = subprocess.run(["bash", str(REPO / "hack" / "image.sh"), "name"], capture_output=True,
                           text=True, check=True, timeout=30).stdout.strip()
    assert f"{values['repository']}:{values['tag'] or app_version}" == built
    readme = (REPO / "README.md").read_text()
    assert f"docker build -t {built} ." in readme
    assert f"podman build -t {built} ." in readme
