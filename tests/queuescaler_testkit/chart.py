"""The Helm chart installed on the local cluster, as the tests and the demo install it.

Each install uses its own release name (ClusterRoles are named after the release),
`--skip-crds` (the session's `crd` fixture keeps the CRD current) and `replicaCount=0`:
kwok's pods run nothing, so the operator runs beside the cluster under the chart's token.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from queuescaler_testkit.env import REPO, TestEnv

CHART = REPO / "charts" / "queuescaler"


def helm(testenv: TestEnv, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [str(testenv.bin / "helm"), "--kubeconfig", str(testenv.kubeconfig), *args],
        capture_output=True, text=True, timeout=240, check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{result.stderr}")
    return result


@dataclass(frozen=True)
class Release:
    name: str
    namespace: str
    service_account: str

    @property
    def user(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


def install(
    testenv: TestEnv, namespace: str, values: dict[str, Any], tmp_path: Path
) -> Release:
    """A new release of the chart in `namespace` (replicaCount=0 unless `values` say)."""
    name = f"qs-{uuid.uuid4().hex[:6]}"
    values_file = tmp_path / f"{name}.yaml"
    values_file.write_text(yaml.safe_dump({"replicaCount": 0, **values}))
    helm(testenv, "install", name, str(CHART), "--namespace", namespace, "--skip-crds",
         "--values", str(values_file), "--wait", "--timeout", "2m")
    return Release(name, namespace, f"{name}-queuescaler")


def uninstall(testenv: TestEnv, release: Release) -> None:
    helm(testenv, "uninstall", release.name, "--namespace", release.namespace, "--wait")
    gone = helm(testenv, "status", release.name, "--namespace", release.namespace, check=False)
    assert gone.returncode != 0, f"release {release.name} still there after uninstall"
