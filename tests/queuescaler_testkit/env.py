"""The local environment (a kwok cluster, RabbitMQ and Prometheus) and bounded polling."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import yaml

from queuescaler_testkit.broker import BrokerAdmin

REPO = Path(__file__).resolve().parents[2]
"""The repository: this file is tests/queuescaler_testkit/env.py."""
CACHE = Path(os.environ.get("QS_CACHE", Path.home() / ".cache" / "queuescaler"))
CRD = REPO / "crds" / "queuescaler.yaml"
CRD_NAME = "queuescalers.queuescaler.io"

T = TypeVar("T")


def wait_until(
    check: Callable[[], T | None], *, timeout: float, what: str, every: float = 0.5
) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` after `timeout` s.

    Tests wait on observable state this way, never with a bare sleep.
    """
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as error:  # a server still settling: keep polling, report at the end
            last_error = error
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(every)


@dataclass(frozen=True)
class TestEnv:
    """The running local environment: a kwok cluster, RabbitMQ and Prometheus."""

    __test__ = False  # not a test class, whatever its name

    kubeconfig: Path
    amqp_url: str
    management_url: str
    vhost: str
    prometheus_url: str
    prometheus_targets: Path
    bin: Path

    def apply_crd(self, *, field_manager: str | None = None) -> None:
        """The QueueScaler CRD from crds/, applied (server-side, idempotent), Established, and
        the kind discoverable. `field_manager` names the applier (kubectl's own by default)."""
        manager = [f"--field-manager={field_manager}"] if field_manager else []
        self.kubectl("apply", "--server-side", "--force-conflicts", *manager, "-f", str(CRD))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{CRD_NAME}")
        wait_until(
            lambda: self.kubectl("get", "qs", "--all-namespaces", check=False).returncode == 0,
            timeout=60, what="the QueueScaler kind in discovery",
        )

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the cache's kubectl against the local cluster; fail with its stderr."""
        result = subprocess.run(
            [str(self.bin / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def admin(self) -> BrokerAdmin:
        """The broker's management API as its administrator."""
        return BrokerAdmin(self.management_url)

    def service_account_kubeconfig(
        self, account: str, namespace: str, out: Path, *, duration: str = "1h",
        default_namespace: str | None = None,
    ) -> Path:
        """A kubeconfig holding only a fresh token of `account` (the TokenRequest API).

        The cluster (server, CA) is taken from the admin kubeconfig; nothing else of it is
        kept. `default_namespace` becomes the context's namespace when given.
        """
        token = self.kubectl("create", "token", account, "-n", namespace,
                             "--duration", duration).stdout.strip()
        view = json.loads(self.kubectl("config", "view", "--raw", "--minify", "-o",
                                       "json").stdout)
        context: dict[str, str] = {"cluster": "local", "user": account}
        if default_namespace is not None:
            context["namespace"] = default_namespace
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "local", "cluster": view["clusters"][0]["cluster"]}],
            "users": [{"name": account, "user": {"token": token}}],
            "contexts": [{"name": account, "context": context}],
            "current-context": account,
        }))
        out.chmod(0o600)
        return out


def read_testenv(instance: str | None = None) -> TestEnv:
    """The settings of a running environment (what `hack/testenv.sh up` wrote), nothing started.

    `instance` names a separate environment (QS_ENV); by default the shared one.
    """
    run = CACHE / f"run-{instance}" if instance else CACHE / "run"
    settings = dict(
        line.split("=", 1) for line in (run / "env").read_text().splitlines() if "=" in line
    )
    return TestEnv(
        kubeconfig=Path(settings["QS_KUBECONFIG"]),
        amqp_url=settings["QS_AMQP_URL"],
        management_url=settings["QS_MANAGEMENT_URL"],
        vhost=settings["QS_RABBITMQ_VHOST"],
        prometheus_url=settings["QS_PROMETHEUS_URL"],
        prometheus_targets=Path(settings["QS_PROMETHEUS_TARGETS"]),
        bin=Path(settings["QS_BIN"]),
    )


def bring_up(instance: str | None = None) -> TestEnv:
    """Start the environment (or reuse a running one) and read its settings.

    With QS_TESTENV=as-is the environment is used exactly as it is, nothing is started:
    that is how to check that a test fails when its server is down. `instance` names a
    separate environment (its own servers and ports) for tests that stop servers.
    """
    command = "status" if os.environ.get("QS_TESTENV") == "as-is" else "up"
    instance = instance or os.environ.get("QS_ENV") or None
    env = {**os.environ, "QS_ENV": instance} if instance else {
        k: v for k, v in os.environ.items() if k != "QS_ENV"
    }
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "testenv.sh"), command],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    if result.returncode != 0:
        raise RuntimeError(
            "the local test environment did not start (hack/testenv.sh up):\n"
            + result.stderr[-4000:]
        )
    return read_testenv(instance)
