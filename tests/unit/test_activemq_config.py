"""The activemq source's configuration: its spec block, its Secret, and how both reach the source.

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
from queuescaler.core.sample import ErrorKind, SourceError
from queuescaler.core.spec import SecretRef, SpecError
from queuescaler.sources.activemq.secret import ActiveMQBroker, broker_from_secret
from queuescaler.sources.activemq.spec import ActiveMQSourceSpec, BrokerScope
from queuescaler.sources.registry import SOURCES, all_defaults, parse_spec
from queuescaler_testkit.redis_server import make_ca

pytestmark = pytest.mark.unit

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
"""Registered for redaction by the code under test: unique, so no other test's text matches."""
CRD = Path(__file__).resolve().parents[2] / "crds" / "queuescaler.yaml"
URL = "http://broker.mq.svc:8161/api/jolokia"


@pytest.fixture(scope="module")
def ca_pem(tmp_path_factory: pytest.TempPathFactory) -> str:
    cert, _key = make_ca(tmp_path_factory.mktemp("activemq-ca"), "ca")
    return cert.read_text()


def spec_with(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "maxReplicas": 5,
        "source": {"activemq": {k: v for k, v in block.items() if v is not None}},
    }


BLOCK: dict[str, Any] = {"queue": "orders", "connectionSecretRef": {"name": "activemq"}}


# --- the spec block ---------------------------------------------------------------------------


def test_the_registry_knows_activemq() -> None:
    assert SOURCES["activemq"].connector == "queuescaler.sources.activemq.source:ActiveMQSource"
    assert all_defaults()["source.activemq.includeUnacked"] is True


def test_a_minimal_block_finds_out_the_flavor_and_counts_in_flight_work() -> None:
    spec = parse_spec(spec_with(BLOCK)).source
    assert spec == ActiveMQSourceSpec(("orders",), SecretRef("activemq"))
    assert (spec.broker, spec.include_in_flight, spec.where) == (
        "activemq", True, "the ActiveMQ broker")
    (ref,) = spec.queues
    assert ref.name == "orders"
    assert BrokerScope.from_scope(ref.scope) == BrokerScope(None, None, None, "anycast")


def test_every_option_travels_in_the_scope() -> None:
    spec = parse_spec(spec_with(BLOCK | {
        "queue": None, "queues": ["a", "weird:name*"], "flavor": "artemis", "brokerName": "0.0.0.0",
        "address": "events", "routingType": "multicast", "includeUnacked": False,
    })).source
    assert isinstance(spec, ActiveMQSourceSpec)
    assert spec.include_in_flight is False
    assert spec.where == "ActiveMQ broker '0.0.0.0'"
    assert [ref.name for ref in spec.queues] == ["a", "weird:name*"]
    assert {BrokerScope.from_scope(ref.scope) for ref in spec.queues} == {
        BrokerScope("artemis", "0.0.0.0", "events", "multicast")}


def test_a_scope_reads_back_or_names_nothing() -> None:
    scope = BrokerScope("classic", "b", None, "anycast")
    assert BrokerScope.from_scope(scope.scope) == scope
    for other in ("/", "", "{}", "[1]", '{"group": "g"}',
                  '{"flavor": "hornetq", "broker": null, "address": null, "routing": "anycast"}',
                  '{"flavor": null, "broker": "", "address": null, "routing": "anycast"}',
                  '{"flavor": null, "broker": null, "address": 3, "routing": "anycast"}',
                  '{"flavor": null, "broker": null, "address": null, "routing": "direct"}'):
        assert BrokerScope.from_scope(other) is None, other


