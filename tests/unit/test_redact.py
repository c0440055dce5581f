"""redact(): URL userinfo and registered secrets, in every form they take; the logging filter."""

from __future__ import annotations

import json
import logging
import re
import string
import urllib.parse
import uuid
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuescaler.core.redact import (
    MASK,
    SHORT_SECRET_LEN,
    RedactingFilter,
    redact,
    register_secret,
)

pytestmark = pytest.mark.unit


def _unique_secret(tail: str = "") -> str:
    """Secrets stay registered for the whole process: make them unlike any other test's text."""
    return f"zq{uuid.uuid4().hex[:12]}{tail}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("amqp://user:pw@h", "amqp://***@h", id="amqp-user-and-password"),
        pytest.param(
            "amqps://u:p@rabbit.example:5671/vhost",
            "amqps://***@rabbit.example:5671/vhost",
            id="amqps-with-port-and-vhost",
        ),
        pytest.param(
            "GET https://admin:s3cret@mgmt:15671/api/queues failed",
            "GET https://***@mgmt:15671/api/queues failed",
            id="https-inside-a-sentence",
        ),
        pytest.param("http://user@h/", "http://***@h/", id="user-without-password"),
        pytest.param(
            "amqp://user:p@ss:w@rd@host/v", "amqp://***@host/v", id="raw-at-and-colon-in-password"
        ),
        pytest.param("amqp://user:p%40ss@host", "amqp://***@host", id="percent-encoded-password"),
        pytest.param(
            "a amqp://x:y@h1 and http://z:w@h2.",
            "a amqp://***@h1 and http://***@h2.",
            id="two-urls-in-one-line",
        ),
        pytest.param("url='amqp://x:y@h'", "url='amqp://***@h'", id="quoted-url-keeps-its-quotes"),
        pytest.param(
            "http://host:15672/api/queues", "http://host:15672/api/queues", id="no-userinfo-kept"
        ),
        pytest.param("no url here: a@b", "no url here: a@b", id="plain-text-kept"),
        pytest.param("redis+tls://:pw@cache", "redis+tls://***@cache", id="any-scheme-empty-user"),
    ],
)
def test_url_userinfo_is_masked(text: str, expected: str) -> None:
    assert redact(text) == expected


@pytest.mark.parametrize(
    "form",
    [
        pytest.param(lambda s: s, id="as-is"),
        pytest.param(lambda s: quote(s, safe=""), id="percent-encoded"),
        pytest.param(
            lambda s: re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(s, safe="")),
            id="percent-encoded-lower-hex",
        ),
        pytest.param(lambda s: quote(s), id="percent-encoded-keeping-slashes"),
        pytest.param(urllib.parse.quote_plus, id="form-encoded-plus-for-space"),
        pytest.param(lambda s: repr(s)[1:-1], id="repr-escaped"),
    ],
)
def test_registered_secret_is_masked_in_every_form(form: Callable[[str], str]) -> None:
    secret = _unique_secret("p@ss w/rd\\")
    register_secret(secret)
    shown = form(secret)
    assert redact(f"server said: bad password {shown}!") == "server said: bad password ***!"


def test_empty_secret_is_ignored() -> None:
    register_secret("")
    assert redact("nothing to hide") == "nothing to hide"


def test_longer_secret_wins_over_its_prefix() -> None:
    short = _unique_secret()
    register_secret(short)
    register_secret(short + "-and-more")
    assert redact(f"[{short}-and-more]") == "[***]"


@given(
    prefix=st.text(alphabet=st.characters(blacklist_characters="*"), max_size=30),
    suffix=st.text(alphabet=st.characters(blacklist_characters="*"), max_size=30),
    tail=st.text(alphabet=st.characters(blacklist_characters="*"), max_size=12),
)
def test_a_registered_secret_never_survives(prefix: str, suffix: str, tail: str) -> None:
    secret = "zq-hypothesis-" + tail
    register_secret(secret)
    for shown in (secret, quote(secret, safe="", errors="surrogatepass")):
        out = redact(prefix + shown + suffix)
        assert secret not in out
        assert redact(out) == out  # idempotent


@given(
    user=st.text(alphabet="abcdefgh:@%!", min_size=1, max_size=20),
    host=st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
)
def test_userinfo_never_survives(user: str, host: str) -> None:
    out = redact(f"error talking to amqps://{user}@{host}:5671/v")
    assert out == f"error talking to amqps://***@{host}:5671/v"


