"""The redis source's configuration: its spec block, its Secret, and its errors' wording.

Every refusal names its field or key, never a value; passwords never reach a message or a
repr, whatever went wrong.
"""

from __future__ import annotations

import ssl
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis.exceptions
import yaml

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, QueueRef, SourceError
from queuescaler.core.spec import SecretRef, SpecError
from queuescaler.sources.redis.layout import Layout
from queuescaler.sources.redis.secret import RedisBroker, broker_from_secret
from queuescaler.sources.redis.source import failure
from queuescaler.sources.redis.spec import RedisSourceSpec
from queuescaler.sources.registry import SOURCES, parse_spec

pytestmark = pytest.mark.unit

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
"""Registered for redaction by the code under test: unique, so no other test's text matches."""
CERT = (
    "-----BEGIN CERTIFICATE-----\n"
    "MIIBnTCCAUOgAwIBAgIUbNj9UzlYEfvkiR9C18Kyc8MfGY4wCgYIKoZIzj0EAwIw\n"
    "IzEhMB8GA1UEAwwYcXVldWVzY2FsZXIgdW5pdCB0ZXN0IENBMCAXDTI2MTIwMjAy\n"
    "MDY1MVoYDzIxMjYxMTA4MDIwNjUxWjAjMSEwHwYDVQQDDBhxdWV1ZXNjYWxlciB1\n"
    "bml0IHRlc3QgQ0EwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAATb3xcW7EjRdCE3\n"
    "YQ2OR09LhbBwe67/CCUYnOALQZLGtd4sMm3NWXGA/MUJ9cU9JOec90BmcPMCLnH8\n"
    "HCJDsw/jo1MwUTAdBgNVHQ4EFgQUli/40UpI3m8mrV4y/kJy+pXtR4gwHwYDVR0j\n"
    "BBgwFoAUli/40UpI3m8mrV4y/kJy+pXtR4gwDwYDVR0TAQH/BAUwAwEB/zAKBggq\n"
    "hkjOPQQDAgNIADBFAiBL7bzrxlbAyT7ysdPKCE+y1DlRAAPVu+TBsK5bhRWKwwIh\n"
    "AN6f9ZJclbIivKrcZtYPXhl8IAnNKvhWB/x5yGkz7yl+\n"
    "-----END CERTIFICATE-----\n"
)
"""A real (self-signed, public part only) CA: the Secret's `ca.crt` is loaded when parsed."""


def spec_with(block: dict[str, Any]) -> dict[str, Any]:
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "maxReplicas": 5,
        "source": {"redis": block},
    }


SECRET_REF = {"connectionSecretRef": {"name": "redis"}}


def test_the_registry_knows_redis() -> None:
    assert SOURCES["redis"].connector == "queuescaler.sources.redis.source:RedisSource"


def test_a_minimal_block_takes_kombus_layout_and_counts_unacked() -> None:
    spec = parse_spec(spec_with({"queue": "celery", **SECRET_REF})).source
    assert spec == RedisSourceSpec(("celery",), connection_secret_ref=SecretRef("redis"))
    assert (spec.broker, spec.include_in_flight) == ("redis", True)
    assert spec.secret_ref == SecretRef("redis")
    assert spec.queues == (QueueRef("", "celery"),)


def test_a_prefix_and_separator_travel_in_the_queues_scope() -> None:
    block = {"queues": ["a", "b"], "keyPrefix": "app1:", "prioritySeparator": ":", **SECRET_REF}
    spec = parse_spec(spec_with(block | {"includeUnacked": False})).source
    layout = Layout(key_prefix="app1:", separator=":")
    assert spec.queues == (QueueRef(layout.scope, "a"), QueueRef(layout.scope, "b"))
    assert spec.include_in_flight is False


