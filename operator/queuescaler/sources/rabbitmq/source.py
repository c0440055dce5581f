"""RabbitMQ as a QueueSource: the management API for full samples, AMQP for the fast path.

One `RabbitMQSource` per broker serves every QueueScaler on it: `sample()` is one HTTP
request per call (rabbitmq_http), `peek()` a passive declare per queue over connections
kept open (rabbitmq_amqp). Without a management URL, `sample()` is `peek()`.
"""

from __future__ import annotations

import contextlib
import os
import ssl
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import aiohttp

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, SampleResult, SourceError
from queuescaler.sources.rabbitmq.amqp import AmqpPeeker
from queuescaler.sources.rabbitmq.management import ManagementClient
from queuescaler.sources.rabbitmq.secret import RabbitMQBroker

__all__ = ["RabbitMQSource", "tls_context"]


@contextlib.contextmanager
def _pem_file(text: str) -> Iterator[str]:
    """A path to `text` for ssl's file-only `load_cert_chain`, gone when the block ends.

    An in-memory file where Linux offers one (the operator's root filesystem is
    read-only), else a private temporary file.
    """
    data = text.encode()
    if hasattr(os, "memfd_create") and Path("/proc/self/fd").is_dir():
        fd = os.memfd_create("queuescaler-tls")
        try:
            with open(fd, "wb", closefd=False) as memory:
                memory.write(data)
            yield f"/proc/self/fd/{fd}"
        finally:
            os.close(fd)
        return
    with tempfile.TemporaryDirectory(prefix="queuescaler-tls-") as directory:
        path = Path(directory) / "pem"
        path.touch(mode=0o600)
        path.write_bytes(data)
        yield str(path)


def tls_context(connection: RabbitMQBroker) -> ssl.SSLContext:
    """Verifying TLS: the CA from `ca.crt` (else the system's), the client certificate if any."""
    try:
        context = ssl.create_default_context(cadata=connection.ca_cert)
    except (ssl.SSLError, ValueError, TypeError):
        raise SourceError(
            ErrorKind.BAD_CONFIG, "connection Secret: 'ca.crt' does not load"
        ) from None
    if connection.client_cert is not None and connection.client_key is not None:
        try:
            with _pem_file(connection.client_cert) as cert, _pem_file(connection.client_key) as key:
                context.load_cert_chain(cert, key)
        except (ssl.SSLError, OSError, ValueError):
            raise SourceError(
                ErrorKind.BAD_CONFIG,
                "connection Secret: 'tls.crt' and 'tls.key' do not load as a certificate "
                "and its key",
            ) from None
    return context


class RabbitMQSource:
    """Samples one RabbitMQ broker's queues. Use it on one event loop; `close()` when done."""

    def __init__(
        self,
        connection: RabbitMQBroker,
        *,
        timeout: float = 5.0,
        trace_configs: Sequence[aiohttp.TraceConfig] = (),
    ) -> None:
        """`timeout` bounds every broker call; `trace_configs` observe the HTTP requests made."""
        self._connection = connection
        self._tls: ssl.SSLContext | None = None
        self._http = (
            ManagementClient(
                connection.management_url,
                timeout=timeout,
                tls=self._tls_context,
                trace_configs=trace_configs,
            )
            if connection.management_url
            else None
        )
        self._amqp = AmqpPeeker(connection.amqp_url, timeout=timeout, tls=self._tls_context)

    def __repr__(self) -> str:
        return f"RabbitMQSource({self._connection!r})"

    def _tls_context(self) -> ssl.SSLContext:
        """Built once, on first TLS use, so a bad certificate surfaces as a sampling error."""
        if self._tls is None:
            self._tls = tls_context(self._connection)
        return self._tls

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Every queue in one management request (or by `peek` with no management URL).

        Samples carry rates and unacked counts; `taken_at` is this process's clock when
        the answer arrived (the broker's statistics are up to one interval older).
        """
        if not queues:
            return {}
        if self._http is None:
            return await self.peek(queues)
        return await self._http.sample(queues)

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        """Live ready and consumer counts by AMQP; unacked is unknown there (reported as 0)."""
        return await self._amqp.peek(queues)

    async def clients(self, vhosts: Collection[str]) -> Sequence[BrokerClient]:
        """Consuming connections, what they hold and the queues they consume (management API
        only: AMQP cannot tell)."""
        if self._http is None:
            raise SourceError(
                ErrorKind.BAD_CONFIG,
                "the connection Secret has no managementUrl: consumers cannot be listed",
            )
        return await self._http.clients(vhosts)

    async def close(self) -> None:
        try:
            if self._http is not None:
                await self._http.close()
        finally:
            await self._amqp.close()
