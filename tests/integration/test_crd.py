"""The QueueScaler CRD on the real apiserver: it installs, teaches, defaults, and refuses bad input.

Everything here goes through kubectl, as a user would. Nothing is mocked: a check that passes
here passes because the apiserver itself accepted, defaulted or refused the object.
"""

from __future__ import annotations

import copy
import json
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from queuescaler.sources.registry import parse_spec
from queuescaler_testkit.env import CRD as CRD_PATH
from queuescaler_testkit.env import CRD_NAME, REPO, TestEnv, wait_until

pytestmark = pytest.mark.integration

EXAMPLES_DIR = REPO / "examples"
EXAMPLES = sorted(path for path in EXAMPLES_DIR.iterdir() if path.is_dir())
FIELD_MANAGER = "queuescaler-tests"

REMOVE = object()
"""Marks a field that a row of the invalid-spec table takes away."""


def output(result: Any) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def flat(text: str) -> str:
    """Whitespace collapsed, so wrapped output compares with the schema's text."""
    return " ".join(text.split())


def schema() -> dict[str, Any]:
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    root: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return root


def schema_node(dotted: str) -> dict[str, Any]:
    node = schema()
    for name in dotted.split("."):
        node = node["properties"][name]
    return node


@pytest.fixture(scope="module")
def crd(testenv: TestEnv) -> str:
    """The CRD from crds/, applied server-side and Established, with the kind discoverable."""
    testenv.apply_crd(field_manager=FIELD_MANAGER)
    return CRD_NAME


@pytest.fixture(scope="module")
def crd_namespace(testenv: Any, crd: str) -> Iterator[str]:
    name = f"crd-test-{secrets.token_hex(3)}"
    testenv.kubectl("create", "namespace", name)
    yield name
    testenv.kubectl("delete", "namespace", name, "--wait=false", "--ignore-not-found")


