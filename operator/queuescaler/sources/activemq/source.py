"""ActiveMQ (Classic or Artemis) as a QueueSource: every queue of every QueueScaler on a broker
read in one Jolokia bulk POST per tick, over one kept-alive HTTP session.

What the POST holds and how its answer reads is `jolokia.py`'s (samples) and `consumers.py`'s
(busy clients); this module sends it. The credentials travel as basic auth built here, never
in a URL, and every error is worded through the one redaction function.
"""

from __future__ import annotations

import base64
import json
import ssl
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from typing import Any, Final

import aiohttp
import yarl

from queuescaler.core.redact import excerpt, redact, register_secret
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, SampleResult, SourceError
from queuescaler.sources.activemq.consumers import ListingPlan
from queuescaler.sources.activemq.jolokia import (
    PROBE_ATTRIBUTES,
    QUERY,
    Probe,
    Read,
    SamplePlan,
    answers,
    broker_mbean,
    next_detected,
    probe,
)
from queuescaler.sources.activemq.secret import CA_CERT, ActiveMQBroker
from queuescaler.sources.activemq.spec import ARTEMIS, CLASSIC, BrokerScope, Flavor
from queuescaler.sources.http import answer

__all__ = ["ActiveMQSource"]

PER_READ_SECONDS: Final = 0.002
"""Time a bulk POST may take per read it carries, on top of the timeout (Artemis answered
1,000 queues' pattern read in 0.3 s)."""
KEEPALIVE_SECONDS: Final = 45.0
"""How long an idle connection to the agent is kept: beyond the default 15 s polling interval."""
MAX_BODY_BYTES: Final = 32 * 1024 * 1024
"""The most an answer may hold, plus PER_READ_BYTES per read it answers: Artemis' consumer
listing of 10,000 consumers fits, an endless stream from a URL a tenant's Secret names does
not (`sources.http.read_capped`)."""
PER_READ_BYTES: Final = 16 * 1024


def _error(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))


