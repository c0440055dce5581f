"""The kafka source's configuration: its spec block, its Secret, and how both reach the source.

Every refusal names its field or key, never a value; passwords never reach a message or a
repr, whatever went wrong.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, QueueRef, SourceError
from queuescaler.core.spec import SecretRef, SpecError
from queuescaler.sources.kafka.secret import KafkaBroker, broker_from_secret
from queuescaler.sources.kafka.servers import BadServer, normalize, server
from queuescaler.sources.kafka.spec import GroupScope, KafkaSourceSpec
from queuescaler.sources.registry import SOURCES, all_defaults, parse_spec
from queuescaler_testkit.redis_server import make_ca

pytestmark = pytest.mark.unit

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
"""Registered for redaction by the code under test: unique, so no other test's text matches."""
CRD = Path(__file__).resolve().parents[2] / "crds" / "queuescaler.yaml"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    cert, _key = make_ca(tmp_path_factory.mktemp("kafka-ca"), "ca")
    return cert.read_text()


def spec_with(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "maxReplicas": 5,
        "source": {"kafka": block},
    }


BLOCK: dict[str, Any] = {
    "topic": "orders", "consumerGroup": "order-workers", "connectionSecretRef": {"name": "kafka"},
}


# --- the spec block ---------------------------------------------------------------------------


def test_the_registry_knows_kafka() -> None:
    assert SOURCES["kafka"].connector == "queuescaler.sources.kafka.source:KafkaSource"
    assert all_defaults()["source.kafka.offsetResetPolicy"] == "latest"


def test_a_minimal_block_caps_at_partitions_with_lag_and_reads_latest() -> None:
    spec = parse_spec(spec_with(BLOCK)).source
    assert spec == KafkaSourceSpec(("orders",), "order-workers", SecretRef("kafka"))
    assert (spec.broker, spec.include_in_flight, spec.secret_ref) == (
        "kafka", True, SecretRef("kafka"))
    (ref,) = spec.queues
    assert ref.name == "orders"
    assert GroupScope.from_scope(ref.scope) == GroupScope("order-workers", "latest", "lag", None)


@pytest.mark.parametrize(
    ("options", "cap"),
    [
        pytest.param({}, "lag", id="default-partitions-with-lag"),
        pytest.param({"limitToPartitionsWithLag": False}, "partitions", id="every-partition"),
        pytest.param({"allowIdleConsumers": True}, "none", id="idle-consumers-lift-every-cap"),
        pytest.param({"allowIdleConsumers": True, "limitToPartitionsWithLag": True}, "none",
                     id="idle-consumers-win-over-the-crd-default"),
    ],
)
def test_the_replica_cap_travels_in_the_scope(options: dict[str, Any], cap: str) -> None:
    spec = parse_spec(spec_with(BLOCK | options)).source
    (ref,) = spec.queues
    scope = GroupScope.from_scope(ref.scope)
    assert scope is not None and scope.cap == cap


def test_several_topics_servers_and_earliest_share_one_scope() -> None:
    block = BLOCK | {"topic": None, "topics": ["a", "b.retry"], "offsetResetPolicy": "earliest",
                     "bootstrapServers": ["Kafka-1:9093", "kafka-0", "[::1]:9092", "kafka-0:9092"]}
    spec = parse_spec(spec_with(block)).source
    scope = GroupScope("order-workers", "earliest", "lag",
                       ("[::1]:9092", "kafka-0:9092", "kafka-1:9093"))
    assert spec.queues == (QueueRef(scope.scope, "a"), QueueRef(scope.scope, "b.retry"))


def test_a_scope_reads_back_or_names_nothing() -> None:
    scope = GroupScope("g", "earliest", "partitions", ("a:1",))
    assert GroupScope.from_scope(scope.scope) == scope
    for other in ("/", "", "{}", '{"stream": "s", "group": "g"}', "[1]",
                  '{"group": "g", "reset": "soon", "cap": "lag", "servers": null}'):
        assert GroupScope.from_scope(other) is None, other