def _emit(message: str, *args: object, exc_info: bool = False) -> str:
    """Format one record through a handler carrying the filter, as the operator installs it."""
    stream: list[str] = []

    class _ListHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            stream.append(self.format(record))

    handler = _ListHandler()
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger(f"test-redact-{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    logger.error(message, *args, exc_info=exc_info)
    return "\n".join(stream)


def test_filter_masks_message_and_args() -> None:
    secret = _unique_secret()
    register_secret(secret)
    out = _emit("connect %s failed: %s", "amqp://u:pw@h", secret)
    assert out == "connect amqp://***@h failed: ***"


def test_filter_masks_mapping_args() -> None:
    out = _emit("at %(url)s", {"url": "http://u:pw@h"})
    assert out == "at http://***@h"


def test_filter_masks_exception_text() -> None:
    secret = _unique_secret()
    register_secret(secret)
    try:
        raise ConnectionError(f"login with {secret} to amqp://u:{secret}@h refused")
    except ConnectionError:
        out = _emit("sampling failed", exc_info=True)
    assert secret not in out
    assert "amqp://***@h refused" in out
    assert "Traceback" in out


def test_filter_survives_bad_args() -> None:
    out = _emit("two args %s %s", "amqp://u:pw@h")
    assert "pw" not in out
    assert "amqp://***@h" in out


# Short secrets (under SHORT_SECRET_LEN): a password like `rabbit` or `1` also turns up in
# hostnames, words and numbers. Masking it there would tell what it is; so it is masked only
# where a credential stands, and there any value is masked, registered or not (no oracle).

SHORT_SECRETS = ("rabbit", "1", "guest", "a b", "p@s:")
"""Registered at import: harmless by design, they touch no text outside credential positions."""
for _short in SHORT_SECRETS:
    register_secret(_short)


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("connect to rabbitmq.default.svc:5672", id="short-secret-inside-a-hostname"),
        pytest.param("scaled 10 -> 12 replicas at 11:41", id="one-digit-secret-in-numbers"),
        pytest.param("user 'guest' refused on vhost /", id="short-secret-as-a-free-word"),
        pytest.param("queue 'a b' has 1 consumer", id="short-secret-with-a-space-in-free-text"),
        pytest.param("mail ops@example.com about p@s:", id="short-secret-with-at-and-colon"),
    ],
)
def test_short_secret_leaves_unrelated_text_alone(text: str) -> None:
    assert redact(text) == text


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("login password=rabbit failed", "login password=*** failed", id="key-equals"),
        pytest.param('{"password": "rabbit"}', '{"password": "***"}', id="json-object"),
        pytest.param("{'password': 'guest'}", "{'password': '***'}", id="python-dict-repr"),
        pytest.param("bad password '1' given", "bad password '***' given", id="quoted-after-key"),
        pytest.param("?user=u&pwd=1&vhost=v", "?user=u&pwd=***&vhost=v", id="query-string"),
        pytest.param("RABBITMQ_DEFAULT_PASS=guest", "RABBITMQ_DEFAULT_PASS=***", id="env-var"),
        pytest.param("dial guest:rabbit@mq:5672", "dial ***@mq:5672", id="userinfo-no-scheme"),
        pytest.param("amqp://u:rabbit@mq/v", "amqp://***@mq/v", id="userinfo-in-a-url"),
        pytest.param("password=a b;", "password=***;", id="secret-with-a-space-whole"),
        pytest.param("password: 'a b'", "password: '***'", id="quoted-secret-with-a-space"),
        pytest.param("u:p@s:@mq", "***@mq", id="secret-with-at-and-colon-as-userinfo"),
        pytest.param("password=p%40s%3A ok", "password=*** ok", id="percent-encoded-short"),
        pytest.param("password=hunter2 x", "password=*** x", id="unregistered-value-too"),
        pytest.param("password=rabbitmq x", "password=*** x", id="longer-value-not-half-masked"),
        pytest.param("password='' x", "password='' x", id="empty-quoted-value"),
        pytest.param("PWD 'password='1'", "PWD '***'***'", id="key-inside-another-value"),
        pytest.param("password='rabbit", "password='***", id="unclosed-quote-to-line-end"),
    ],
)
def test_short_secret_is_masked_in_credential_positions(text: str, expected: str) -> None:
    assert redact(text) == expected
    assert redact(expected) == expected


def _registered_forms(secret: str) -> set[str]:
    """The shapes a server may echo a secret in, as the tests above write them."""
    forms = {
        secret,
        repr(secret)[1:-1],
        json.dumps(secret)[1:-1],
        quote(secret, safe="", errors="surrogatepass"),
        quote(secret, errors="surrogatepass"),
        urllib.parse.quote_plus(secret, errors="surrogatepass"),
    }
    return {form for form in forms if form}