class ActiveMQSource:
    """Samples one Jolokia agent's queues. Use it on one event loop; `close()` when done."""

    def __init__(
        self,
        broker: ActiveMQBroker,
        *,
        timeout: float = 5.0,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`timeout` bounds every POST; `trace_configs` observe the HTTP requests made."""
        self._broker = broker
        self._timeout = timeout
        self._trace_configs = list(trace_configs)
        self._session: aiohttp.ClientSession | None = None
        self._tls: ssl.SSLContext | None = None
        self._headers = {"Content-Type": "application/json", "Accept": "application/json",
                         "Origin": broker.origin}
        if broker.username is not None:
            token = base64.b64encode(
                f"{broker.username}:{broker.password or ''}".encode()).decode()
            register_secret(token)  # an error page that echoes the header shows it masked
            self._headers["Authorization"] = f"Basic {token}"
        self._detected: Flavor | None = None
        """The flavor the agent serves, once a probe told (for specs that leave it out)."""
        self._names: dict[Flavor, str] = {}
        """Broker names a wildcard probe found (an Artemis listing must name its broker)."""

    def __repr__(self) -> str:
        return f"ActiveMQSource({self._broker.url!r})"

    @property
    def _where(self) -> str:
        return f"Jolokia at {self._broker.url}/"

    def _tls_context(self) -> ssl.SSLContext:
        if self._tls is None:
            try:
                self._tls = ssl.create_default_context(cadata=self._broker.ca_cert)
            except (ssl.SSLError, ValueError, TypeError):
                raise _error(ErrorKind.BAD_CONFIG,
                             f"connection Secret: {CA_CERT!r} does not load") from None
        return self._tls

    def _open_session(self) -> aiohttp.ClientSession:
        """Made on first use, inside the running loop, then kept: keep-alive across ticks."""
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._tls_context() if self._broker.https else False,
                keepalive_timeout=KEEPALIVE_SECONDS,
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trace_configs=self._trace_configs, raise_for_status=False)
        return self._session

    async def _post(self, body: list[dict[str, Any]]) -> Any:
        """The decoded answer to one bulk POST; SourceError for the agent as a whole."""
        limit = self._timeout + PER_READ_SECONDS * len(body)
        cap = MAX_BODY_BYTES + PER_READ_BYTES * len(body)
        url = yarl.URL(f"{self._broker.url}/?{QUERY}", encoded=True)
        where = self._where
        status, text = await answer(self._open_session().post(
            url,
            data=json.dumps(body),
            headers=self._headers,
            allow_redirects=False,  # never follow with our credentials to another place
            timeout=aiohttp.ClientTimeout(total=limit),
        ), where=where, limit=limit, cap=cap)
        if status in (401, 403):
            raise _error(ErrorKind.AUTH, f"{where} refused the credentials (HTTP {status})")
        if status == 404:
            raise _error(ErrorKind.BAD_CONFIG,
                         f"no Jolokia agent at {self._broker.url}/ (HTTP 404): check jolokiaUrl")
        if 300 <= status < 400:
            raise _error(ErrorKind.BAD_CONFIG, f"{where} redirects (HTTP {status}): set "
                         "jolokiaUrl to the agent's own address")
        if status != 200:
            reason = excerpt(text)
            raise _error(ErrorKind.BAD_RESPONSE, f"{where} answered HTTP {status}: {reason}")
        try:
            return json.loads(text)
        except (ValueError, RecursionError):
            raise _error(ErrorKind.BAD_RESPONSE, f"{where} answered something not JSON") from None

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Every queue in one POST: its probes, then one read per queue (two while the flavor
        is not known). `taken_at` is this process's clock when the answer arrived: the
        brokers count live, with no statistics interval."""
        if not queues:
            return {}
        plan = SamplePlan(queues, self._broker.broker_name, self._detected)
        if not plan.queue_reads:
            return dict(plan.refused)
        document = await self._post(plan.body())
        outcome = plan.parse(document, time.time())
        self._detected = next_detected(self._detected, plan, outcome)
        self._names.update(outcome.names)
        return outcome.result

    async def _probe(self, flavors: Sequence[Flavor], broker_name: str | None) -> None:
        """One POST of broker probes, to learn the flavor or the broker's name."""
        reads = [Read(broker_mbean(flavor, broker_name), PROBE_ATTRIBUTES[flavor],
                      pattern=broker_name is None) for flavor in flavors]
        entries = answers(await self._post([read.request() for read in reads]), len(reads))
        found: list[Flavor] = []
        for flavor, read, entry in zip(flavors, reads, entries, strict=True):
            seen, name = probe(flavor, read, entry)
            if seen in (Probe.FOUND, Probe.SEVERAL, Probe.STANDBY):
                found.append(flavor)
            if name is not None and broker_name is None and seen in (Probe.FOUND, Probe.STANDBY):
                self._names[flavor] = name
        if len(found) == 1:
            self._detected = found[0]

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        """The clients consuming from the brokers `scopes` name, with what they hold: one
        POST per broker (one in all, as a rule). Raises SourceError when one cannot be told:
        protection then holds."""
        groups: dict[tuple[Flavor | None, str | None], list[tuple[str, BrokerScope]]] = (
            defaultdict(list))
        for text in sorted(set(scopes)):
            scope = BrokerScope.from_scope(text)
            if scope is None:
                raise _error(ErrorKind.BAD_CONFIG, "not an activemq scope")
            groups[(scope.flavor, scope.broker_name or self._broker.broker_name)].append(
                (text, scope))
        found: list[BrokerClient] = []
        for (flavor, broker_name), members in groups.items():
            if flavor is None:
                if self._detected is None:
                    await self._probe((CLASSIC, ARTEMIS), broker_name)
                flavor = self._detected
                if flavor is None:
                    raise _error(ErrorKind.BAD_CONFIG, "no ActiveMQ broker (Classic or "
                                 f"Artemis) answers behind {self._where}")
            if flavor == ARTEMIS and broker_name is None:
                if ARTEMIS not in self._names:
                    await self._probe((ARTEMIS,), None)
                broker_name = self._names.get(ARTEMIS)
                if broker_name is None:
                    raise _error(ErrorKind.BAD_CONFIG, "the Artemis broker's name is not "
                                 "known: set brokerName (in the spec or the Secret)")
            plan = ListingPlan(flavor, members, broker_name)
            found += plan.parse(await self._post(plan.body()))
        return found

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