def minimal_spec() -> dict[str, Any]:
    """The least a user must write: target, upper bound, queue and Secret."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "maxReplicas": 10,
        "source": {"rabbitmq": {"queue": "work", "connectionSecretRef": {"name": "rabbitmq"}}},
    }


def queuescaler(name: str, spec: dict[str, Any]) -> str:
    return json.dumps(
        {
            "apiVersion": "queuescaler.io/v1alpha1",
            "kind": "QueueScaler",
            "metadata": {"name": name},
            "spec": spec,
        }
    )


def changed(spec: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """A copy of `spec` with each dotted path set to its value, or removed for REMOVE."""
    result = copy.deepcopy(spec)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split(".")
        node = result
        for name in parents:
            node = node.setdefault(name, {})
        if value is REMOVE:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return result


def dry_run(testenv: Any, crd_namespace: str, name: str, spec: dict[str, Any]) -> Any:
    return testenv.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        crd_namespace,
        "-f",
        "-",
        input=queuescaler(name, spec),
        check=False,
    )


def test_the_crd_is_installed_and_established(testenv: Any, crd: str) -> None:
    result = testenv.kubectl("get", "crd", crd, "-o", "jsonpath={.status.acceptedNames.shortNames}")
    assert json.loads(result.stdout) == ["qs"]


def test_every_example_directory_is_covered() -> None:
    names = {path.name for path in EXAMPLES}
    assert {"activemq-stomp", "celery-is-prime", "celery-redis", "kafka-consumer", "pika-worker",
            "scale-to-zero"} <= names


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_an_example_is_accepted(testenv: Any, crd_namespace: str, example: Path) -> None:
    result = testenv.kubectl(
        "apply", "--dry-run=server", "-f", str(example), "-n", crd_namespace, check=False
    )
    assert result.returncode == 0, output(result)
    assert "queuescaler.queuescaler.io/" in result.stdout, output(result)


@pytest.mark.parametrize("example", EXAMPLES, ids=[path.name for path in EXAMPLES])
def test_an_example_follows_the_conventions(example: Path) -> None:
    """Secrets carry their broker's URL keys; workers know their pod's name (AMQP connection
    name, Celery node name)."""
    documents = [
        doc
        for path in sorted(example.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8"))
        if doc
    ]
    assert documents, f"{example} holds no manifests"
    scalers = [doc for doc in documents if doc["kind"] == "QueueScaler"]
    assert len(scalers) == 1, example.name
    # Per broker: the Secret's keys, and the worker's variable that takes the broker URL.
    secret_keys, url_variable, url_key = {
        "rabbitmq": ({"amqpUrl", "managementUrl"}, "AMQP_URL", "amqpUrl"),
        "redis": ({"redisUrl"}, "REDIS_URL", "redisUrl"),
        "kafka": ({"bootstrapServers"}, "BOOTSTRAP_SERVERS", "bootstrapServers"),
        # The operator reads Jolokia (jolokiaUrl and its login); the workers' STOMP address and
        # login are one more key, which the operator does not read.
        "activemq": ({"jolokiaUrl", "username", "password", "stompUrl"}, "STOMP_URL", "stompUrl"),
    }[next(iter(scalers[0]["spec"]["source"]))]
    for doc in documents:
        where = f"{example.name}: {doc['kind']} {doc['metadata']['name']}"
        # No namespace in the files: they land in the current one (default) or the one named
        # with -n.
        assert "namespace" not in doc["metadata"], where
        if doc["kind"] == "Secret":
            assert set(doc["stringData"]) == secret_keys, where
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                env = {item["name"]: item for item in container.get("env", [])}
                assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
                assert env[url_variable]["valueFrom"]["secretKeyRef"]["key"] == url_key
    parse_spec(scalers[0]["spec"])  # the operator reads the example as the apiserver does


def test_the_minimal_spec_is_accepted(testenv: Any, crd_namespace: str) -> None:
    result = dry_run(testenv, crd_namespace, "minimal", minimal_spec())
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"minReplicas": 0, "maxReplicas": 1}, id="scale-to-zero-pool-of-one"),
        pytest.param({"minReplicas": 3, "maxReplicas": 3}, id="min-equals-max"),
        pytest.param(
            {"source.rabbitmq.queue": REMOVE, "source.rabbitmq.queues": ["a", "b"]},
            id="several-queues",
        ),
        pytest.param({"behavior.tolerance": 0}, id="no-dead-band"),
        pytest.param({"minReplicas": 2, "fallback.replicas": 2}, id="fallback-at-min"),
        pytest.param({"fallback.replicas": 10}, id="fallback-at-max"),
        pytest.param(
            {"scaleTargetRef.apiVersion": "example.com/v1beta2", "scaleTargetRef.kind": "Pool"},
            id="custom-scalable-target",
        ),
        pytest.param({"scaleTargetRef.name": "thumbnail-worker.v2"}, id="dotted-target-name"),
        pytest.param({"behavior.scaleUp.maxStepPercent": 1000}, id="percent-at-its-maximum"),
        pytest.param({"paused": True, "dryRun": True}, id="paused-shadow"),
        pytest.param(
            {
                "source.rabbitmq": REMOVE,
                "source.redis": {
                    "queues": ["celery", "video"],
                    "keyPrefix": "app1:",
                    "prioritySeparator": "\x06\x16",
                    "connectionSecretRef": {"name": "redis"},
                },
            },
            id="celery-on-redis",
        ),
        pytest.param(
            {
                "source.rabbitmq": REMOVE,
                "source.kafka": {
                    "topics": ["thumbnails", "thumbnails.retry"],
                    "consumerGroup": "thumbnail-workers",
                    "bootstrapServers": ["kafka-0.kafka:9092", "[fd00::1]:9093"],
                    "offsetResetPolicy": "earliest",
                    "allowIdleConsumers": True,
                    "connectionSecretRef": {"name": "kafka"},
                },
            },
            id="kafka-consumer-group",
        ),
        pytest.param(
            {
                "source.rabbitmq": REMOVE,
                "source.activemq": {
                    "queues": ["orders", "weird.name:1"],
                    "flavor": "artemis",
                    "brokerName": "0.0.0.0",
                    "address": "events",
                    "routingType": "multicast",
                    "includeUnacked": False,
                    "connectionSecretRef": {"name": "artemis"},
                },
            },
            id="artemis-subscription-queues",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.activemq": {
                "queue": "orders", "connectionSecretRef": {"name": "activemq"}}},
            id="activemq-flavor-found-out",
        ),
    ],
)
def test_a_valid_variant_is_accepted(
    testenv: Any, crd_namespace: str, changes: dict[str, Any]
) -> None:
    result = dry_run(testenv, crd_namespace, "variant", changed(minimal_spec(), changes))
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        pytest.param({"minReplicas": 5, "maxReplicas": 2}, "spec.maxReplicas", id="max-below-min"),
        pytest.param({"maxReplicas": 0}, "spec.maxReplicas", id="max-zero"),
        pytest.param({"maxReplicas": REMOVE}, "spec.maxReplicas", id="max-missing"),
        pytest.param({"maxReplicas": "ten"}, "spec.maxReplicas", id="max-not-a-number"),
        pytest.param({"minReplicas": -1}, "spec.minReplicas", id="min-negative"),
        pytest.param({"maxReplicas": 100001}, "spec.maxReplicas", id="max-too-large"),
        pytest.param(
            {"source.rabbitmq.queues": ["a"]}, "spec.source.rabbitmq", id="queue-and-queues"
        ),
        pytest.param(
            {"source.rabbitmq.queue": REMOVE},
            "spec.source.rabbitmq",
            id="neither-queue-nor-queues",
        ),
        pytest.param(
            {"source.rabbitmq.queue": REMOVE, "source.rabbitmq.queues": []},
            "spec.source.rabbitmq.queues",
            id="queues-empty",
        ),
        pytest.param(
            {"source.rabbitmq.queue": REMOVE, "source.rabbitmq.queues": ["a", "b", "a"]},
            "spec.source.rabbitmq.queues",
            id="queues-repeated",
        ),
        pytest.param({"source.rabbitmq.queue": ""}, "spec.source.rabbitmq.queue", id="queue-empty"),
        pytest.param({"source.rabbitmq.vhost": ""}, "spec.source.rabbitmq.vhost", id="vhost-empty"),
        pytest.param({"source": REMOVE}, "spec.source", id="source-missing"),
        # source is then {}: the exactly-one-broker rule on source refuses it, naming source.
        pytest.param({"source.rabbitmq": REMOVE}, "spec.source", id="rabbitmq-missing"),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.nats": {"queue": "work"}},
            "spec.source",
            id="only-an-unknown-broker",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.kafka": {
                "topic": "a", "topics": ["b"], "consumerGroup": "g",
                "connectionSecretRef": {"name": "k"}}},
            "spec.source.kafka",
            id="kafka-topic-and-topics",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.kafka": {
                "topic": "a", "connectionSecretRef": {"name": "k"}}},
            "spec.source.kafka.consumerGroup",
            id="kafka-without-group",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.kafka": {
                "topic": "a", "consumerGroup": "g", "offsetResetPolicy": "none",
                "connectionSecretRef": {"name": "k"}}},
            "spec.source.kafka.offsetResetPolicy",
            id="kafka-reset-policy-unknown",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.kafka": {
                "topic": "a b", "consumerGroup": "g", "connectionSecretRef": {"name": "k"}}},
            "spec.source.kafka.topic",
            id="kafka-topic-name-invalid",
        ),
        pytest.param(
            {
                "source.rabbitmq": REMOVE,
                "source.redis": {
                    "queue": "a", "queues": ["b"], "connectionSecretRef": {"name": "r"}
                },
            },
            "spec.source.redis",
            id="redis-queue-and-queues",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.activemq": {
                "queue": "a", "queues": ["b"], "connectionSecretRef": {"name": "a"}}},
            "spec.source.activemq",
            id="activemq-queue-and-queues",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.activemq": {
                "queue": "a", "flavor": "classic", "address": "x",
                "connectionSecretRef": {"name": "a"}}},
            "spec.source.activemq",
            id="activemq-classic-with-an-artemis-address",
        ),
        pytest.param(
            {"source.rabbitmq": REMOVE, "source.activemq": {
                "queue": "a", "flavor": "hornetq", "connectionSecretRef": {"name": "a"}}},
            "spec.source.activemq.flavor",
            id="activemq-flavor-unknown",
        ),
        pytest.param(
            {"source.rabbitmq.connectionSecretRef.name": REMOVE},
            "spec.source.rabbitmq.connectionSecretRef.name",
            id="secret-name-missing",
        ),
        pytest.param(
            {"source.rabbitmq.connectionSecretRef.name": "Rabbit MQ"},
            "spec.source.rabbitmq.connectionSecretRef.name",
            id="secret-name-invalid",
        ),
        pytest.param(
            {"target.messagesPerReplica": 0},
            "spec.target.messagesPerReplica",
            id="messages-per-replica-zero",
        ),
        pytest.param(
            {"target.drainSeconds": 0}, "spec.target.drainSeconds", id="drain-seconds-zero"
        ),
        pytest.param(
            {"target.drainSeconds": 10**7}, "spec.target.drainSeconds", id="drain-seconds-huge"
        ),
        pytest.param(
            {"pollingIntervalSeconds": 0}, "spec.pollingIntervalSeconds", id="polling-zero"
        ),
        pytest.param(
            {"pollingIntervalSeconds": 86400}, "spec.pollingIntervalSeconds", id="polling-a-day"
        ),
        pytest.param({"activation.messages": 0}, "spec.activation.messages", id="activation-zero"),
        pytest.param({"behavior.tolerance": 1}, "spec.behavior.tolerance", id="tolerance-one"),
        pytest.param(
            {"behavior.tolerance": -0.1}, "spec.behavior.tolerance", id="tolerance-negative"
        ),
        pytest.param(
            {"behavior.scaleUp.maxStepPercent": 0},
            "spec.behavior.scaleUp.maxStepPercent",
            id="scale-up-percent-zero",
        ),
        pytest.param(
            {"behavior.scaleDown.maxStepPercent": 101},
            "spec.behavior.scaleDown.maxStepPercent",
            id="scale-down-percent-too-large",
        ),
        pytest.param(
            {"behavior.scaleUp.maxStepReplicas": 0},
            "spec.behavior.scaleUp.maxStepReplicas",
            id="scale-up-step-zero",
        ),
        pytest.param(
            {"behavior.scaleDown.stabilizationSeconds": 3601},
            "spec.behavior.scaleDown.stabilizationSeconds",
            id="scale-down-window-over-an-hour",
        ),
        pytest.param(
            {"behavior.scaleDown.cooldownSeconds": -1},
            "spec.behavior.scaleDown.cooldownSeconds",
            id="scale-down-cooldown-negative",
        ),
        pytest.param(
            {"behavior.scaleDown.protectBusyWorkers": "yes"},
            "spec.behavior.scaleDown.protectBusyWorkers",
            id="protect-busy-not-a-boolean",
        ),
        pytest.param({"fallback.replicas": 11}, "spec.fallback.replicas", id="fallback-above-max"),
        pytest.param(
            {"minReplicas": 2, "fallback.replicas": 1},
            "spec.fallback.replicas",
            id="fallback-below-min",
        ),
        pytest.param(
            {"fallback.afterFailures": 0}, "spec.fallback.afterFailures", id="after-failures-zero"
        ),
        pytest.param(
            {"scaleTargetRef.name": REMOVE}, "spec.scaleTargetRef.name", id="target-name-missing"
        ),
        pytest.param(
            {"scaleTargetRef.name": ""}, "spec.scaleTargetRef.name", id="target-name-empty"
        ),
        pytest.param(
            {"scaleTargetRef.name": "Worker_1"},
            "spec.scaleTargetRef.name",
            id="target-name-invalid",
        ),
        pytest.param(
            {"scaleTargetRef.kind": REMOVE}, "spec.scaleTargetRef.kind", id="target-kind-missing"
        ),
        pytest.param(
            {"scaleTargetRef.kind": "deployment"},
            "spec.scaleTargetRef.kind",
            id="target-kind-lowercase",
        ),
        pytest.param(
            {"scaleTargetRef.apiVersion": "apps"},
            "spec.scaleTargetRef.apiVersion",
            id="target-api-version-without-version",
        ),
        pytest.param({"paused": "no"}, "spec.paused", id="paused-not-a-boolean"),
    ],
)
def test_an_invalid_spec_is_refused_naming_the_field(
    testenv: Any, crd_namespace: str, changes: dict[str, Any], field: str
) -> None:
    result = dry_run(testenv, crd_namespace, "invalid", changed(minimal_spec(), changes))
    assert result.returncode != 0, output(result)
    assert field in result.stderr, output(result)


SOURCE_RULE = schema_node("spec.source")["x-kubernetes-validations"][0]


def test_a_source_without_a_broker_is_refused_by_the_exactly_one_rule(
    testenv: Any, crd_namespace: str
) -> None:
    result = dry_run(
        testenv, crd_namespace, "no-broker", changed(minimal_spec(), {"source.rabbitmq": REMOVE})
    )
    assert result.returncode != 0, output(result)
    assert "spec.source: Invalid value" in result.stderr, output(result)
    assert flat(SOURCE_RULE["message"]) in flat(result.stderr), output(result)


@pytest.fixture(scope="module")
def two_broker_kind(testenv: Any) -> Iterator[str]:
    """This CRD as it will be once a fifth broker is added (a stand-in `nats`): a sibling
    block under source and one more has() in the exactly-one rule, and nothing else changed.

    It is served under a group and kind of its own (no short name, no categories), so it
    never shadows the real QueueScaler for other tests sharing the cluster.
    """
    group = f"t{secrets.token_hex(3)}.crd-test.queuescaler.io"
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    crd["metadata"] = {"name": f"brokerchoices.{group}"}
    crd["spec"]["group"] = group
    crd["spec"]["names"] = {
        "kind": "BrokerChoice",
        "listKind": "BrokerChoiceList",
        "plural": "brokerchoices",
        "singular": "brokerchoice",
    }
    source = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["source"]
    source["properties"]["nats"] = {
        "type": "object",
        "description": "A stand-in fifth broker.",
        "properties": {"queue": {"type": "string", "description": "A list.", "maxLength": 255}},
    }
    (rule,) = source["x-kubernetes-validations"]
    one = "[has(self.rabbitmq), has(self.redis), has(self.kafka), has(self.activemq)]"
    assert one in rule["rule"], "the exactly-one rule changed shape: update this fixture"
    rule["rule"] = rule["rule"].replace(one, one.replace("]", ", has(self.nats)]"))
    rule["message"] = f"{rule['message']}, nats"
    testenv.kubectl("apply", "--server-side", "-f", "-", input=json.dumps(crd))
    name = crd["metadata"]["name"]
    testenv.kubectl("wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}")
    kind = f"brokerchoices.{group}"
    wait_until(
        lambda: testenv.kubectl("get", kind, "-A", check=False).returncode == 0,
        timeout=60,
        what=f"{kind} in discovery",
    )
    yield f"{group}/v1alpha1"
    testenv.kubectl("delete", "crd", name, "--wait=false", "--ignore-not-found")


@pytest.mark.parametrize(
    ("brokers", "accepted"),
    [
        pytest.param(["rabbitmq"], True, id="rabbitmq-alone"),
        pytest.param(["nats"], True, id="nats-alone"),
        pytest.param(["rabbitmq", "nats"], False, id="two-brokers"),
        pytest.param([], False, id="no-broker"),
    ],
)
def test_a_second_broker_is_additive_and_two_are_refused(
    testenv: Any, crd_namespace: str, two_broker_kind: str, brokers: list[str], accepted: bool
) -> None:
    blocks = {
        "rabbitmq": minimal_spec()["source"]["rabbitmq"],
        "nats": {"queue": "work"},
    }
    spec = {**minimal_spec(), "source": {name: blocks[name] for name in brokers}}
    manifest = {
        "apiVersion": two_broker_kind,
        "kind": "BrokerChoice",
        "metadata": {"name": "choice"},
        "spec": spec,
    }
    result = testenv.kubectl(
        "apply", "--dry-run=server", "-n", crd_namespace, "-f", "-",
        input=json.dumps(manifest), check=False,
    )
    if accepted:
        assert result.returncode == 0, output(result)
    else:
        assert result.returncode != 0, output(result)
        assert "spec.source: Invalid value" in result.stderr, output(result)
        assert "exactly one broker block, one of: rabbitmq, redis, kafka, activemq, nats" in flat(
            result.stderr), output(result)


def test_a_missing_spec_is_refused(testenv: Any, crd_namespace: str) -> None:
    manifest = json.dumps(
        {"apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler", "metadata": {"name": "x"}}
    )
    result = testenv.kubectl(
        "apply", "--dry-run=server", "-n", crd_namespace, "-f", "-", input=manifest, check=False
    )
    assert result.returncode != 0, output(result)
    assert "spec" in result.stderr, output(result)


DESIGNED_DEFAULTS = {
    "minReplicas": 1,
    "pollingIntervalSeconds": 15,
    "source.rabbitmq.vhost": "/",
    "source.rabbitmq.includeUnacked": True,
    "target.messagesPerReplica": 10,
    "activation.messages": 1,
    "behavior.tolerance": 0.1,
    "behavior.scaleUp.cooldownSeconds": 15,
    "behavior.scaleUp.maxStepReplicas": 100,
    "behavior.scaleUp.maxStepPercent": 100,
    "behavior.scaleUp.stabilizationSeconds": 0,
    "behavior.scaleDown.cooldownSeconds": 45,
    "behavior.scaleDown.stabilizationSeconds": 300,
    "behavior.scaleDown.maxStepPercent": 100,
    "behavior.scaleDown.maxStepReplicas": 1,
    "behavior.scaleDown.protectBusyWorkers": True,
    "fallback.afterFailures": 3,
    "paused": False,
    "dryRun": False,
}


def read_path(document: dict[str, Any], dotted: str) -> Any:
    node: Any = document
    for name in dotted.split("."):
        if not isinstance(node, dict) or name not in node:
            return REMOVE
        node = node[name]
    return node


def test_the_server_applies_the_defaults(testenv: Any, crd_namespace: str) -> None:
    testenv.kubectl(
        "apply", "-n", crd_namespace, "-f", "-", input=queuescaler("defaults", minimal_spec())
    )
    result = testenv.kubectl("get", "qs", "defaults", "-n", crd_namespace, "-o", "json")
    stored = json.loads(result.stdout)
    spec = stored["spec"]
    applied = {path: read_path(spec, path) for path in DESIGNED_DEFAULTS}
    assert applied == DESIGNED_DEFAULTS
    assert read_path(spec, "target.drainSeconds") is REMOVE
    assert read_path(spec, "fallback.replicas") is REMOVE


def test_the_servers_defaults_are_the_crd_files(testenv: Any, crd_namespace: str) -> None:
    """Nothing defaulted on the server that the file does not say, and the reverse."""
    result = testenv.kubectl(
        "apply",
        "--dry-run=server",
        "-n",
        crd_namespace,
        "-o",
        "json",
        "-f",
        "-",
        input=queuescaler("echo", minimal_spec()),
    )
    spec = json.loads(result.stdout)["spec"]

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict):
            return {prefix.rstrip("."): node}
        found: dict[str, Any] = {}
        for key, value in node.items():
            found.update(leaves(value, f"{prefix}{key}."))
        return found

    added = {
        path: value
        for path, value in leaves(spec).items()
        if read_path(minimal_spec(), path) is REMOVE
    }
    assert added == DESIGNED_DEFAULTS


FULL_STATUS = {
    "observedGeneration": 1,
    "currentReplicas": 3,
    "desiredReplicas": 5,
    "backlog": {"ready": 40, "unacked": 2, "total": 42},
    "rates": {"publish": 12.5, "ack": 3.5},
    "lastScaleTime": "2026-11-24T00:00:00Z",
    "lastDecision": {
        "replicas": 5,
        "reason": "backlog",
        "at": "2026-11-24T00:00:15Z",
        "message": "42 messages at 10 per replica",
    },
    "recommendations": [
        {"at": "2026-11-24T00:00:00Z", "replicas": 4},
        {"at": "2026-11-24T00:00:15Z", "replicas": 5},
    ],
    "perReplicaRate": 1.25,
    "perReplicaRateMeasured": False,
    "probeFailedAt": "2026-11-23T23:50:00Z",
    "probeFailures": 2,
    "consecutiveFailures": 0,
    "lastSampleTime": "2026-11-24T00:00:15Z",
    "workers": {"matched": 3, "busy": 2, "unmatched": 1},
    "conditions": [
        {
            "type": "Ready",
            "status": "True",
            "reason": "Sampled",
            "message": "",
            "lastTransitionTime": "2026-11-24T00:00:00Z",
            "observedGeneration": 1,
        },
        {
            "type": "BrokerReachable",
            "status": "True",
            "reason": "Sampled",
            "message": "management API answered",
            "lastTransitionTime": "2026-11-24T00:00:00Z",
            "observedGeneration": 1,
        },
    ],
}


@pytest.fixture(scope="module")
def reporting(testenv: Any, crd_namespace: str) -> str:
    """A QueueScaler whose status the operator would have written, written through /status."""
    name = "reporting"
    testenv.kubectl(
        "apply", "-n", crd_namespace, "-f", "-", input=queuescaler(name, minimal_spec())
    )
    testenv.kubectl(
        "patch",
        "qs",
        name,
        "-n",
        crd_namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": FULL_STATUS}),
    )
    return name


def test_the_status_keeps_every_field_the_operator_writes(
    testenv: Any, crd_namespace: str, reporting: str
) -> None:
    result = testenv.kubectl("get", "qs", reporting, "-n", crd_namespace, "-o", "json")
    stored = json.loads(result.stdout)
    assert stored["status"] == FULL_STATUS


def test_get_shows_the_designed_columns(testenv: Any, crd_namespace: str, reporting: str) -> None:
    result = testenv.kubectl("get", "qs", reporting, "-n", crd_namespace)
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "NAME",
        "TARGET",
        "MIN",
        "MAX",
        "BACKLOG",
        "ACK/S",
        "DESIRED",
        "CURRENT",
        "SAMPLED",
        "AGE",
    ]
    cells = row.split()
    assert cells[:8] == [reporting, "worker", "1", "10", "42", "3.5", "5", "3"]
    # SAMPLED is the age of status.lastSampleTime (days ago here), AGE the object's (seconds).
    assert re.fullmatch(r"([0-9]+[smhdy])+", cells[8]), row
    assert cells[8] != cells[9], row


@pytest.mark.parametrize(
    ("explained", "schema_path", "fields"),
    [
        pytest.param(
            "qs.spec.behavior",
            "spec.behavior",
            ["tolerance", "scaleUp", "scaleDown"],
            id="behavior",
        ),
        pytest.param(
            "qs.spec.behavior.scaleDown",
            "spec.behavior.scaleDown",
            ["cooldownSeconds", "stabilizationSeconds", "protectBusyWorkers"],
            id="scale-down",
        ),
        pytest.param(
            "qs.spec.source.rabbitmq",
            "spec.source.rabbitmq",
            ["queue", "queues", "vhost", "connectionSecretRef", "includeUnacked"],
            id="rabbitmq",
        ),
        pytest.param(
            "qs.spec.source.kafka",
            "spec.source.kafka",
            ["bootstrapServers", "topic", "topics", "consumerGroup", "offsetResetPolicy",
             "allowIdleConsumers", "limitToPartitionsWithLag", "connectionSecretRef"],
            id="kafka",
        ),
        pytest.param(
            "qs.spec.source.activemq",
            "spec.source.activemq",
            ["queue", "queues", "flavor", "brokerName", "address", "routingType",
             "includeUnacked", "connectionSecretRef"],
            id="activemq",
        ),
        pytest.param(
            "qs.status.lastDecision",
            "status.lastDecision",
            ["replicas", "reason", "at", "message"],
            id="last-decision",
        ),
    ],
)
def test_explain_teaches_the_fields(
    testenv: Any, crd: str, explained: str, schema_path: str, fields: list[str]
) -> None:
    node = schema_node(schema_path)

    def explains() -> str | None:
        # The apiserver publishes a new CRD's OpenAPI a little after it is Established.
        result = testenv.kubectl("explain", explained, check=False)
        text = flat(result.stdout)
        return text if flat(node["description"]) in text else None

    text = wait_until(explains, timeout=60, what=f"kubectl explain {explained}")
    for field in fields:
        assert field in text
        assert flat(node["properties"][field]["description"]) in text
