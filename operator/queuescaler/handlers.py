"""kopf handlers: they only wire watches to the registry and start and stop the engine.

No change handlers: they would write progress annotations to every QueueScaler each
cycle. Two raw event handlers (QueueScalers, Deployments) feed in-memory maps instead,
and the engine writes status itself, only when it changed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf
from aiohttp import web

from queuescaler.endpoints import make_app, serve
from queuescaler.engine import Engine
from queuescaler.kube.client import GROUP, PLURAL, VERSION
from queuescaler.leader import Elector

log = logging.getLogger(__name__)


@dataclass
class OperatorContext:
    """What the handlers share: passed to kopf as the operator's memo."""

    engine: Engine
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 8080
    elector: Elector | None = None
    """Set when several replicas run: only the Lease holder ticks."""
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    http: web.AppRunner | None = None


def _context(memo: Any) -> OperatorContext:
    context: OperatorContext = memo.context
    return context


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Configure kopf for many objects, serve the endpoints, start the tick loop."""
    # Watches have frozen silently before: bound both sides of every watch request.
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    # Only our own Events, never kopf's log lines as Events.
    settings.posting.enabled = False
    # Unbounded workers: a limit below the object count can deadlock indexing (kopf #1243).
    settings.queueing.worker_limit = None
    context = _context(memo)
    engine = context.engine
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(engine.settings.concurrency + 4, "kube")
    )
    app = make_app(engine.metrics.exposition, lambda: engine.ticks > 0, engine.alive)
    context.http = await serve(app, context.metrics_host, context.metrics_port)
    context.stop.clear()
    if context.elector is not None:
        context.tasks.append(
            asyncio.create_task(context.elector.run(context.stop), name="queuescaler-lease")
        )
    else:
        engine.metrics.leader.set(1)
    context.tasks.append(
        asyncio.create_task(engine.run(context.stop), name="queuescaler-ticks")
    )
    log.info("queuescaler started: metrics on :%d", context.metrics_port)


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    context = _context(memo)
    context.stop.set()
    await asyncio.gather(*context.tasks, return_exceptions=True)
    if context.http is not None:
        await context.http.cleanup()


@kopf.on.event(GROUP, VERSION, PLURAL)
async def queuescaler_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A QueueScaler appeared, changed or went away (the watch's initial list included)."""
    engine = _context(memo).engine
    # Being deleted (its namespace too, perhaps): nothing more to do for it, and its
    # namespace may already refuse new Events.
    if type == "DELETED" or body.metadata.deletion_timestamp is not None:
        gone = engine.fleet.remove(body.metadata.namespace or "", body.metadata.name or "")
        if gone is not None:
            await engine.release(gone)  # metrics dropped, pod marks cleared (best effort)
        engine.metrics.scalers.set(len(engine.fleet))
        return
    engine.fleet.upsert(body, time.time(), follow_status=not engine.leading())
    engine.metrics.scalers.set(len(engine.fleet))


@kopf.on.event("apps", "v1", "deployments")
async def deployment_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Deployments' replica counts, so a tick needs no GET of each target's /scale."""
    replicas = _context(memo).engine.replicas
    if type == "DELETED":
        replicas.forget(body.metadata.namespace or "", body.metadata.name or "")
    else:
        replicas.update(body)
