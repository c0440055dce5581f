"""The management HTTP API: every queue a tick asks about in one GET, over one reused session.

The cost of a tick grows with brokers, not with QueueScalers: one listing (only the
columns a sample needs) answers every queue, whichever vhost it lives in. A second,
cheap request (the vhost names) is made only when a queue is missing, to tell a missing
vhost from a missing queue.
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import time
import urllib.parse
from collections.abc import Callable, Collection, Sequence

import aiohttp
import yarl

from queuescaler.core.redact import excerpt, redact, register_secret
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, SampleResult, SourceError
from queuescaler.sources.http import answer
from queuescaler.sources.rabbitmq.listing import (
    CHANNEL_COLUMNS,
    CONNECTION_COLUMNS,
    CONSUMER_COLUMNS,
    QUEUE_COLUMNS,
    mark_missing_vhosts,
    name_filter_query,
    parse_client_connections,
    parse_queue_listing,
    parse_vhost_names,
    vhost_not_found,
)

PER_ITEM_SECONDS = 0.001
"""Time a listing may take per queue asked for, on top of the request timeout."""
MAX_BODY_BYTES = 64 * 1024 * 1024
"""The most an answer may hold, plus PER_ITEM_BYTES per queue asked for: a broker-wide
listing of 100,000 queues (its columns only) or of 20,000 consumers fits, an endless stream
from a URL a tenant's Secret names does not (`sources.http.read_capped`)."""
PER_ITEM_BYTES = 4096
KEEPALIVE_SECONDS = 45.0
"""How long an idle connection to the management API is kept on our side: beyond the
default 15 s polling interval (aiohttp's own 15 s lapsed just before each poll). The API's
web server (cowboy) closes an idle keep-alive connection after its request_timeout, 5 s by
default (RabbitMQ's `management.tcp.request_timeout`): raise that above the polling
interval for one connection across ticks. A connection the server closed is dropped by
aiohttp, and a GET sent as it closes is retried once: no tick fails on either."""

_QUEUE_QUERY = "columns=" + ",".join(QUEUE_COLUMNS)
_VHOST_QUERY = "columns=name"
_CONNECTION_QUERY = "columns=" + ",".join(CONNECTION_COLUMNS)
_CHANNEL_QUERY = "columns=" + ",".join(CHANNEL_COLUMNS)
_CONSUMER_QUERY = "columns=" + ",".join(CONSUMER_COLUMNS)


def _error(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))


