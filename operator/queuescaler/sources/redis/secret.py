"""A Redis server's address and credentials from a Secret's decoded data, checked once.

Pure, like rabbitmq's: the Kubernetes shell reads the Secret and passes its decoded `data`.
Every password seen is registered for redaction before anything else can fail, and no error
names a value, only the key it came from. The credentials are kept apart from the address,
so nothing that prints the address (redis-py's errors do) can carry them.
"""

from __future__ import annotations

import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field

from queuescaler.core.redact import register_secret
from queuescaler.sources.secret_keys import bad_secret, secret_value

REDIS_URL = "redisUrl"
USERNAME = "username"
PASSWORD = "password"
DATABASE = "database"
CA_CERT = "ca.crt"

DEFAULT_PORT = 6379
MAX_DATABASE = 1_000_000
"""Far above any server's `databases` setting (16 by default): the server has the last word."""
_SCHEMES = {"redis": False, "rediss": True}
_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_IGNORED_QUERY = frozenset({"ssl_cert_reqs", "ssl_check_hostname"})
"""Celery wants ssl_cert_reqs in a rediss:// broker_url; the source always verifies the server
(against `ca.crt`, else the system's CAs), whatever the URL asks of the workers."""


@dataclass(frozen=True, slots=True)
class RedisBroker:
    """How to reach one Redis database. Equal values share one source; `repr` shows no secret."""

    host: str
    port: int = DEFAULT_PORT
    database: int = 0
    tls: bool = False
    """rediss://: TLS, verifying the server against `ca_cert` (else the system's CAs)."""
    username: str | None = field(default=None, repr=False)
    """An ACL user; None is Redis's `default` user."""
    password: str | None = field(default=None, repr=False)
    ca_cert: str | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        """scheme://host:port/db, for messages: no user, no password."""
        scheme = "rediss" if self.tls else "redis"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}/{self.database}"

    def __repr__(self) -> str:
        return f"RedisBroker({self.address!r})"


def _register(url: object, password: object) -> None:
    """Every form of every password in the Secret, before any check can fail."""
    if isinstance(password, str) and password.strip():
        register_secret(password.strip())
    if not isinstance(url, str):
        return
    try:
        secret = urllib.parse.urlsplit(url.strip()).password
    except ValueError:
        register_secret(url.strip())  # unparsable: the whole value may hold it
        return
    if secret:
        register_secret(secret)
        register_secret(urllib.parse.unquote(secret))


def _database(text: str, key: str) -> int:
    """ASCII digits only, and few: `str.isdigit` takes "²", which int() refuses, and int()
    refuses more than 4,300 digits; either would be a bare ValueError naming no key."""
    if (not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_DATABASE))
            or int(text) > MAX_DATABASE):
        raise bad_secret(f"{key} must be a database number (0, 1, ...)")
    return int(text)


def _check_ca(ca_cert: str) -> None:
    """The bundle loads as CAs (as the TLS connection will load it), so a truncated paste is
    refused once, naming the key, not at every tick's handshake."""
    try:
        ssl.create_default_context(cadata=ca_cert)
    except (ssl.SSLError, ValueError, TypeError):
        raise bad_secret(f"key {CA_CERT!r} is not a loadable CA certificate (PEM)") from None


def broker_from_secret(data: Mapping[str, str]) -> RedisBroker:
    """The Redis a Secret describes, or SourceError(BAD_CONFIG) naming the key.

    Keys: `redisUrl` (required: redis:// or rediss://, as Celery's broker_url; user,
    password and /database in it are taken, `ssl_cert_reqs` ignored: the server is always
    verified), `username` and `password` (optional; they win
    over the URL's: an ACL user), `database` (optional; wins over the URL's path) and
    `ca.crt` (PEM, for rediss://). Other keys are ignored.
    """
    _register(data.get(REDIS_URL), data.get(PASSWORD))
    url = secret_value(data, REDIS_URL, required=True) or ""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port or DEFAULT_PORT  # raises ValueError on a port out of range
    except ValueError:
        raise bad_secret(f"key {REDIS_URL!r} is not a parsable URL") from None
    scheme = parts.scheme.lower()
    if scheme not in _SCHEMES:
        raise bad_secret(f"key {REDIS_URL!r} must be a redis:// or rediss:// URL")
    if not parts.hostname:
        raise bad_secret(f"key {REDIS_URL!r} has no host")
    names = {name for name, _ in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)}
    if names - _IGNORED_QUERY:  # not named: a stray value could sit where a name should
        raise bad_secret(
            f"key {REDIS_URL!r} has query options other than ssl_cert_reqs: put them in the "
            "Secret's own keys"
        )
    path = parts.path.strip("/")
    database = _database(path, f"the path of {REDIS_URL!r}") if path else 0
    given_database = secret_value(data, DATABASE)
    if given_database is not None:
        database = _database(given_database, f"key {DATABASE!r}")
    username = secret_value(data, USERNAME)
    if username is None and parts.username:
        username = urllib.parse.unquote(parts.username)
    password = secret_value(data, PASSWORD)
    if password is None and parts.password:
        password = urllib.parse.unquote(parts.password)
    ca_cert = secret_value(data, CA_CERT)
    tls = _SCHEMES[scheme]
    if ca_cert is not None:
        if _PEM_CERTIFICATE not in ca_cert:
            raise bad_secret(f"key {CA_CERT!r} is not PEM text (BEGIN CERTIFICATE expected)")
        if not tls:
            raise bad_secret(
                f"key {CA_CERT!r} is set but {REDIS_URL!r} is redis:// (no TLS): use rediss://"
            )
        _check_ca(ca_cert)
    return RedisBroker(
        host=parts.hostname,
        port=port,
        database=database,
        tls=tls,
        username=username or None,
        password=password,
        ca_cert=ca_cert,
    )