@pytest.mark.parametrize(
    ("block", "field", "message"),
    [
        pytest.param(BLOCK | {"topics": ["b"]}, "spec.source.kafka.topic",
                     "set exactly one of topic or topics", id="topic-and-topics"),
        pytest.param(BLOCK | {"topic": None}, "spec.source.kafka.topic",
                     "set exactly one of topic or topics", id="no-topic"),
        pytest.param(BLOCK | {"topic": "a b"}, "spec.source.kafka.topic",
                     "must be a Kafka topic name", id="topic-with-space"),
        pytest.param(BLOCK | {"topic": "x" * 250}, "spec.source.kafka.topic",
                     "must be a Kafka topic name", id="topic-too-long"),
        pytest.param(BLOCK | {"topic": None, "topics": ["a", "a"]}, "spec.source.kafka.topics",
                     "must not name a topic twice", id="topic-twice"),
        pytest.param(BLOCK | {"topic": None, "topics": []}, "spec.source.kafka.topics",
                     "must be a non-empty list", id="topics-empty"),
        pytest.param(BLOCK | {"topic": None, "topics": ["a", 3]}, "spec.source.kafka.topics[1]",
                     "must be a non-empty string", id="topic-not-a-string"),
        pytest.param(BLOCK | {"consumerGroup": None}, "spec.source.kafka.consumerGroup",
                     "is required", id="no-group"),
        pytest.param(BLOCK | {"consumerGroup": "g" * 256}, "spec.source.kafka.consumerGroup",
                     "must be at most 255", id="group-too-long"),
        pytest.param(BLOCK | {"offsetResetPolicy": "none"}, "spec.source.kafka.offsetResetPolicy",
                     "must be earliest or latest", id="reset-policy-unknown"),
        pytest.param(BLOCK | {"allowIdleConsumers": "yes"}, "spec.source.kafka.allowIdleConsumers",
                     "must be true or false", id="idle-not-boolean"),
        pytest.param(BLOCK | {"bootstrapServers": "a:9092"}, "spec.source.kafka.bootstrapServers",
                     "must be a list", id="servers-not-a-list"),
        pytest.param(BLOCK | {"bootstrapServers": ["a:9092", "b:0"]},
                     "spec.source.kafka.bootstrapServers", "the list: server 2 has no valid port",
                     id="server-port-zero"),
        pytest.param(BLOCK | {"bootstrapServers": ["kafka://a:9092"]},
                     "spec.source.kafka.bootstrapServers", "server 1 is a URL", id="server-url"),
        pytest.param(BLOCK | {"connectionSecretRef": None},
                     "spec.source.kafka.connectionSecretRef", "is required", id="no-secret"),
        pytest.param(BLOCK | {"queue": "orders"}, "spec.source.kafka.queue", "unknown field",
                     id="rabbitmqs-field"),
    ],
)
def test_refusals_name_their_field(block: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(spec_with({k: v for k, v in block.items() if v is not None}))
    assert refused.value.field_path == field
    assert message in refused.value.message


def test_the_crd_branch_documents_and_bounds_every_field() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    kafka = schema["properties"]["source"]["properties"]["kafka"]
    assert set(kafka["properties"]) == {
        "bootstrapServers", "topic", "topics", "consumerGroup", "offsetResetPolicy",
        "allowIdleConsumers", "limitToPartitionsWithLag", "connectionSecretRef",
    }
    assert kafka["required"] == ["consumerGroup", "connectionSecretRef"]
    assert kafka["properties"]["offsetResetPolicy"]["enum"] == ["earliest", "latest"]
    rule = schema["properties"]["source"]["x-kubernetes-validations"][0]["rule"]
    assert "has(self.kafka)" in rule
    chart = CRD.parents[1] / "charts" / "queuescaler" / "crds" / "queuescaler.yaml"
    assert chart.read_text() == CRD.read_text()


# --- bootstrap servers ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("kafka-0.kafka.svc:9093", ("kafka-0.kafka.svc", 9093), id="host-port"),
        pytest.param("kafka", ("kafka", 9092), id="host-alone"),
        pytest.param("10.0.0.7:19092", ("10.0.0.7", 19092), id="ipv4"),
        pytest.param("[fd00::1]:9094", ("fd00::1", 9094), id="ipv6"),
        pytest.param("[fd00::1]", ("fd00::1", 9092), id="ipv6-alone"),
    ],
)
def test_a_server_is_read(text: str, expected: tuple[str, int]) -> None:
    assert server(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("fd00::1:9092", id="ipv6-without-brackets"),
        pytest.param("[fd00::1:9092", id="unclosed-bracket"),
        pytest.param("[nothere]:1", id="not-an-ipv6"),
        pytest.param("host:99999", id="port-too-high"),
        pytest.param("host:http", id="port-not-a-number"),
        pytest.param("ho st:1", id="space-in-host"),
        pytest.param("SASL_SSL://host:9093", id="listener-url"),
        pytest.param("h\u00f6st:1", id="not-ascii"),
    ],
)
def test_a_bad_server_is_refused(text: str) -> None:
    with pytest.raises(BadServer):
        server(text)


def test_server_lists_are_one_cluster_whatever_their_order_and_case() -> None:
    assert normalize(["B:1", "a:2", "b:1"], "x") == normalize(["a:2", "b:1"], "x")
    with pytest.raises(BadServer, match="names more than 32"):
        normalize([f"h{i}:1" for i in range(33)], "x")


# --- the Secret ---------------------------------------------------------------------------------


