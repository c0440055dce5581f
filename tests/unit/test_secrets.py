"""broker_from_secret: what a Secret may hold, every refusal naming its key, never its value."""

from __future__ import annotations

import urllib.parse
import uuid

import pytest

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, SourceError
from queuescaler.sources.rabbitmq.secret import RabbitMQBroker, broker_from_secret

pytestmark = pytest.mark.unit

PASSWORD = f"pw-{uuid.uuid4().hex[:10]}"
"""Registered for redaction by the code under test: unique, so no other test's text matches."""
AMQP = f"amqp://worker:{PASSWORD}@rabbit.example:5672/jobs"
MANAGEMENT = f"https://monitor:{PASSWORD}@rabbit.example:15671"
CERT = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"amqpUrl": AMQP}, RabbitMQBroker(amqp_url=AMQP), id="amqp-only"),
        pytest.param(
            {"amqpUrl": AMQP, "managementUrl": MANAGEMENT},
            RabbitMQBroker(amqp_url=AMQP, management_url=MANAGEMENT),
            id="with-management-url",
        ),
        pytest.param(
            {"amqpUrl": AMQP + "\n", "managementUrl": "  " + MANAGEMENT + "\n"},
            RabbitMQBroker(amqp_url=AMQP, management_url=MANAGEMENT),
            id="surrounding-whitespace-from-files-trimmed",
        ),
        pytest.param(
            {
                "amqpUrl": "amqps://w:x@rabbit:5671/",
                "ca.crt": CERT,
                "tls.crt": CERT,
                "tls.key": KEY,
            },
            RabbitMQBroker(
                amqp_url="amqps://w:x@rabbit:5671/",
                ca_cert=CERT.strip(),
                client_cert=CERT.strip(),
                client_key=KEY.strip(),
            ),
            id="amqps-with-ca-and-client-certificate",
        ),
        pytest.param(
            {"amqpUrl": "AMQP://rabbit", "host": "ignored", "password": "ignored"},
            RabbitMQBroker(amqp_url="AMQP://rabbit"),
            id="no-credentials-upper-case-scheme-other-keys-ignored",
        ),
    ],
)
def test_accepted(data: dict[str, str], expected: RabbitMQBroker) -> None:
    assert broker_from_secret(data) == expected


@pytest.mark.parametrize(
    ("data", "key", "says"),
    [
        pytest.param({}, "amqpUrl", "missing", id="no-amqp-url"),
        pytest.param({"managementUrl": MANAGEMENT}, "amqpUrl", "missing", id="management-only"),
        pytest.param({"amqpUrl": "  \n"}, "amqpUrl", "empty", id="blank-amqp-url"),
        pytest.param(
            {"amqpUrl": AMQP, "managementUrl": ""},
            "managementUrl",
            "empty",
            id="empty-management-url",
        ),
        pytest.param(
            {"amqpUrl": f"http://u:{PASSWORD}@rabbit"},
            "amqpUrl",
            "amqp://",
            id="http-scheme-for-amqp",
        ),
        pytest.param(
            {"amqpUrl": AMQP, "managementUrl": AMQP},
            "managementUrl",
            "http://",
            id="amqp-scheme-for-management",
        ),
        pytest.param(
            {"amqpUrl": f"rabbit.example:{PASSWORD}"}, "amqpUrl", "amqp://", id="no-scheme"
        ),
        pytest.param(
            {"amqpUrl": f"amqp://u:{PASSWORD}@:5672/"}, "amqpUrl", "no host", id="no-host"
        ),
        pytest.param(
            {"amqpUrl": f"amqp://u:{PASSWORD}@rabbit:notaport/"},
            "amqpUrl",
            "not a parsable URL",
            id="port-not-a-number",
        ),
        pytest.param(
            {"amqpUrl": f"amqp://u:{PASSWORD}@[::1/"},
            "amqpUrl",
            "not a parsable URL",
            id="broken-ipv6-host",
        ),
        pytest.param(
            {"amqpUrl": AMQP, "tls.crt": CERT}, "tls.key", "missing", id="client-cert-without-key"
        ),
        pytest.param(
            {"amqpUrl": AMQP, "tls.key": KEY}, "tls.crt", "missing", id="client-key-without-cert"
        ),
        pytest.param({"amqpUrl": AMQP, "ca.crt": PASSWORD}, "ca.crt", "not PEM", id="ca-not-pem"),
        pytest.param(
            {"amqpUrl": AMQP, "tls.crt": CERT, "tls.key": CERT},
            "tls.key",
            "not PEM",
            id="key-is-a-certificate",
        ),
    ],
)
def test_refused_naming_the_key_never_the_value(data: dict[str, str], key: str, says: str) -> None:
    with pytest.raises(SourceError) as caught:
        broker_from_secret(data)
    error = caught.value
    assert error.kind is ErrorKind.BAD_CONFIG
    assert repr(key) in error.message
    assert says in error.message
    for value in data.values():
        if value.strip():
            assert value.strip() not in str(error)
    assert PASSWORD not in str(error)


@pytest.mark.parametrize(
    ("url", "password"),
    [
        pytest.param("amqp://u:{p}@h/", "{p}", id="plain"),
        pytest.param("amqp://u:{q}@h/", "{p}@/:x", id="percent-encoded-in-the-url"),
        pytest.param("http://u:{q}@h", "{p} x+y", id="management-url-space-and-plus"),
    ],
)
def test_every_password_is_registered_for_redaction(url: str, password: str) -> None:
    plain = password.format(p=f"pw-{uuid.uuid4().hex[:10]}")
    quoted = urllib.parse.quote(plain, safe="")
    key = "managementUrl" if url.startswith("http") else "amqpUrl"
    data = {"amqpUrl": "amqp://h/", key: url.format(p=plain, q=quoted)}
    broker_from_secret(data)
    echoed = f"broker said: password {plain!r} refused; retried as {quoted}"
    assert redact(echoed) == "broker said: password '***' refused; retried as ***"


def test_password_of_a_refused_url_is_registered_too() -> None:
    password = f"pw-{uuid.uuid4().hex[:10]}"
    with pytest.raises(SourceError):
        broker_from_secret({"amqpUrl": f"ftp://u:{password}@h/"})
    assert password not in redact(f"the server echoed {password}")


def test_repr_of_the_connection_hides_credentials() -> None:
    connection = broker_from_secret(
        {"amqpUrl": AMQP, "managementUrl": MANAGEMENT, "tls.crt": CERT, "tls.key": KEY}
    )
    shown = repr(connection)
    assert PASSWORD not in shown
    assert "worker" not in shown
    assert "PRIVATE KEY" not in shown
