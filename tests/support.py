"""Test helpers shared by integration and e2e tests: the environment and bounded polling."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("QS_CACHE", Path.home() / ".cache" / "queuescaler"))

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

    def apply_crd(self) -> None:
        """The QueueScaler CRD, applied (server-side, idempotent) and Established."""
        self.kubectl("apply", "--server-side", "--force-conflicts", "-f",
                     str(REPO / "crds" / "queuescaler.yaml"))
        self.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                     "crd/queuescalers.queuescaler.io")

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
    settings = dict(
        line.split("=", 1)
        for line in (CACHE / f"run-{instance}" if instance else CACHE / "run").joinpath("env")
        .read_text()
        .splitlines()
        if "=" in line
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
