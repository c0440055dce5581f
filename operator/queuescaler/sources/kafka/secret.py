"""A Kafka cluster's credentials (and maybe its address) from a Secret's decoded data. Pure.

Keys (named after the parameters of KEDA's Kafka scaler where it has them):
- `bootstrapServers`: `host:port` list, comma-separated; optional when the spec names them,
  required with `sasl` (credentials go only to the servers their Secret names);
- `sasl`: `plain` (or KEDA's `plaintext`), `scram-sha-256` / `scram_sha256`,
  `scram-sha-512` / `scram_sha512`, or `none` (the default); case does not matter;
- `username`, `password`: the SASL user, required with `sasl`, refused without it;
- `tls`: `enable` (or `true`) for TLS, `disable` (or `false`, the default);
- `ca.crt`: PEM CA bundle that verifies the brokers (with `tls`; without it, the system's
  CAs). The brokers are always verified.

Every password is registered for redaction before anything else can fail, no error names a
value, and the credentials are kept apart from what `repr` shows.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field

from queuescaler.core.redact import register_secret
from queuescaler.sources.kafka.servers import BadServer, normalize, split
from queuescaler.sources.secret_keys import bad_secret, secret_value

BOOTSTRAP_SERVERS = "bootstrapServers"
SASL = "sasl"
USERNAME = "username"
PASSWORD = "password"
TLS = "tls"
CA_CERT = "ca.crt"
CLIENT_CERT_KEYS = ("tls.crt", "tls.key", "cert", "key")
"""Client certificates (mutual TLS): not supported yet, refused rather than ignored."""

MECHANISMS = {
    "plain": "PLAIN",
    "plaintext": "PLAIN",
    "scram-sha-256": "SCRAM-SHA-256",
    "scram_sha256": "SCRAM-SHA-256",
    "scram-sha-512": "SCRAM-SHA-512",
    "scram_sha512": "SCRAM-SHA-512",
    "none": None,
}
"""`sasl` values, as Kafka names the mechanisms and as KEDA's Secrets write them."""
TLS_VALUES = {"enable": True, "true": True, "disable": False, "false": False}
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class KafkaBroker:
    """How to reach one Kafka cluster. Equal values share one source; `repr` shows no secret."""

    servers: tuple[str, ...] | None = None
    """Normalized `host:port`s from the Secret; None: the spec names them."""
    mechanism: str | None = None
    """PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; None: no SASL."""
    tls: bool = False
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = field(default=None, repr=False)

    @property
    def credentials(self) -> bool:
        """The Secret proves an identity (a SASL user and password): then only the servers it
        names may be sent it, never a spec's own (whoever may write a QueueScaler need not be
        trusted with the Secret)."""
        return self.mechanism is not None or self.password is not None

    @property
    def security_protocol(self) -> str:
        """Kafka's name for the listener this reaches."""
        if self.mechanism is None:
            return "SSL" if self.tls else "PLAINTEXT"
        return "SASL_SSL" if self.tls else "SASL_PLAINTEXT"

    def __repr__(self) -> str:
        where = ",".join(self.servers) if self.servers else "the spec's servers"
        how = self.security_protocol + (f" {self.mechanism}" if self.mechanism else "")
        return f"KafkaBroker({where}, {how})"


def _choice(data: Mapping[str, str], key: str, choices: Mapping[str, object]) -> object:
    value = secret_value(data, key)
    if value is None:
        return None
    chosen = value.lower()
    if chosen not in choices:
        raise bad_secret(f"key {key!r} must be one of {', '.join(choices)}")
    return choices[chosen]


def _check_ca(ca_cert: str) -> None:
    """The bundle loads as CAs (as the TLS connection will load it), so a truncated paste is
    refused once, naming the key, not at every tick's handshake."""
    if _PEM_CERTIFICATE not in ca_cert:
        raise bad_secret(f"key {CA_CERT!r} is not PEM text (BEGIN CERTIFICATE expected)")
    try:
        ssl.create_default_context(cadata=ca_cert)
    except (ssl.SSLError, ValueError, TypeError):
        raise bad_secret(f"key {CA_CERT!r} is not a loadable CA certificate (PEM)") from None


def broker_from_secret(data: Mapping[str, str]) -> KafkaBroker:
    """The cluster a Secret describes, or SourceError(BAD_CONFIG) naming the key."""
    password = data.get(PASSWORD)
    if isinstance(password, str) and password.strip():
        register_secret(password.strip())
    for key in CLIENT_CERT_KEYS:
        if key in data:
            raise bad_secret(
                f"key {key!r}: client certificates (mutual TLS) are not supported; use SASL "
                "(sasl, username, password) with tls"
            )
    servers: tuple[str, ...] | None = None
    text = secret_value(data, BOOTSTRAP_SERVERS)
    if text is not None:
        try:
            servers = normalize(split(text), f"key {BOOTSTRAP_SERVERS!r}")
        except BadServer as error:
            raise bad_secret(str(error)) from None
    mechanism = _choice(data, SASL, MECHANISMS)
    username = secret_value(data, USERNAME)
    password = secret_value(data, PASSWORD)
    if mechanism is None:
        for key, value in ((USERNAME, username), (PASSWORD, password)):
            if value is not None:
                raise bad_secret(f"key {key!r} is set but {SASL!r} is not: set sasl too")
    else:
        for key, value in ((USERNAME, username), (PASSWORD, password)):
            if value is None:
                raise bad_secret(f"key {key!r} is missing (sasl needs a user and a password)")
    tls = bool(_choice(data, TLS, TLS_VALUES))
    ca_cert = secret_value(data, CA_CERT)
    if ca_cert is not None:
        if not tls:
            raise bad_secret(f"key {CA_CERT!r} is set but {TLS!r} is not enable: set tls")
        _check_ca(ca_cert)
    return KafkaBroker(
        servers=servers,
        mechanism=mechanism if isinstance(mechanism, str) else None,
        tls=tls,
        username=username,
        password=password,
        ca_cert=ca_cert,
    )