@pytest.mark.parametrize(
    ("block", "field", "message"),
    [
        pytest.param(SECRET_REF, "spec.source.redis.queue", "set exactly one", id="no-queue"),
        pytest.param({"queue": "a", "queues": ["b"], **SECRET_REF}, "spec.source.redis.queue",
                     "set exactly one", id="both"),
        pytest.param({"queues": ["a", "a"], **SECRET_REF}, "spec.source.redis.queues",
                     "must not name a queue twice", id="twice"),
        pytest.param({"queue": "a"}, "spec.source.redis.connectionSecretRef", "is required",
                     id="no-secret"),
        pytest.param({"queue": "a", "keyPrefix": "", **SECRET_REF}, "spec.source.redis.keyPrefix",
                     "must be a non-empty string", id="empty-prefix"),
        pytest.param({"queue": "a", "prioritySeparator": "x" * 17, **SECRET_REF},
                     "spec.source.redis.prioritySeparator", "must be at most 16", id="long-sep"),
        pytest.param({"queue": "a", "vhost": "/", **SECRET_REF}, "spec.source.redis.vhost",
                     "unknown field", id="rabbitmq-field"),
    ],
)
def test_refusals_name_their_field(block: dict[str, Any], field: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(spec_with(block))
    assert refused.value.field_path == field
    assert refused.value.message.startswith(message)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param({"redisUrl": "redis://redis.default.svc"}, RedisBroker("redis.default.svc"),
                     id="host-only"),
        pytest.param(
            {"redisUrl": f"redis://:{PASSWORD}@redis:6380/3"},
            RedisBroker("redis", 6380, 3, password=PASSWORD),
            id="celery-broker-url",
        ),
        pytest.param(
            {"redisUrl": f"redis://worker:{PASSWORD}@redis/1\n"},
            RedisBroker("redis", database=1, username="worker", password=PASSWORD),
            id="acl-user-in-url",
        ),
        pytest.param(
            {"redisUrl": "redis://u:old@redis/1", "username": "ops", "password": PASSWORD,
             "database": "4"},
            RedisBroker("redis", database=4, username="ops", password=PASSWORD),
            id="keys-win-over-the-url",
        ),
        pytest.param(
            {"redisUrl": "rediss://redis:6379", "password": PASSWORD, "ca.crt": CERT},
            RedisBroker("redis", tls=True, password=PASSWORD, ca_cert=CERT.strip()),
            id="tls-with-ca",
        ),
        pytest.param({"redisUrl": "REDISS://[::1]:7000"}, RedisBroker("::1", 7000, tls=True),
                     id="ipv6-tls-system-cas"),
        pytest.param({"redisUrl": "rediss://h:6380/0?ssl_cert_reqs=CERT_NONE"},
                     RedisBroker("h", 6380, tls=True), id="celery-rediss-url-still-verifies"),
    ],
)
def test_a_secret_gives_a_broker(data: dict[str, str], expected: RedisBroker) -> None:
    assert broker_from_secret(data) == expected


@pytest.mark.parametrize(
    ("data", "names"),
    [
        pytest.param({}, "'redisUrl' is missing", id="no-url"),
        pytest.param({"redisUrl": " "}, "'redisUrl' is empty", id="empty-url"),
        pytest.param({"redisUrl": f"amqp://u:{PASSWORD}@h"}, "redis:// or rediss://", id="amqp"),
        pytest.param({"redisUrl": f"redis://:{PASSWORD}@h:99999"}, "not a parsable URL",
                     id="port-out-of-range"),
        pytest.param({"redisUrl": "redis:///0"}, "has no host", id="no-host"),
        pytest.param({"redisUrl": f"redis://:{PASSWORD}@h/x"}, "a database number", id="bad-path"),
        pytest.param({"redisUrl": "redis://h", "database": "-1"}, "'database' must be",
                     id="bad-database"),
        pytest.param({"redisUrl": f"redis://h?password={PASSWORD}"},
                     "query options other than ssl_cert_reqs", id="query"),
        pytest.param({"redisUrl": f"redis://h?{PASSWORD}"}, "query options other than",
                     id="query-value-without-a-name"),
        pytest.param({"redisUrl": "redis://h", "ca.crt": CERT}, "use rediss://", id="ca-no-tls"),
        pytest.param({"redisUrl": "rediss://h", "ca.crt": PASSWORD}, "not PEM", id="ca-not-pem"),
        # Review F5: a bare ValueError named no key ("²" is a digit to str.isdigit, int()
        # takes no more than 4,300 digits); a truncated paste failed every tick's handshake.
        pytest.param({"redisUrl": "redis://h", "database": "\u00b2"}, "'database' must be",
                     id="database-not-ascii"),
        pytest.param({"redisUrl": "redis://h", "database": "9" * 5000}, "'database' must be",
                     id="database-thousands-of-digits"),
        pytest.param({"redisUrl": "redis://h/\u00b2"}, "a database number",
                     id="path-database-not-ascii"),
        pytest.param({"redisUrl": "rediss://h", "ca.crt": "-----BEGIN CERTIFICATE-----\n"
                      "not base64 at all\n-----END CERTIFICATE-----\n"},
                     "'ca.crt' is not a loadable CA", id="ca-not-a-certificate"),
        pytest.param({"redisUrl": "rediss://h", "ca.crt": CERT.replace("MIIB", "MIIC")},
                     "'ca.crt' is not a loadable CA", id="ca-truncated"),
    ],
)
def test_a_bad_secret_names_the_key_never_the_value(data: dict[str, str], names: str) -> None:
    with pytest.raises(SourceError) as refused:
        broker_from_secret(data)
    assert refused.value.kind is ErrorKind.BAD_CONFIG
    assert names in refused.value.message
    assert PASSWORD not in str(refused.value)


