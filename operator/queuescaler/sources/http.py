"""What the HTTP sources (RabbitMQ's management API, Jolokia) share: a request's answer read
with a bound, and its transport failures named as SourceErrors. I/O."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Final

import aiohttp

from queuescaler.core.redact import redact
from queuescaler.core.sample import ErrorKind, SourceError

CHUNK: Final = 64 * 1024


async def read_capped(response: aiohttp.ClientResponse, limit: int) -> bytes | None:
    """The body, or None as soon as it is longer than `limit` bytes (read no further).

    The URL is a tenant's (their Secret names it): a server that streams without end would
    otherwise grow the operator's memory until it is killed, and every pool with it (a
    review streamed 600 MB in 2.6 s, inside the timeout; the chart allows 768 MiB).
    """
    if response.content_length is not None and response.content_length > limit:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(CHUNK):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def answer(
    request: AbstractAsyncContextManager[aiohttp.ClientResponse], *, where: str,
    limit: float, cap: int,
) -> tuple[int, bytes]:
    """The status and body of one request (sent with a `limit` seconds timeout), the body at
    most `cap` bytes; SourceError, redacted, for a timeout, TLS, the network, the protocol or
    an answer over the cap. What a status means is the caller's."""
    try:
        async with request as response:
            status, body = response.status, await read_capped(response, cap)
    except TimeoutError:  # aiohttp's own timeouts subclass it too
        raise _error(ErrorKind.TIMEOUT, f"{where}: no answer within {limit:.1f}s") from None
    except (aiohttp.ClientSSLError, aiohttp.ServerFingerprintMismatch) as error:
        raise _error(ErrorKind.TLS_FAILED, f"{where}: TLS failed: {error}") from None
    except (aiohttp.ClientConnectionError, OSError) as error:
        raise _error(ErrorKind.UNREACHABLE, f"{where}: {error}") from None
    except aiohttp.ClientError as error:
        raise _error(ErrorKind.BAD_RESPONSE, f"{where}: {type(error).__name__}: {error}") from None
    if body is None:
        raise _error(ErrorKind.BAD_RESPONSE, f"{where} answered more than {cap:,} bytes")
    return status, body


def _error(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))
