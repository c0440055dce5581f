"""Isolation: a QueueScaler reads Secrets and scales targets in its own namespace only.

The spec has no namespace field for either reference: the apiserver refuses one at
admission (strict field validation, kubectl's default), and a client that turns validation
off only gets it pruned. A QueueScaler in namespace A that names a Secret or a Deployment
existing only in namespace B reports SecretNotFound / TargetNotFound and leaves B alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.pool import Pool, scaler_gauges
from queuescaler_testkit.publisher import publish_messages
from reliability.envctl import OperatorFactory
from reliability.scenario import BrokerUser, leaks, record, tracebacks, write_secret

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def scaler(name: str, *, target: str, secret: str, queue: str = "iso") -> dict[str, Any]:
    return {
        "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
        "metadata": {"name": name},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 0, "maxReplicas": 5, "pollingIntervalSeconds": 2,
            "target": {"messagesPerReplica": 10},
            "source": {"rabbitmq": {"queue": queue, "vhost": "queuescaler-test",
                                    "connectionSecretRef": {"name": secret}}},
        },
    }


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(("scaleTargetRef",), id="namespace-under-scaleTargetRef"),
        pytest.param(("source", "rabbitmq", "connectionSecretRef"),
                     id="namespace-under-connectionSecretRef"),
    ],
)
def test_a_namespace_in_a_reference_is_refused_at_admission(
    path: tuple[str, ...], faultenv: TestEnv, fault_namespace: str
) -> None:
    manifest = scaler("elsewhere", target="worker", secret="rabbitmq")
    parent = manifest["spec"]
    for key in path:
        parent = parent[key]
    parent["namespace"] = "kube-system"
    refused = faultenv.kubectl("create", "-n", fault_namespace, "-f", "-",
                               input=json.dumps(manifest), check=False)
    assert refused.returncode != 0
    assert 'unknown field "spec.' + ".".join(path) + '.namespace"' in refused.stderr, (
        refused.stderr
    )
    # A client that turns field validation off does not get the field either: it is pruned.
    faultenv.kubectl("create", "--validate=false", "-n", fault_namespace, "-f", "-",
                     input=json.dumps(manifest))
    stored = json.loads(faultenv.kubectl("get", "qs", "elsewhere", "-n", fault_namespace,
                                         "-o", "json").stdout)["spec"]
    for key in path:
        stored = stored[key]
    assert "namespace" not in stored


def test_references_to_another_namespace_are_not_found_and_that_namespace_is_untouched(
    faultenv: TestEnv, make_namespace: Callable[[], str], broker_user: BrokerUser,
    start_operator: OperatorFactory,
) -> None:
    mine, theirs = make_namespace(), make_namespace()
    other = Pool(faultenv, theirs, name="only-in-b")
    other.create()  # B: a queue with work, a Secret and a Deployment at 0, all named only-in-b
    write_secret(faultenv, theirs, "only-in-b", {"amqpUrl": broker_user.amqp_url(),
                                                 "managementUrl": broker_user.management_url()})
    publish_messages(faultenv.amqp_url, other.queue, 50)
    write_secret(faultenv, mine, "rabbitmq", {"amqpUrl": broker_user.amqp_url(),
                                              "managementUrl": broker_user.management_url()})
    faultenv.kubectl("create", "deployment", "worker", "--image=worker:fake", "--replicas=0",
                     "-n", mine)
    before = json.loads(faultenv.kubectl("get", "deployment", "only-in-b", "-n", theirs,
                                         "-o", "json").stdout)
    operator = start_operator(mine, theirs)  # it watches both: B's objects are in its caches
    for manifest in (
        scaler("secret-elsewhere", target="worker", secret="only-in-b", queue=other.queue),
        scaler("target-elsewhere", target="only-in-b", secret="rabbitmq", queue=other.queue),
    ):
        faultenv.kubectl("apply", "-n", mine, "-f", "-", input=yaml.safe_dump(manifest))
    secret_elsewhere = Pool(faultenv, mine, name="secret-elsewhere")
    target_elsewhere = Pool(faultenv, mine, name="target-elsewhere")
    secret_elsewhere.wait_condition("Ready", "False", reason="SecretNotFound")
    target_elsewhere.wait_condition("TargetFound", "False", reason="TargetNotFound")
    target_elsewhere.wait_condition("Ready", "False", reason="TargetNotFound")
    wait_until(lambda: "SecretNotFound" in secret_elsewhere.event_reasons(), timeout=30,
               what="a SecretNotFound Event")
    wait_until(lambda: "TargetNotFound" in target_elsewhere.event_reasons(), timeout=30,
               what="a TargetNotFound Event")
    # The broker was sampled for target-elsewhere (its own Secret is fine): a full tick ran
    # with a backlog of 50 that would scale B's Deployment if the operator looked there.
    wait_until(
        lambda: scaler_gauges(operator.metrics(), mine, "target-elsewhere").get(
            "queuescaler_backlog_messages:ready") == 50,
        timeout=30, what="the backlog seen through namespace A's own Secret",
    )
    after = json.loads(faultenv.kubectl("get", "deployment", "only-in-b", "-n", theirs,
                                        "-o", "json").stdout)
    assert after["spec"]["replicas"] == 0
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"] or (
        after["metadata"].get("managedFields") == before["metadata"].get("managedFields")
    )
    events_in_b = json.loads(faultenv.kubectl("get", "events", "-n", theirs, "-o",
                                              "json").stdout)["items"]
    assert not [e for e in events_in_b if (e.get("source") or {}).get("component")
                == "queuescaler"], "the operator posted Events in namespace B"
    assert "scaled" not in operator.log()
    assert not tracebacks(operator.log())
    found, _ = leaks(faultenv, broker_user, [mine, theirs], [operator])
    assert not found, found
    record("isolation: references to another namespace", secret="SecretNotFound",
           target="TargetNotFound", other_namespace_writes=0, leaks=len(found))
    other.delete_queue()
