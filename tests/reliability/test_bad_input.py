"""Bad input: generated QueueScaler specs against the real apiserver and operator, and
Secrets that cannot be used.

A generated spec is created for real (not a dry run) in one namespace watched by one
operator. Each is either refused at admission with a message, or accepted and handled: it
gets a Ready condition, the operator's parser agrees with the apiserver (no InvalidSpec),
and the operator's log holds no traceback. Every generated object scales nothing (dryRun),
so a spec asking for 10,000 replicas cannot flood the cluster with pods.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from queuescaler_testkit.env import TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.status import condition_of
from reliability.envctl import OperatorFactory
from reliability.scenario import BrokerUser, leaks, record, tracebacks, write_secret

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

EXAMPLES = 60

INT32 = 2**31 - 1
WRONG_TYPES = st.sampled_from(["5", "", 1.5, True, None, [], {}, [1], {"a": 1}])
COUNTS = st.sampled_from([-1, 0, 1, 2, 100, 1000, 3600, 3601, 10000, 10001, 86401, INT32,
                          INT32 + 1, 2**53]) | st.integers(-3, 12)
NAMES = st.sampled_from(["worker", "absent", "", "a" * 254, "Upper", "with space", "a/b",
                         "ünï", "-lead", "ok.name", "x"])
NUMBERS = st.sampled_from([-0.1, 0, 0.05, 0.5, 0.999, 1, 1.5, 1e308])

FIELDS: dict[tuple[str, ...], st.SearchStrategy[Any]] = {
    ("minReplicas",): COUNTS,
    ("maxReplicas",): COUNTS,
    ("pollingIntervalSeconds",): COUNTS,
    ("target", "messagesPerReplica"): COUNTS,
    ("target", "drainSeconds"): COUNTS,
    ("activation", "messages"): COUNTS,
    ("behavior", "tolerance"): NUMBERS | COUNTS,
    ("behavior", "scaleUp", "cooldownSeconds"): COUNTS,
    ("behavior", "scaleUp", "stabilizationSeconds"): COUNTS,
    ("behavior", "scaleUp", "maxStepReplicas"): COUNTS,
    ("behavior", "scaleUp", "maxStepPercent"): COUNTS,
    ("behavior", "scaleDown", "cooldownSeconds"): COUNTS,
    ("behavior", "scaleDown", "stabilizationSeconds"): COUNTS,
    ("behavior", "scaleDown", "maxStepReplicas"): COUNTS,
    ("behavior", "scaleDown", "maxStepPercent"): COUNTS,
    ("behavior", "scaleDown", "protectBusyWorkers"): st.booleans(),
    ("fallback", "afterFailures"): COUNTS,
    ("fallback", "replicas"): COUNTS,
    ("paused",): st.booleans(),
    ("scaleTargetRef", "name"): NAMES,
    ("scaleTargetRef", "kind"): st.sampled_from(["Deployment", "StatefulSet", "Pod", "Widget",
                                                 "deployment", ""]),
    ("scaleTargetRef", "apiVersion"): st.sampled_from(["apps/v1", "v1", "apps/v2",
                                                       "widgets.example.com/v1", "bad version"]),
    ("source", "rabbitmq", "queue"): NAMES,
    ("source", "rabbitmq", "queues"): st.lists(NAMES, max_size=3) | WRONG_TYPES,
    ("source", "rabbitmq", "vhost"): NAMES | st.just("/"),
    ("source", "rabbitmq", "includeUnacked"): st.booleans(),
    ("source", "rabbitmq", "connectionSecretRef", "name"): NAMES,
    ("bogusField",): st.integers(),
    ("scaleTargetRef", "namespace"): NAMES,
}
"""Every field with valid, boundary and invalid values; any may also get a wrong type or go."""

MUTATION = st.tuples(
    st.sampled_from(sorted(FIELDS)),
    st.sampled_from(["set"] * 6 + ["wrong-type", "delete"]),  # mostly in-type values
    st.data(),
)


def base_spec(queue: str) -> dict[str, Any]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": 3,
        "pollingIntervalSeconds": 2,
        "dryRun": True,
        "source": {"rabbitmq": {"queue": queue, "vhost": "queuescaler-test",
                                "connectionSecretRef": {"name": "rabbitmq"}}},
    }


def mutate(spec: dict[str, Any], path: tuple[str, ...], how: str, value: Any) -> None:
    parent = spec
    for key in path[:-1]:
        child = parent.get(key)
        if not isinstance(child, dict):
            child = parent[key] = {}
        parent = child
    if how == "delete":
        parent.pop(path[-1], None)
    else:
        parent[path[-1]] = value


@pytest.fixture
def generated(
    faultenv: TestEnv, fault_namespace: str, broker_user: BrokerUser,
    start_operator: OperatorFactory,
) -> Iterator[tuple[Pool, OperatorProcess]]:
    pool = Pool(faultenv, fault_namespace, name="worker")
    pool.create()  # the queue and the Deployment (its Secret is replaced next)
    write_secret(faultenv, fault_namespace, "rabbitmq",
                 {"amqpUrl": broker_user.amqp_url(), "managementUrl": broker_user.management_url()})
    operator = start_operator(fault_namespace)
    yield pool, operator
    pool.delete_queue()


def test_generated_specs_are_refused_with_a_message_or_handled_without_a_traceback(
    generated: tuple[Pool, OperatorProcess], broker_user: BrokerUser,
) -> None:
    pool, operator = generated
    env, ns = pool.testenv, pool.namespace
    accepted: list[str] = []
    refusals: Counter[str] = Counter()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(MUTATION, max_size=4))
    def create_one(mutations: list[tuple[tuple[str, ...], str, st.DataObject]]) -> None:
        spec = base_spec(pool.queue)
        for path, how, data in mutations:
            value = data.draw(WRONG_TYPES if how == "wrong-type" else FIELDS[path])
            mutate(spec, path, how, value)
        name = f"gen-{len(accepted) + sum(refusals.values())}"
        manifest = {"apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
                    "metadata": {"name": name}, "spec": spec}
        result = env.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(manifest),
                             check=False)
        if result.returncode == 0:
            accepted.append(name)
            return
        message = result.stderr.strip()
        assert message, f"refused without a message: {spec}"
        assert "is invalid" in message or "unknown field" in message or "error" in message, message
        refusals[_kind_of_refusal(message)] += 1

    create_one()

    def ready_everywhere() -> list[dict[str, Any]] | None:
        items = json.loads(env.kubectl("get", "qs", "-n", ns, "-o", "json").stdout)["items"]
        ready = [i for i in items if condition_of(i, "Ready")]
        return items if len(ready) == len(accepted) else None

    items = wait_until(ready_everywhere, timeout=120,
                       what="a Ready condition on every accepted spec")
    reasons = Counter((condition_of(i, "Ready") or {})["reason"] for i in items)
    assert operator.process is not None and operator.process.poll() is None
    traces = tracebacks(operator.log())
    found, _ = leaks(env, broker_user, [ns], [operator])
    record("generated QueueScaler specs", examples=len(accepted) + sum(refusals.values()),
           accepted=len(accepted), refused=sum(refusals.values()),
           refusals=dict(refusals), ready_reasons=dict(reasons), tracebacks=len(traces),
           leaks=len(found))
    assert not traces, traces
    assert not found, found
    assert "InvalidSpec" not in reasons, (
        "the apiserver accepted a spec the operator refuses: "
        + str([i["status"]["conditions"] for i in items if "InvalidSpec" in json.dumps(i)][:3])
    )


def _kind_of_refusal(message: str) -> str:
    if "unknown field" in message:
        return "unknown field"
    if "Required value" in message:
        return "required"
    if "Invalid value" in message:
        return "invalid value"
    if "Unsupported value" in message:
        return "unsupported value"
    return "other"


# -- Secrets that cannot be used ------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_namespace(
    faultenv: TestEnv, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, OperatorProcess]]:
    """One namespace with one operator for every bad Secret (they do not interact)."""
    ns = f"r-secrets-{Path(tmp_path_factory.mktemp('s')).name[-6:].replace('_', '')}"
    faultenv.kubectl("create", "namespace", ns)
    faultenv.kubectl("create", "deployment", "worker", "--image=worker:fake", "--replicas=0",
                     "-n", ns)
    operator = OperatorProcess(faultenv, tmp_path_factory.mktemp("op") / "operator.log",
                               "-n", ns, "--secret-refresh-seconds", "3").start()
    yield ns, operator
    operator.stop()
    faultenv.kubectl("delete", "namespace", ns, "--wait=false", check=False)


CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


BAD_SECRETS = [
    pytest.param({"managementUrl": "{management}"}, "amqpUrl", id="amqp-url-missing"),
    pytest.param({"amqpUrl": ""}, "amqpUrl", id="amqp-url-empty"),
    pytest.param({"amqpUrl": b"\xff\xfe\x00binary"}, "amqpUrl", id="amqp-url-not-text"),
    pytest.param({"amqpUrl": "amqp://u:{secret}@[::1/v"}, "amqpUrl", id="amqp-url-not-parsable"),
    pytest.param({"amqpUrl": "amqp://u:{secret}@127.0.0.1:port/v"}, "amqpUrl",
                 id="amqp-url-port-not-a-number"),
    pytest.param({"amqpUrl": "{management}"}, "amqpUrl", id="amqp-url-with-http-scheme"),
    pytest.param({"amqpUrl": "amqp:///vhost"}, "amqpUrl", id="amqp-url-without-host"),
    pytest.param({"amqpUrl": "{amqp}", "managementUrl": "ftp://u:{secret}@127.0.0.1:21"},
                 "managementUrl", id="management-url-with-ftp-scheme"),
    pytest.param({"amqpUrl": "{amqp}", "managementUrl": " \n"}, "managementUrl",
                 id="management-url-blank"),
    pytest.param({"amqpUrl": "{amqp}", "ca.crt": "not a certificate"}, "ca.crt", id="ca-not-pem"),
    pytest.param({"amqpUrl": "{amqp}", "tls.crt": CERT}, "tls.key",
                 id="client-certificate-without-key"),
]
"""Secret data (placeholders filled with the session's URLs and password) and the key blamed."""


@pytest.mark.parametrize(("data", "key"), BAD_SECRETS)
def test_unusable_secret_gives_bad_secret_condition_not_a_traceback(
    data: dict[str, str | bytes], key: str, secret_namespace: tuple[str, OperatorProcess],
    faultenv: TestEnv, broker_user: BrokerUser, request: pytest.FixtureRequest,
) -> None:
    ns, operator = secret_namespace
    name = request.node.callspec.id
    fill = {"amqp": broker_user.amqp_url(), "management": broker_user.management_url(),
            "secret": broker_user.password}
    write_secret(faultenv, ns, name, {
        k: v.format(**fill) if isinstance(v, str) else v for k, v in data.items()
    })
    pool = Pool(faultenv, ns, name=name, queue="unused")
    manifest = {
        "apiVersion": "queuescaler.io/v1alpha1", "kind": "QueueScaler",
        "metadata": {"name": name},
        "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                    "name": "worker"},
                 "maxReplicas": 2, "pollingIntervalSeconds": 2,
                 "source": {"rabbitmq": {"queue": "unused",
                                         "connectionSecretRef": {"name": name}}}},
    }
    faultenv.kubectl("apply", "-n", ns, "-f", "-", input=yaml.safe_dump(manifest))
    ready = pool.wait_condition("Ready", "False", reason="BadSecret", timeout=60)
    assert key in ready["message"], ready
    pool.wait_condition("BrokerReachable", "False", reason="BadSecret")
    wait_until(lambda: "BadSecret" in pool.event_reasons(), timeout=30,
               what="a BadSecret Event")
    assert operator.process is not None and operator.process.poll() is None
    assert not tracebacks(operator.log())
    found, _ = leaks(faultenv, broker_user, [ns], [operator])
    assert not found, found
    record(f"bad Secret: {name}", condition="Ready=False BadSecret", tracebacks=0,
           leaks=len(found))
