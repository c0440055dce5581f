"""The fault proxy itself, against the real management API of the faults broker."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator

import pytest

from queuescaler_testkit.broker import BrokerAdmin
from queuescaler_testkit.env import TestEnv
from queuescaler_testkit.faultproxy import QUEUE_COUNTS, FaultProxy, Mode
from queuescaler_testkit.publisher import delete_queue, publish_messages

pytestmark = pytest.mark.integration


@pytest.fixture
def proxy(faultenv: TestEnv) -> Iterator[FaultProxy]:
    port = urllib.parse.urlsplit(faultenv.management_url).port
    assert port is not None
    with FaultProxy("127.0.0.1", port, delay=3.0) as running:
        yield running


def get(
    env: TestEnv, proxy: FaultProxy, timeout: float = 10, path: str = "/api/vhosts"
) -> tuple[int, bytes]:
    return BrokerAdmin(env.management_url, port=proxy.port).answer("GET", path, timeout=timeout)


@pytest.mark.parametrize(
    ("mode", "status", "says"),
    [
        pytest.param(Mode.PASS, 200, b'"name"', id="pass-forwards-the-real-answer"),
        pytest.param(Mode.ERROR, 500, b"crashed serving", id="error-is-500-echoing-credentials"),
        pytest.param(Mode.GARBAGE, 200, b"not json", id="garbage-is-200-without-json"),
    ],
)
def test_modes(faultenv: TestEnv, proxy: FaultProxy, mode: Mode, status: int,
               says: bytes) -> None:
    proxy.mode = mode
    answered, body = get(faultenv, proxy)
    assert answered == status
    assert says in body
    if mode is Mode.PASS:
        assert faultenv.vhost in {v["name"] for v in json.loads(body)}
    if mode is Mode.ERROR:
        assert (urllib.parse.urlsplit(faultenv.management_url).password or "?").encode() in body
    assert proxy.count(mode) == 1


def test_slow_holds_past_a_client_timeout(faultenv: TestEnv, proxy: FaultProxy) -> None:
    proxy.mode = Mode.SLOW
    with pytest.raises((TimeoutError, socket.timeout, urllib.error.URLError)):
        get(faultenv, proxy, timeout=1)
    proxy.mode = Mode.PASS
    assert get(faultenv, proxy)[0] == 200


def test_no_stats_leaves_the_counts_out_of_every_queue(
    faultenv: TestEnv, proxy: FaultProxy
) -> None:
    queue = f"qs-proxy-{uuid.uuid4().hex[:8]}"
    publish_messages(faultenv.amqp_url, queue, 3)
    try:
        path = f"/api/queues/{urllib.parse.quote(faultenv.vhost, safe='')}"
        proxy.mode = Mode.NO_STATS
        status, body = get(faultenv, proxy, path=path)
        assert status == 200
        entries = {entry["name"]: entry for entry in json.loads(body)}
        assert queue in entries
        assert not any(key in entry for entry in entries.values() for key in QUEUE_COUNTS)
        assert proxy.count(Mode.NO_STATS) == 1
    finally:
        delete_queue(faultenv.amqp_url, queue)


def test_refuses_to_forward_off_loopback() -> None:
    with pytest.raises(ValueError, match="loopback"):
        FaultProxy("192.0.2.1", 15672)
