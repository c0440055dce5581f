"""A RabbitMQ broker's address and credentials from a Secret's decoded data, checked once.

Pure: the Kubernetes shell reads the Secret (by name, in the QueueScaler's namespace) and
passes its decoded `data`. Every password seen is registered for redaction before anything
else can fail, and no error message ever quotes a value, only the key it came from.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from queuescaler.core.redact import redact, register_secret
from queuescaler.sources.secret_keys import bad_secret, secret_value

AMQP_URL = "amqpUrl"
MANAGEMENT_URL = "managementUrl"
CA_CERT = "ca.crt"
CLIENT_CERT = "tls.crt"
CLIENT_KEY = "tls.key"

_URL_SCHEMES = {AMQP_URL: ("amqp", "amqps"), MANAGEMENT_URL: ("http", "https")}
_PEM_MARKERS = {
    CA_CERT: "-----BEGIN CERTIFICATE-----",
    CLIENT_CERT: "-----BEGIN CERTIFICATE-----",
    CLIENT_KEY: "PRIVATE KEY-----",
}


@dataclass(frozen=True, slots=True)
class RabbitMQBroker:
    """How to reach one RabbitMQ broker, read from a Secret. Equal values share one source.

    The credentials live in the URLs; `repr` never shows them (see `redact`).
    """

    amqp_url: str
    management_url: str | None = None
    ca_cert: str | None = field(default=None, repr=False)
    client_cert: str | None = field(default=None, repr=False)
    client_key: str | None = field(default=None, repr=False)

    def __repr__(self) -> str:
        management = redact(self.management_url) if self.management_url else None
        return f"RabbitMQBroker(amqp_url={redact(self.amqp_url)!r}, management_url={management!r})"


def _register_passwords(value: str) -> None:
    """Register the URL's password as written and decoded; the whole value if it will not parse."""
    try:
        password = urllib.parse.urlsplit(value).password
    except ValueError:
        register_secret(value)
        return
    if password:
        register_secret(password)
        register_secret(urllib.parse.unquote(password))


def _checked_url(key: str, value: str) -> str:
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        raise bad_secret(f"key {key!r} is not a parsable URL") from None
    schemes = _URL_SCHEMES[key]
    if parts.scheme.lower() not in schemes:
        raise bad_secret(f"key {key!r} must be a {' or '.join(s + '://' for s in schemes)} URL")
    if not parts.hostname:
        raise bad_secret(f"key {key!r} has no host")
    return value


def _checked_pem(key: str, value: str | None) -> str | None:
    if value is not None and _PEM_MARKERS[key] not in value:
        raise bad_secret(f"key {key!r} is not PEM text ({_PEM_MARKERS[key].strip('-')} expected)")
    return value


def broker_from_secret(data: Mapping[str, str]) -> RabbitMQBroker:
    """The broker a Secret describes, or SourceError(BAD_CONFIG) naming the key.

    Keys: `amqpUrl` (required, amqp:// or amqps://), `managementUrl` (optional, http:// or
    https://), and for TLS `ca.crt`, `tls.crt` and `tls.key` (PEM; a client certificate
    needs its key and the other way round). Other keys are ignored.
    """
    for key in (AMQP_URL, MANAGEMENT_URL):
        raw = data.get(key)
        if isinstance(raw, str):
            _register_passwords(raw.strip())
    amqp_url = _checked_url(AMQP_URL, secret_value(data, AMQP_URL, required=True) or "")
    management = secret_value(data, MANAGEMENT_URL, required=False)
    management_url = _checked_url(MANAGEMENT_URL, management) if management else None
    ca_cert = _checked_pem(CA_CERT, secret_value(data, CA_CERT, required=False))
    client_cert = _checked_pem(CLIENT_CERT, secret_value(data, CLIENT_CERT, required=False))
    client_key = _checked_pem(CLIENT_KEY, secret_value(data, CLIENT_KEY, required=False))
    if (client_cert is None) != (client_key is None):
        present, absent = (CLIENT_CERT, CLIENT_KEY) if client_cert else (CLIENT_KEY, CLIENT_CERT)
        raise bad_secret(
            f"key {present!r} is set but {absent!r} is missing: a client certificate "
            "needs its private key"
        )
    return RabbitMQBroker(
        amqp_url=amqp_url,
        management_url=management_url,
        ca_cert=ca_cert,
        client_cert=client_cert,
        client_key=client_key,
    )
