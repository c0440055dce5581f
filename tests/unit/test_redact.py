"""redact(): URL userinfo and registered secrets, in every form they take; the logging filter."""

from __future__ import annotations

import logging
import re
import urllib.parse
import uuid
from collections.abc import Callable
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuescaler.core.redact import RedactingFilter, redact, register_secret

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
