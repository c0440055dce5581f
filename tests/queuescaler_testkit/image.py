"""The operator image (hack/image.sh), run as the chart runs it: rootful podman on the host's
network, read-only root filesystem, the chart's numeric user, every capability dropped, no
privilege escalation, the runtime's default seccomp profile, an emptyDir-like /tmp, and the
chart's ServiceAccount token where the kubelet would mount it."""

from __future__ import annotations

import base64
import os
import subprocess
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from queuescaler_testkit.env import REPO, TestEnv
from queuescaler_testkit.operator_process import OperatorProcess

CHART_USER = "10001:10001"
"""runAsUser and runAsGroup of the chart's pod securityContext."""
TOKEN_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
HARDENING = (
    "--network", "host", "--read-only", "--read-only-tmpfs=false", "--user", CHART_USER,
    "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
    # the chart's only writable place, an emptyDir at /tmp
    "--tmpfs", "/tmp:rw,size=64m,mode=1777",
)
"""`podman run` options equal to the chart's securityContext (seccomp: the runtime's default)."""


IMAGE_SH = str(REPO / "hack" / "image.sh")


def podman(*args: str, check: bool = True, timeout: float = 120
           ) -> subprocess.CompletedProcess[str]:
    """podman on the project's image store (hack/image.sh podman: sudo for a non-root user)."""
    result = subprocess.run(["bash", IMAGE_SH, "podman", *args], capture_output=True,
                            text=True, timeout=timeout, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"podman {' '.join(args[:3])} ... failed: {result.stderr.strip()}")
    return result


class ImageUnavailable(Exception):
    """The image could not be built here (the build's own words)."""


def build_image() -> str:
    """Build (or reuse) the image, after removing containers left by a killed test run;
    its name."""
    subprocess.run(["bash", IMAGE_SH, "sweep"], capture_output=True, timeout=120, check=False)
    try:
        result = subprocess.run(["bash", IMAGE_SH, "build"], capture_output=True, text=True,
                                timeout=1800, check=False)
    except subprocess.TimeoutExpired as error:
        raise ImageUnavailable(f"hack/image.sh build took over {error.timeout:.0f}s") from error
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise ImageUnavailable(f"hack/image.sh build failed:\n{result.stderr[-3000:]}")
    return lines[-1]


def containers_can_run() -> bool:
    """Whether this machine can run a container at all (hack/image.sh check)."""
    return subprocess.run(["bash", IMAGE_SH, "check"], capture_output=True, timeout=600,
                          check=False).returncode == 0


def service_account_mount(testenv: TestEnv, kubeconfig: Path, out: Path) -> Path:
    """What the kubelet mounts for a pod: the token (from a ServiceAccount kubeconfig made
    by `TestEnv.service_account_kubeconfig`), the cluster's CA and the namespace; the
    directory to mount is returned. The files are readable by anyone (the container's user
    is not ours) but inside `out`, which only its owner may enter."""
    config = yaml.safe_load(kubeconfig.read_text())
    context = config["contexts"][0]["context"]
    cluster = yaml.safe_load(testenv.kubeconfig.read_text())["clusters"][0]["cluster"]
    ca = (base64.b64decode(cluster["certificate-authority-data"]).decode()
          if "certificate-authority-data" in cluster
          else Path(cluster["certificate-authority"]).read_text())
    files = {
        "token": config["users"][0]["user"]["token"],
        "namespace": context.get("namespace", "default"),
        "ca.crt": ca,
    }
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    out.chmod(0o700)
    mounted = out / "serviceaccount"
    mounted.mkdir(mode=0o755, exist_ok=True)
    for name, text in files.items():
        path = mounted / name
        path.unlink(missing_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444)
        with os.fdopen(descriptor, "w") as handle:
            handle.write(text)
    return mounted


def apiserver_address(testenv: TestEnv) -> tuple[str, str]:
    """KUBERNETES_SERVICE_HOST and _PORT for the local apiserver (on loopback)."""
    server = yaml.safe_load(testenv.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    parts = urlsplit(server)
    return str(parts.hostname), str(parts.port or 443)


class ImageOperatorProcess(OperatorProcess):
    """The operator from its image, in-cluster configuration from the mounted token.

    `process` is the attached `podman run`; stop() asks podman to stop the container (SIGTERM,
    then SIGKILL after the chart's grace period), kill() kills the container itself.
    """

    def __init__(self, testenv: TestEnv, image: str, token_dir: Path, log_path: Path,
                 *extra_args: str) -> None:
        super().__init__(testenv, log_path, *extra_args)
        self.image = image
        self.token_dir = token_dir
        self.name = f"qs-operator-{uuid.uuid4().hex[:8]}"

    def command(self) -> list[str]:
        host, port = apiserver_address(self.testenv)
        return [
            "bash", IMAGE_SH, "podman", "run", "--rm", "--name", self.name, *HARDENING,
            "--label", f"io.queuescaler.test-owner={os.getpid()}",
            "--volume", f"{self.token_dir}:{TOKEN_DIR}:ro",
            "--env", f"KUBERNETES_SERVICE_HOST={host}", "--env", f"KUBERNETES_SERVICE_PORT={port}",
            self.image, "--metrics-host", "127.0.0.1", "--metrics-port", str(self.port),
            "--log-format", "json", *self.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> ImageOperatorProcess:
        try:
            super().start()
        except BaseException:  # never ready: the container must not outlive the attempt
            self.stop(kill=True)
            raise
        return self

    def stop(self, *, kill: bool = False) -> int | None:
        """Stops the container (SIGTERM, SIGKILL after 30 s, as the chart's grace period),
        and makes sure it is gone; the exit code of `podman run`, which is the operator's."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            if kill:
                podman("kill", "--signal", "KILL", self.name, check=False)
            else:
                podman("stop", "--time", "30", self.name, check=False, timeout=60)
        try:
            code = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        podman("rm", "--force", "--ignore", self.name, check=False)
        return code

    def exec(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command inside the running container (as its user)."""
        return podman("exec", self.name, *command, check=False)