def test_passwords_are_registered_for_redaction_and_kept_out_of_repr() -> None:
    url_password, key_password = f"u-{uuid.uuid4().hex}", f"k-{uuid.uuid4().hex}"
    data = {"redisUrl": f"redis://w:{url_password}@h", "password": key_password}
    broker = broker_from_secret(data)
    assert repr(broker) == "RedisBroker('redis://h:6379/0')"
    assert url_password not in redact(f"echo {url_password}")
    assert key_password not in redact(f"echo {key_password}")


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        pytest.param(redis.exceptions.AuthenticationError("invalid username-password pair"),
                     ErrorKind.AUTH, "refused the credentials", id="wrongpass"),
        pytest.param(redis.exceptions.AuthenticationError("Authentication required."),
                     ErrorKind.AUTH, "refused the credentials", id="noauth"),
        pytest.param(redis.exceptions.NoPermissionError("this user has no permissions"),
                     ErrorKind.AUTH, "an ACL user needs +llen", id="acl-noperm"),
        pytest.param(redis.exceptions.TimeoutError("Timeout reading"), ErrorKind.TIMEOUT,
                     "no answer in time", id="redis-timeout"),
        pytest.param(TimeoutError(), ErrorKind.TIMEOUT, "no answer in time", id="asyncio-timeout"),
        pytest.param(
            redis.exceptions.ConnectionError("Error 111 connecting to h:6379. Connection refused."),
            ErrorKind.UNREACHABLE, "Connection refused", id="refused",
        ),
        pytest.param(
            redis.exceptions.ConnectionError("Error 1 connecting to h:6379. [SSL: CERTIFICATE_"
                                             "VERIFY_FAILED] certificate verify failed"),
            ErrorKind.TLS_FAILED, "TLS failed", id="tls",
        ),
        pytest.param(ssl.SSLError("wrong version number"), ErrorKind.TLS_FAILED, "TLS failed",
                     id="ssl-error"),
        pytest.param(redis.exceptions.ResponseError("DB index is out of range"),
                     ErrorKind.BAD_CONFIG, "database does not exist", id="no-such-db"),
        pytest.param(redis.exceptions.InvalidResponse("Protocol error"), ErrorKind.BAD_RESPONSE,
                     "InvalidResponse", id="not-redis"),
    ],
)
def test_errors_are_mapped_to_a_kind_with_a_clear_message(
    error: BaseException, kind: ErrorKind, says: str
) -> None:
    mapped = failure(error, "Redis at redis://h:6379/0")
    assert mapped.kind is kind
    assert says in mapped.message
    assert mapped.message.startswith("Redis at redis://h:6379/0")


def test_a_password_a_server_echoes_is_redacted() -> None:
    broker_from_secret({"redisUrl": "redis://h", "password": PASSWORD})
    mapped = failure(redis.exceptions.ResponseError(f"ERR bad arg '{PASSWORD}'"), "Redis")
    assert PASSWORD not in mapped.message


def test_the_registry_connects_a_source_that_samples_peeks_and_lists_clients() -> None:
    """What the engine sees: a sampler with a live peek and a busy-worker listing (inspect)."""
    from queuescaler.sources.base import ListingClients, Peeking, QueueSource
    from queuescaler.sources.redis.source import RedisSource

    source = SOURCES["redis"].connect(broker_from_secret({"redisUrl": "redis://h"}))
    assert isinstance(source, RedisSource) and isinstance(source, QueueSource)
    assert isinstance(source, Peeking) and isinstance(source, ListingClients)
    assert repr(source) == "RedisSource(RedisBroker('redis://h:6379/0'))"


def test_every_field_the_crd_allows_the_parser_reads() -> None:
    crd_path = Path(__file__).resolve().parents[2] / "crds" / "queuescaler.yaml"
    crd = yaml.safe_load(crd_path.read_text(encoding="utf-8"))
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    block = schema["properties"]["spec"]["properties"]["source"]["properties"]["redis"]
    values = {
        "queue": "celery", "keyPrefix": "p:", "prioritySeparator": ":",
        "connectionSecretRef": {"name": "redis"}, "includeUnacked": False,
    }
    assert set(block["properties"]) == {*values, "queues", "stream", "group"}
    spec = parse_spec(spec_with(values)).source
    assert isinstance(spec, RedisSourceSpec)
    assert spec.layout == Layout("p:", ":") and not spec.include_unacked
