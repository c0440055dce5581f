"""The image users deploy (issue 13), built here by hack/image.sh and run as the chart runs it.

The chart is installed (replicaCount=0: kwok's pods run no containers) and its ServiceAccount
token is mounted where the kubelet would put it; the container runs under the chart's
securityContext (queuescaler_testkit.image.HARDENING) on the host's loopback, against the
local apiserver and RabbitMQ. Its namespaces are `img-*`, which no other operator of the
session watches.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from queuescaler_testkit.chart import Release, install, uninstall
from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.image import (
    CHART_USER,
    HARDENING,
    ImageOperatorProcess,
    build_image,
    podman,
    service_account_mount,
)
from queuescaler_testkit.pool import Pool

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def image() -> str:
    """The operator image, built once (hack/image.sh reuses its cache when nothing changed)."""
    return build_image()


@pytest.fixture
def image_namespace(testenv: TestEnv) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", name)
    yield name
    testenv.kubectl("delete", "namespace", name, "--wait=false", check=False)


@pytest.fixture
def release(testenv: TestEnv, crd: None, image_namespace: str, tmp_path: Path
            ) -> Iterator[Release]:
    installed = install(testenv, image_namespace, {}, tmp_path)
    yield installed
    uninstall(testenv, installed)


@pytest.fixture
def operator_in_image(
    testenv: TestEnv, image: str, release: Release, image_namespace: str, tmp_path: Path
) -> Iterator[ImageOperatorProcess]:
    kubeconfig = testenv.service_account_kubeconfig(
        release.service_account, release.namespace, tmp_path / "sa.kubeconfig",
        default_namespace=release.namespace,
    )
    token_dir = service_account_mount(testenv, kubeconfig, tmp_path / "serviceaccount")
    process = ImageOperatorProcess(
        testenv, image, token_dir, tmp_path / "operator.log", "--namespace", "img-*",
        "--status-refresh-seconds", "2",
    ).start()
    yield process
    process.stop()


def _status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=5) as response:
        return int(response.status)


def test_the_image_under_the_chart_hardening_and_account_scales_a_pool(
    testenv: TestEnv, operator_in_image: ImageOperatorProcess, image_namespace: str,
) -> None:
    operator = operator_in_image
    pool = Pool(testenv, image_namespace).create()
    try:
        pool.apply_scaler(minReplicas=1, maxReplicas=4, target={"messagesPerReplica": 10})
        pool.wait_condition("Ready", "True")
        wait_until(lambda: pool.replicas() == 1, timeout=60, what="the pool at its minimum")

        connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
        channel = connection.channel()
        for n in range(40):  # nobody consumes: 40 ready / 10 per replica -> 4
            channel.basic_publish("", pool.queue, f"m{n}".encode())
        connection.close()
        wait_until(lambda: pool.replicas() == 4, timeout=90, what="the pool scaled to 4")

        base = operator.metrics_url.rsplit("/", 1)[0]
        assert _status(f"{base}/healthz") == 200
        assert _status(f"{base}/readyz") == 200
        metrics = operator.metrics()
        assert f'scaler_namespace="{image_namespace}"' in metrics
        assert "queuescaler_desired_replicas" in metrics
    finally:
        pool.delete_queue()
    assert operator.stop() == 0, operator.log()[-3000:]
    log = operator.log()
    assert " 403" not in log and "forbidden" not in log.lower(), log[-3000:]
    for line in log.splitlines():  # --log-format json: every line, from the first one
        assert isinstance(json.loads(line), dict), line


def test_the_root_filesystem_is_read_only_and_the_operator_writes_nowhere(
    image: str, operator_in_image: ImageOperatorProcess,
) -> None:
    touched = podman("run", "--rm", *HARDENING, "--entrypoint", "sh", image, "-c",
                     "touch /probe", check=False)
    assert touched.returncode != 0
    assert "Read-only file system" in touched.stderr

    # The running operator, as the chart runs it: its user, no capability, no escalation,
    # seccomp filtering; and nothing written even to the one writable place, /tmp.
    status = operator_in_image.exec("cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    assert fields["Uid"].split()[0] == CHART_USER.split(":")[0]
    assert int(fields["CapEff"], 16) == 0 and int(fields["CapPrm"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode: the runtime's default profile
    assert operator_in_image.exec("ls", "-A", "/tmp").stdout.strip() == ""
    root_write = operator_in_image.exec("sh", "-c", "echo x > /opt/queuescaler/probe")
    assert root_write.returncode != 0 and "Read-only file system" in root_write.stderr


def test_the_image_keeps_no_package_manager_but_dpkg_and_names_its_revision(image: str) -> None:
    left = podman("run", "--rm", *HARDENING, "--entrypoint", "sh", image, "-c",
                  "for t in pip pip3 apt apt-get gcc cc make; do command -v $t; done;"
                  " python3 -c 'import pip' 2>/dev/null && echo pip-module; true").stdout
    assert left.strip() == ""
    root = Path(podman("image", "mount", image).stdout.strip())
    try:  # the build host's name and resolver are not shipped (RUN leaves empty mount points)
        for name in ("hostname", "resolv.conf", "hosts"):
            path = root / "etc" / name
            assert not path.exists() or path.stat().st_size == 0, path.read_text()
        assert not (root / "etc" / "pip.conf").exists()
    finally:
        podman("image", "unmount", image, check=False)
    labels = podman("image", "inspect", "--format",
                    '{{index .Labels "org.opencontainers.image.revision"}}', image).stdout.strip()
    assert len(labels.removesuffix("-dirty")) == 40, labels
