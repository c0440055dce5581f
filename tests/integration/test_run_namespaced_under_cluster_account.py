"""Defect 26 of "11 Never a wrong scale" (issue 16): `queuescaler run -n NS` under the
ServiceAccount of the chart installed cluster-wide (the default values) works, without a
single denied request. kopf, given namespaces, lists and watches namespaces to resolve
them: the cluster-wide chart must grant that too, not only the namespaced one.

The chart is installed and the operator run as in test_chart_install (its fixtures and
helpers, imported), against the real local cluster and RabbitMQ.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pika
import pytest
import yaml
from test_chart_install import (  # noqa: F401 (fixtures, used by name)
    DENIED,
    Install,
    about_another_namespace,
    installed,
    other_namespace,
    service_account_kubeconfig,
)

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def test_run_with_a_namespace_under_the_cluster_wide_chart_account_is_never_denied(
    testenv: TestEnv, installed: Install, other_namespace: str, tmp_path: Path,  # noqa: F811
) -> None:
    workload = other_namespace
    release = installed({})  # cluster-wide: no watchNamespaces
    kubeconfig = service_account_kubeconfig(testenv, release, tmp_path / "sa.kubeconfig")

    queue = f"chart-ns-{uuid.uuid4().hex[:8]}"
    connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
    connection.channel().queue_declare(queue, durable=True)
    connection.close()
    manifests: list[dict[str, Any]] = [
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
        replace(testenv, kubeconfig=kubeconfig), tmp_path / "operator.log",
        "--namespace", workload,
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
                   what="the namespaced operator to report the QueueScaler Ready")
        wait_until(
            lambda: testenv.kubectl("get", "deployment", "worker", "-n", workload, "-o",
                                    "jsonpath={.spec.replicas}").stdout == "1",
            timeout=60, what="the idle pool to be scaled down to minReplicas",
        )
    finally:
        process.stop()
        testenv.kubectl("delete", "qs", "worker", "-n", workload, "--wait=false", check=False)
        connection = pika.BlockingConnection(pika.URLParameters(testenv.amqp_url))
        connection.channel().queue_delete(queue)
        connection.close()
    log = process.log()
    # Run with -n, the operator sees only this namespace: any denial is this chart's RBAC.
    denied = [line for line in log.splitlines()
              if DENIED.search(line) and not about_another_namespace(line, workload)]
    assert not denied, "\n".join(denied[:5])
    reasons = testenv.kubectl("get", "events", "-n", workload, "-o",
                              "jsonpath={.items[*].reason}").stdout.split()
    assert "ScaleFailed" not in reasons and "Forbidden" not in reasons
