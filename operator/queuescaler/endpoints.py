"""The operator's HTTP endpoints: /metrics for Prometheus, /healthz and /readyz for probes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from aiohttp import web


def make_app(
    exposition: Callable[[str], tuple[Iterator[bytes], str]],
    ready: Callable[[], bool],
    alive: Callable[[], bool] | None = None,
) -> web.Application:
    """`exposition` gives the chunks of the exposition for a scrape's Accept header, and
    their content type (`Metrics.exposition`);
    `ready` says whether the first tick has run (the watches have delivered their lists);
    `alive`, when given, whether the tick loop still makes progress (a stuck loop fails the
    liveness probe, so the kubelet restarts the pod)."""

    async def metrics(request: web.Request) -> web.StreamResponse:
        # The text format by default; OpenMetrics when the scraper asks for it. Each chunk
        # is made off the event loop (at 10,000 QueueScalers an exposition is 350,000
        # lines) and sent before the next is made, so a scrape never holds all of it.
        chunks, content_type = exposition(request.headers.get("Accept", ""))
        response = web.StreamResponse(headers={"Content-Type": content_type})
        await response.prepare(request)
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            await response.write(chunk)
        await response.write_eof()
        return response

    async def healthz(_: web.Request) -> web.Response:
        if alive is None or alive():
            return web.Response(text="ok\n")
        return web.Response(status=503, text="the tick loop is stuck\n")

    async def readyz(_: web.Request) -> web.Response:
        if ready():
            return web.Response(text="ready\n")
        return web.Response(status=503, text="starting\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    """Start serving; the caller keeps the runner and calls `cleanup()` on shutdown."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