@pytest.mark.parametrize(
    ("block", "field", "message"),
    [
        pytest.param(BLOCK | {"queues": ["b"]}, "spec.source.activemq.queue",
                     "set exactly one of queue or queues", id="queue-and-queues"),
        pytest.param(BLOCK | {"queue": None}, "spec.source.activemq.queue",
                     "set exactly one of queue or queues", id="no-queue"),
        pytest.param(BLOCK | {"queue": "a\nb"}, "spec.source.activemq.queue",
                     "must not hold control characters", id="queue-with-newline"),
        pytest.param(BLOCK | {"queue": "q" * 256}, "spec.source.activemq.queue",
                     "must be at most 255", id="queue-too-long"),
        pytest.param(BLOCK | {"queue": None, "queues": ["a", "a"]}, "spec.source.activemq.queues",
                     "must not name a queue twice", id="queue-twice"),
        pytest.param(BLOCK | {"queue": None, "queues": ["a", "b\x00"]},
                     "spec.source.activemq.queues[1]", "control characters",
                     id="queues-with-nul"),
        pytest.param(BLOCK | {"flavor": "hornetq"}, "spec.source.activemq.flavor",
                     "must be classic or artemis", id="flavor-unknown"),
        pytest.param(BLOCK | {"routingType": "direct"}, "spec.source.activemq.routingType",
                     "must be anycast or multicast", id="routing-unknown"),
        pytest.param(BLOCK | {"flavor": "classic", "address": "x"}, "spec.source.activemq.address",
                     "is an Artemis option", id="classic-with-address"),
        pytest.param(BLOCK | {"flavor": "classic", "routingType": "anycast"},
                     "spec.source.activemq.routingType", "is an Artemis option",
                     id="classic-with-routing"),
        pytest.param(BLOCK | {"brokerName": ""}, "spec.source.activemq.brokerName",
                     "must be a non-empty string", id="broker-name-empty"),
        pytest.param(BLOCK | {"includeUnacked": "yes"}, "spec.source.activemq.includeUnacked",
                     "must be true or false", id="unacked-not-boolean"),
        pytest.param(BLOCK | {"connectionSecretRef": None},
                     "spec.source.activemq.connectionSecretRef", "is required", id="no-secret"),
        pytest.param(BLOCK | {"vhost": "/"}, "spec.source.activemq.vhost", "unknown field",
                     id="rabbitmqs-field"),
    ],
)
def test_refusals_name_their_field(block: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(spec_with(block))
    assert refused.value.field_path == field
    assert message in refused.value.message


def test_the_crd_branch_documents_and_bounds_every_field() -> None:
    crd = yaml.safe_load(CRD.read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    activemq = schema["properties"]["source"]["properties"]["activemq"]
    assert set(activemq["properties"]) == {
        "queue", "queues", "flavor", "brokerName", "address", "routingType", "includeUnacked",
        "connectionSecretRef",
    }
    assert activemq["required"] == ["connectionSecretRef"]
    assert activemq["properties"]["flavor"]["enum"] == ["classic", "artemis"]
    assert activemq["properties"]["routingType"]["enum"] == ["anycast", "multicast"]
    rule = schema["properties"]["source"]["x-kubernetes-validations"][0]["rule"]
    assert "has(self.activemq)" in rule
    chart = CRD.parents[1] / "charts" / "queuescaler" / "crds" / "queuescaler.yaml"
    assert chart.read_text() == CRD.read_text()


# --- the Secret -------------------------------------------------------------------------------


def test_a_plain_agent_needs_only_its_url() -> None:
    broker = broker_from_secret({"jolokiaUrl": URL + "/\n"})
    assert broker == ActiveMQBroker(URL, "http://broker.mq.svc:8161")
    assert not broker.https


def test_credentials_are_kept_out_of_repr_and_the_origin_follows_the_url() -> None:
    broker = broker_from_secret({
        "jolokiaUrl": "HTTPS://Artemis.example:8443/console/jolokia/", "username": "admin",
        "password": PASSWORD, "brokerName": "0.0.0.0",
    })
    assert broker.url == "https://artemis.example:8443/console/jolokia"
    assert broker.origin == "https://artemis.example:8443"
    assert (broker.username, broker.password, broker.broker_name) == (
        "admin", PASSWORD, "0.0.0.0")
    assert broker.https
    assert PASSWORD not in repr(broker)
    assert "admin" not in repr(broker)


def test_an_origin_and_a_ca_are_taken(ca_pem: str) -> None:
    broker = broker_from_secret({"jolokiaUrl": "https://mq:8161/api/jolokia", "ca.crt": ca_pem,
                                 "origin": "https://console.example"})
    assert (broker.origin, broker.ca_cert) == ("https://console.example", ca_pem.strip())
    assert ca_pem.strip() not in repr(broker)


def test_equal_secrets_are_one_broker() -> None:
    one = broker_from_secret({"jolokiaUrl": URL, "username": "u", "password": PASSWORD})
    other = broker_from_secret({"jolokiaUrl": URL + "/", "username": "u", "password": PASSWORD})
    assert one == other
    assert hash(one) == hash(other)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({}, "key 'jolokiaUrl' is missing", id="no-url"),
        pytest.param({"jolokiaUrl": " "}, "key 'jolokiaUrl' is empty", id="url-empty"),
        pytest.param({"jolokiaUrl": "tcp://mq:61616"}, "must be an http:// or https:// URL",
                     id="url-openwire"),
        pytest.param({"jolokiaUrl": "http://:8161/api/jolokia"}, "key 'jolokiaUrl' has no host",
                     id="url-without-host"),
        pytest.param({"jolokiaUrl": "http://mq:99999/api/jolokia"}, "is not a parsable URL",
                     id="url-port-out-of-range"),
        pytest.param({"jolokiaUrl": f"http://admin:{PASSWORD}@mq:8161/api/jolokia"},
                     "key 'jolokiaUrl' holds credentials: put them in keys 'username'",
                     id="url-with-credentials"),
        pytest.param({"jolokiaUrl": URL + "?maxDepth=1"}, "must have no query or fragment",
                     id="url-with-query"),
        pytest.param({"jolokiaUrl": URL, "username": "admin"},
                     "key 'username' is set but 'password' is not", id="user-without-password"),
        pytest.param({"jolokiaUrl": URL, "password": PASSWORD},
                     "key 'password' is set but 'username' is not", id="password-without-user"),
        pytest.param({"jolokiaUrl": URL, "ca.crt": "-----BEGIN CERTIFICATE-----\nAAAA\n"},
                     "key 'ca.crt' is set but 'jolokiaUrl' is not https://", id="ca-on-http"),
        pytest.param({"jolokiaUrl": "https://mq/api/jolokia", "ca.crt": PASSWORD},
                     "key 'ca.crt' is not PEM text", id="ca-not-pem"),
        pytest.param({"jolokiaUrl": "https://mq/api/jolokia",
                      "ca.crt": "-----BEGIN CERTIFICATE-----\nnot base64\n"
                                "-----END CERTIFICATE-----\n"},
                     "key 'ca.crt' is not a loadable CA certificate", id="ca-truncated"),
        pytest.param({"jolokiaUrl": URL, "origin": "http://a\r\nX-Evil: 1"},
                     "key 'origin' is not a header value", id="origin-header-injection"),
        pytest.param({"jolokiaUrl": URL, "brokerName": "a\nb"},
                     "key 'brokerName' holds control characters", id="broker-name-newline"),
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
        broker_from_secret({"password": secret, "jolokiaUrl": "ftp://x"})
    assert secret not in redact(f"broker said: bad password {secret}")
    in_url = f"inurl-{uuid.uuid4().hex}"
    with pytest.raises(SourceError):
        broker_from_secret({"jolokiaUrl": f"http://u:{in_url}@mq/api/jolokia"})
    assert in_url not in redact(f"echoed {in_url}")
