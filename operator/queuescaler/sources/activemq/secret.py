"""An ActiveMQ broker's Jolokia endpoint and credentials from a Secret's decoded data. Pure.

Keys:
- `jolokiaUrl`: the Jolokia agent, http:// or https:// (Classic's web console serves it at
  `/api/jolokia`, Artemis' at `/console/jolokia`); no user or password in it;
- `username`, `password`: HTTP basic auth (both or neither);
- `ca.crt`: PEM CA bundle that verifies an https:// agent (without it, the system's CAs);
- `brokerName`: the broker's name in its MBeans, when the agent serves several (a spec's
  `brokerName` wins);
- `origin`: the Origin header sent (both brokers' default Jolokia policy refuses requests
  without an allowed one); absent: the agent's own scheme, host and port.

Every password is registered for redaction before anything else can fail, no error names a
value, and the credentials are kept out of `repr`.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from queuescaler.core.redact import register_secret
from queuescaler.sources.secret_keys import bad_secret, secret_value

JOLOKIA_URL = "jolokiaUrl"
USERNAME = "username"
PASSWORD = "password"
CA_CERT = "ca.crt"
BROKER_NAME = "brokerName"
ORIGIN = "origin"
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class ActiveMQBroker:
    """How to reach one broker's Jolokia agent. Equal values share one source."""

    url: str
    """Scheme, host, port and path of the agent, without a trailing slash or credentials."""
    origin: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = field(default=None, repr=False)
    broker_name: str | None = None

    @property
    def https(self) -> bool:
        return self.url.lower().startswith("https://")


def _register(data: Mapping[str, str]) -> None:
    """The password key's value, and any the URL carries by mistake, masked from now on."""
    password = data.get(PASSWORD)
    if isinstance(password, str) and password.strip():
        register_secret(password.strip())
    url = data.get(JOLOKIA_URL)
    if isinstance(url, str):
        try:
            in_url = urllib.parse.urlsplit(url.strip()).password
        except ValueError:
            register_secret(url.strip())
            return
        if in_url:
            register_secret(in_url)
            register_secret(urllib.parse.unquote(in_url))


def _url(value: str) -> tuple[str, str]:
    """The agent's URL as requests use it, and its origin."""
    try:
        parts = urllib.parse.urlsplit(value)
        _ = parts.port  # raises ValueError on a port that is not a number in range
    except ValueError:
        raise bad_secret(f"key {JOLOKIA_URL!r} is not a parsable URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise bad_secret(f"key {JOLOKIA_URL!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise bad_secret(f"key {JOLOKIA_URL!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise bad_secret(
            f"key {JOLOKIA_URL!r} holds credentials: put them in keys {USERNAME!r} and "
            f"{PASSWORD!r}")
    if parts.query or parts.fragment:
        raise bad_secret(f"key {JOLOKIA_URL!r} must have no query or fragment")
    scheme = parts.scheme.lower()
    host = parts.netloc.lower()
    origin = f"{scheme}://{host}"
    return f"{scheme}://{host}{parts.path.rstrip('/')}", origin


def _check_ca(ca_cert: str) -> None:
    """The bundle loads as CAs (as the TLS connection will load it), so a truncated paste is
    refused once, naming the key, not at every tick's handshake."""
    if _PEM_CERTIFICATE not in ca_cert:
        raise bad_secret(f"key {CA_CERT!r} is not PEM text (BEGIN CERTIFICATE expected)")
    try:
        ssl.create_default_context(cadata=ca_cert)
    except (ssl.SSLError, ValueError, TypeError):
        raise bad_secret(f"key {CA_CERT!r} is not a loadable CA certificate (PEM)") from None


def broker_from_secret(data: Mapping[str, str]) -> ActiveMQBroker:
    """The broker a Secret describes, or SourceError(BAD_CONFIG) naming the key."""
    _register(data)
    url, origin = _url(secret_value(data, JOLOKIA_URL, required=True) or "")
    username = secret_value(data, USERNAME)
    password = secret_value(data, PASSWORD)
    if (username is None) != (password is None):
        present, absent = (USERNAME, PASSWORD) if username is not None else (PASSWORD, USERNAME)
        raise bad_secret(f"key {present!r} is set but {absent!r} is not: set both or neither")
    ca_cert = secret_value(data, CA_CERT)
    if ca_cert is not None:
        if not url.startswith("https://"):
            raise bad_secret(f"key {CA_CERT!r} is set but {JOLOKIA_URL!r} is not https://")
        _check_ca(ca_cert)
    given_origin = secret_value(data, ORIGIN)
    if given_origin is not None:
        if any(c in given_origin for c in "\r\n") or len(given_origin) > 2048:
            raise bad_secret(f"key {ORIGIN!r} is not a header value")
        origin = given_origin
    broker_name = secret_value(data, BROKER_NAME)
    if broker_name is not None and any(ord(c) < 0x20 or ord(c) == 0x7F for c in broker_name):
        raise bad_secret(f"key {BROKER_NAME!r} holds control characters")
    return ActiveMQBroker(
        url=url, origin=origin, username=username, password=password, ca_cert=ca_cert,
        broker_name=broker_name,
    )
