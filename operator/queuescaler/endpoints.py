"""The operator's HTTP endpoints: /metrics for Prometheus, /healthz and /readyz for probes."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiohttp import web


def make_app(
    render: Callable[[str], tuple[bytes, str]],
    ready: Callable[[], bool],
    alive: Callable[[], bool] | None = None,
) -> web.Application:
    """`render` makes the exposition for a scrape's Accept header (`Metrics.render`);
    `ready` says whether the first tick has run (the watches have delivered their lists);
    `alive`, when given, whether the tick loop still makes progress (a stuck loop fails the
    liveness probe, so the kubelet restarts the pod)."""

    async def metrics(request: web.Request) -> web.Response:
        # The text format by default; OpenMetrics when the scraper asks for it. Off the
        # event loop: at 10,000 QueueScalers an exposition is 350,000 lines.
        body, content_type = await asyncio.to_thread(render, request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

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
