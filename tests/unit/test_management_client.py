"""The RabbitMQ management client against a stand-in server on loopback: a tenant's Secret
names the URL, so an answer without end and an error page quoting the credentials must
neither grow the operator's memory nor reach a message."""

from __future__ import annotations

import base64
import contextlib
import ssl
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from queuescaler.core.sample import ErrorKind, QueueRef, SourceError
from queuescaler.sources.rabbitmq.management import ManagementClient

pytestmark = [pytest.mark.unit, pytest.mark.asyncio(loop_scope="session")]

PASSWORD = f"pw-{uuid.uuid4().hex[:12]}"
TOKEN = base64.b64encode(f"ops:{PASSWORD}".encode()).decode()


async def endless(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b"[" + b" " * (1024 * 1024 - 1)
    with contextlib.suppress(ConnectionError):
        for _ in range(256):  # bounded: 256 MiB at most, the client stops reading long before
            await response.write(chunk)
    return response


async def echoing(request: web.Request) -> web.Response:
    page = "<table><tr><th>Authorization</th><td>Basic ".ljust(170)
    return web.Response(status=500, text=page + request.headers["Authorization"].split()[1])


@pytest.fixture(params=[endless, echoing], ids=["endless-body", "token-across-the-cut"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[str]:
    handler: Callable[[web.Request], Any] = request.param
    app = web.Application()
    app.router.add_get("/api/queues/{vhost}", handler)
    stand_in = TestServer(app, host="127.0.0.1")
    await stand_in.start_server()
    try:
        yield f"http://ops:{PASSWORD}@127.0.0.1:{stand_in.port}"
    finally:
        await stand_in.close()


async def test_a_bad_answer_is_bad_response_with_no_credential(server: str) -> None:
    client = ManagementClient(server, timeout=5.0, tls=ssl.create_default_context)
    try:
        with pytest.raises(SourceError) as failed:
            await client.sample([QueueRef("/", "jobs")])
    finally:
        await client.close()
    assert failed.value.kind is ErrorKind.BAD_RESPONSE
    assert PASSWORD not in str(failed.value) and TOKEN[:12] not in str(failed.value)