NO_MASK = st.characters(blacklist_characters="*")
CREDENTIAL_POSITIONS = (
    "password={}",
    "password='{}'",
    '{{"password": "{}"}}',
    "pwd: {}",
    "bad password '{}'",
    "?u=x&db_password={}&v=1",
    "amqp://user:{}@host/v",
    "user:{}@host",
)


@given(
    secret=st.text(NO_MASK, min_size=1, max_size=SHORT_SECRET_LEN - 1)
    # Long ones carry a marker: they are masked anywhere, so must not be in other tests' text.
    | st.text(NO_MASK, min_size=SHORT_SECRET_LEN, max_size=16).map(lambda t: "zq~" + t),
    position=st.sampled_from(CREDENTIAL_POSITIONS),
    pick=st.integers(0, 5),
    prefix=st.text(NO_MASK, max_size=20),
    suffix=st.text(NO_MASK, max_size=20),
)
def test_a_secret_in_a_credential_position_never_survives(
    secret: str, position: str, pick: int, prefix: str, suffix: str
) -> None:
    register_secret(secret)
    forms = sorted(_registered_forms(secret))
    text = prefix + position.format(forms[pick % len(forms)]) + suffix
    out = redact(text)
    elsewhere = prefix + position.format(MASK) + suffix  # what the rest of the text holds
    for form in forms:
        if form not in elsewhere:
            assert form not in out, (text, out)
    assert redact(out) == out, (text, out)


FREE_TEXT = st.characters(blacklist_characters="*:=@'\"")
"""No ':', '=', '@' or quote: no URL, no `key=value`, no `user:pw@`; free text only."""


@given(
    secret=st.text(FREE_TEXT, min_size=1, max_size=SHORT_SECRET_LEN - 1),
    pieces=st.lists(st.text(FREE_TEXT, max_size=12), min_size=2, max_size=6),
)
def test_a_short_secret_outside_credential_positions_changes_nothing(
    secret: str, pieces: list[str]
) -> None:
    register_secret(secret)
    text = secret.join(pieces)
    assert redact(text) == text


DELIMITERS = "*\\&,;'\"<>()[]{}/"
"""Where a generic value or userinfo ends; a short secret holding one is masked whole by its
own pass, which (only for the exact secret) sees more than the generic rules do."""
FRAGMENTS = st.sampled_from(
    [
        "password=",
        "password: ",
        '"password": ',
        "pwd=",
        "'",
        '"',
        ":",
        "@",
        "amqp://",
        "u:",
        "@h",
        " ",
        "&",
        "/",
        "\n",
        "1",
        "rabbit",
    ]
)


@given(
    secret=st.text(
        st.characters(blacklist_categories=("Z", "C"), blacklist_characters=DELIMITERS),
        min_size=1,
        max_size=SHORT_SECRET_LEN - 1,
    ),
    parts=st.lists(FRAGMENTS | st.text(NO_MASK, max_size=4) | st.just(None), max_size=12),
)
def test_registering_a_short_secret_is_no_oracle(secret: str, parts: list[str | None]) -> None:
    """Whether a value is the password cannot be told from the output: it reads the same
    before and after the password is registered."""
    text = "".join(secret if part is None else part for part in parts)
    before = redact(text)
    register_secret(secret)
    assert redact(text) == before


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("echo Authorization: Basic dXNlcjpwYXNz end", "echo Authorization: Basic *** end"),
        ('{"authorization": "Bearer abc.def-ghi"}', '{"authorization": "Bearer ***"}'),
        ("{'Authorization': 'Basic YTpi'}", "{'Authorization': 'Basic ***'}"),
        ("?authorization=abc123&x=1", "?authorization=***&x=1"),
        ("Proxy-Authorization: Negotiate YIIB", "Proxy-Authorization: Negotiate ***"),
        ("AUthorization: Basic dXNlcjpwYXNz", "AUthorization: Basic ***"),
        ("basic auth failed: Authorization required", "basic auth failed: Authorization required"),
    ],
)
def test_an_echoed_authorization_header_loses_its_token(text: str, expected: str) -> None:
    """A 500 page quoting the request's headers (the ActiveMQ review found one): the base64
    token is a password one decode away, registered or not."""
    assert redact(text) == expected
    assert redact(expected) == expected


@given(st.text(alphabet=string.ascii_letters + string.digits + "+/=", min_size=1, max_size=64))
def test_a_basic_token_never_survives_its_header(token: str) -> None:
    for shape in ("Authorization: Basic {}", '"authorization":"Basic {}"', "authorization={}"):
        assert redact(shape.format(token)) == shape.format("***")