class ManagementClient:
    """One broker's management API. Create and use it on one event loop; `close()` at the end.

    Credentials come from the URL's userinfo and travel as basic auth, never in the
    request URL, so no library error can quote them.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        tls: Callable[[], ssl.SSLContext],
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        parts = urllib.parse.urlsplit(url)
        self._headers = {"Accept": "application/json"}
        if parts.username is not None:  # basic auth, built here: no URL, no library error shows it
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            register_secret(token)  # an error page may echo it without its header's name
            self._headers["Authorization"] = f"Basic {token}"
        host = parts.netloc.rpartition("@")[2]
        self._base = f"{parts.scheme}://{host}{parts.path.rstrip('/')}"
        """Scheme, host, port and any path prefix (a reverse proxy's): no userinfo."""
        self._https = parts.scheme.lower() == "https"
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._tls = tls
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"ManagementClient({self._base!r})"

    def _open_session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running loop, then kept: keep-alive across ticks."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._tls() if self._https else False, keepalive_timeout=KEEPALIVE_SECONDS
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                trace_configs=self._trace_configs,
                raise_for_status=False,
            )
        return self._session

    async def _get(self, path: str, query: str, *, items: int = 0) -> tuple[int, bytes]:
        """Status and body of one GET; SourceError for anything but 200 and 404.

        A listing of `items` queues is given `PER_ITEM_SECONDS` each on top of the timeout:
        10,000 queues take the broker about 0.7 s idle, several seconds when it is busy.
        """
        url = yarl.URL(f"{self._base}{path}?{query}", encoded=True)
        where = f"management API at {self._base}"
        limit = (self._timeout.total or 0.0) + PER_ITEM_SECONDS * items
        cap = MAX_BODY_BYTES + PER_ITEM_BYTES * items
        status, body = await answer(self._open_session().get(
            url,
            allow_redirects=False,  # never follow with our credentials to another place
            headers=self._headers,
            timeout=aiohttp.ClientTimeout(total=limit),
        ), where=where, limit=limit, cap=cap)
        if status in (200, 404):
            return status, body
        reason = excerpt(body)
        if status in (401, 403):
            raise _error(
                ErrorKind.AUTH, f"{where} refused the credentials (HTTP {status}): {reason}"
            )
        if 300 <= status < 400:
            raise _error(
                ErrorKind.BAD_RESPONSE,
                f"{where} redirects (HTTP {status}): set managementUrl to the final address",
            )
        raise _error(ErrorKind.BAD_RESPONSE, f"{where} answered HTTP {status}: {reason}")

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Every queue in one listing: per vhost when all share one, else broker-wide.

        A few queues in one vhost are asked for by name (`name_filter_query`), so a broker
        full of queues nobody scales does not make each tick pay for all of them.

        `taken_at` is this process's time.time() when the listing arrived; the broker's
        numbers are older, by up to one statistics interval (5 s by default).
        """
        vhosts = {ref.scope for ref in queues}
        if len(vhosts) == 1:
            (vhost,) = vhosts
            only_wanted = name_filter_query(ref.name for ref in queues)
            query = f"{only_wanted}&{_QUEUE_QUERY}" if only_wanted else _QUEUE_QUERY
            status, body = await self._get(
                f"/api/queues/{urllib.parse.quote(vhost, safe='')}", query, items=len(queues)
            )
            if status == 404:
                return {ref: vhost_not_found(vhost) for ref in queues}
            return parse_queue_listing(body, queues, time.time())
        status, body = await self._get("/api/queues", _QUEUE_QUERY, items=len(queues))
        if status == 404:
            raise _error(ErrorKind.BAD_RESPONSE, f"no management API at {self._base} (HTTP 404)")
        result = parse_queue_listing(body, queues, time.time())
        missing = any(
            isinstance(outcome, SourceError) and outcome.kind is ErrorKind.QUEUE_NOT_FOUND
            for outcome in result.values()
        )
        if missing:
            status, body = await self._get("/api/vhosts", _VHOST_QUERY)
            if status == 200:
                result = mark_missing_vhosts(result, parse_vhost_names(body))
        return result

    async def clients(self, vhosts: Collection[str]) -> list[BrokerClient]:
        """The consuming connections in `vhosts`, with the queues they consume: three GETs
        (connections, channels, then consumers).

        Scoped to the vhost when there is one, broker-wide otherwise. The broker shows a
        user only its own connections unless the user is tagged `monitoring` (or more).
        A consumer listing that fails leaves every client's queues unknown (each may then
        be any pool's worker: protection fails closed), not the whole listing failed.
        """
        wanted = set(vhosts)
        if not wanted:
            return []
        prefix, consumers = "/api", "/api/consumers"
        if len(wanted) == 1:
            (vhost,) = wanted
            quoted = urllib.parse.quote(vhost, safe="")
            prefix, consumers = f"/api/vhosts/{quoted}", f"/api/consumers/{quoted}"
        status, connections = await self._get(f"{prefix}/connections", _CONNECTION_QUERY)
        if status == 404:
            raise _error(ErrorKind.VHOST_NOT_FOUND, "the connection listing was not found")
        status, channels = await self._get(f"{prefix}/channels", _CHANNEL_QUERY)
        if status == 404:
            raise _error(ErrorKind.VHOST_NOT_FOUND, "the channel listing was not found")
        consumed: bytes | None = None
        with contextlib.suppress(SourceError):
            status, body = await self._get(consumers, _CONSUMER_QUERY)
            consumed = body if status == 200 else None
        return parse_client_connections(connections, channels, wanted, consumed)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
