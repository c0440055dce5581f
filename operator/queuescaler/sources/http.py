"""What the HTTP sources (RabbitMQ's management API, Jolokia) share: a body read with a
bound. I/O."""

from __future__ import annotations

from typing import Final

import aiohttp

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