def test_a_plain_cluster_needs_only_its_servers() -> None:
    broker = broker_from_secret({"bootstrapServers": " b:9092 , a:9092\n"})
    assert broker == KafkaBroker(servers=("a:9092", "b:9092"))
    assert broker.security_protocol == "PLAINTEXT"


def test_an_empty_secret_leaves_the_servers_to_the_spec() -> None:
    assert broker_from_secret({}) == KafkaBroker()


@pytest.mark.parametrize(
    ("sasl", "mechanism"),
    [
        pytest.param("plain", "PLAIN", id="plain"),
        pytest.param("PlainText", "PLAIN", id="kedas-plaintext"),
        pytest.param("scram-sha-256", "SCRAM-SHA-256", id="scram-256"),
        pytest.param("scram_sha256", "SCRAM-SHA-256", id="kedas-scram-256"),
        pytest.param("SCRAM-SHA-512", "SCRAM-SHA-512", id="scram-512"),
        pytest.param("scram_sha512", "SCRAM-SHA-512", id="kedas-scram-512"),
    ],
)
def test_sasl_mechanisms(sasl: str, mechanism: str) -> None:
    data = {"bootstrapServers": "k:9093", "sasl": sasl, "username": "svc-scaler",
            "password": PASSWORD}
    broker = broker_from_secret(data)
    assert (broker.mechanism, broker.username, broker.password) == (
        mechanism, "svc-scaler", PASSWORD)
    assert broker.security_protocol == "SASL_PLAINTEXT"
    assert PASSWORD not in repr(broker) and "svc-scaler" not in repr(broker)


def test_tls_with_a_ca(ca_pem: str) -> None:
    data = {"bootstrapServers": "k:9094", "tls": "enable", "ca.crt": ca_pem + "\n"}
    broker = broker_from_secret(data)
    assert (broker.tls, broker.ca_cert, broker.security_protocol) == (True, ca_pem.strip(), "SSL")
    assert "BEGIN" not in repr(broker)
    both = broker_from_secret(data | {"sasl": "scram-sha-512", "username": "u", "password": "p"})
    assert both.security_protocol == "SASL_SSL"


def test_tls_without_a_ca_uses_the_systems() -> None:
    broker = broker_from_secret({"bootstrapServers": "k:9094", "tls": "true"})
    assert (broker.tls, broker.ca_cert) == (True, None)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"bootstrapServers": ""}, "key 'bootstrapServers' is empty",
                     id="servers-empty"),
        pytest.param({"bootstrapServers": "a:1,,b:2"},
                     "key 'bootstrapServers': server 2 is not host:port", id="servers-hole"),
        pytest.param({"bootstrapServers": f"a:{PASSWORD}"},
                     "key 'bootstrapServers': server 1 has no valid port", id="servers-bad-port"),
        pytest.param({"sasl": "gssapi", "username": "u", "password": PASSWORD},
                     "key 'sasl' must be one of", id="sasl-unsupported"),
        pytest.param({"sasl": "plain", "password": PASSWORD}, "key 'username' is missing",
                     id="sasl-without-user"),
        pytest.param({"sasl": "plain", "username": "u"}, "key 'password' is missing",
                     id="sasl-without-password"),
        pytest.param({"username": "u", "password": PASSWORD}, "key 'username' is set but 'sasl'",
                     id="user-without-sasl"),
        pytest.param({"tls": "maybe"}, "key 'tls' must be one of", id="tls-unknown"),
        pytest.param({"ca.crt": "-----BEGIN CERTIFICATE-----\nAAAA\n"},
                     "key 'ca.crt' is set but 'tls' is not enable", id="ca-without-tls"),
        pytest.param({"tls": "enable", "ca.crt": PASSWORD}, "key 'ca.crt' is not PEM text",
                     id="ca-not-pem"),
        pytest.param({"tls": "enable", "ca.crt": "-----BEGIN CERTIFICATE-----\nnot base64\n"
                                                "-----END CERTIFICATE-----\n"},
                     "key 'ca.crt' is not a loadable CA certificate", id="ca-truncated"),
        pytest.param({"tls": "enable", "tls.crt": "x", "tls.key": PASSWORD},
                     "client certificates (mutual TLS) are not supported", id="mutual-tls"),
    ],
)
def test_bad_secrets_name_the_key_never_a_value(data: dict[str, str], message: str) -> None:
    with pytest.raises(SourceError) as refused:
        broker_from_secret(data)
    assert refused.value.kind is ErrorKind.BAD_CONFIG
    assert message in refused.value.message
    assert PASSWORD not in str(refused.value)


def test_every_password_is_registered_for_redaction_before_any_check() -> None:
    secret = f"never-{uuid.uuid4().hex}"
    with pytest.raises(SourceError):
        broker_from_secret({"password": secret, "tls": "bogus"})
    assert secret not in redact(f"broker said: bad password {secret}")
