"""The wiring around the engine (defect 9 of "11 Never a wrong scale", issue 16): the kopf
start-up handler serves the engine's liveness on /healthz, and `queuescaler run` builds its
Kubernetes client with one retry and the (5 s, 15 s) timeout on every call.

Both go through their public entry points: `handlers.start`/`handlers.stop` with kopf's own
settings and memo, `queuescaler run` through click. Only what would reach a real cluster
is faked: `kopf.run` and `kopf.configure` (they would start watching), `load_kube_credentials` (it
would read a kubeconfig) and the apiserver (a local socket that drops every connection).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import aiohttp
import kopf
import pytest
import urllib3
from click.testing import CliRunner
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from prometheus_client import CollectorRegistry
from test_engine import NOW, Kube, Source, body

from queuescaler import cli, handlers
from queuescaler import engine as engine_module
from queuescaler.core.redact import RedactingFilter
from queuescaler.core.spec import ScaleTargetRef
from queuescaler.engine import Engine, EngineSettings
from queuescaler.fleet import Fleet, ReplicaCache
from queuescaler.kube.client import HpaTarget, KubeClient, KubeError
from queuescaler.metrics import Metrics

pytestmark = pytest.mark.unit

STALL_AFTER = 0.3
"""LIVENESS_SECONDS for these tests: a loop that has not gone round for this long is stuck."""
DEPLOYMENT = ScaleTargetRef("apps/v1", "Deployment", "worker")


# --- handlers: /healthz follows the tick loop ---

Handler = Callable[..., Awaitable[None]]
START = cast(Handler, handlers.start)
STOP = cast(Handler, handlers.stop)
"""The kopf handlers as plain coroutines (kopf's decorators return them unchanged)."""


class StallingKube(Kube):
    """Its HPA listing (the first call of a tick with a due QueueScaler) hangs until
    `resume` is set: a call stuck past every timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.resume = asyncio.Event()
        self.stalled = asyncio.Event()

    async def list_hpas(self, namespace: str) -> list[HpaTarget]:
        self.stalled.set()
        await self.resume.wait()
        return []


@dataclass
class Started:
    """A started operator: its context and where its endpoints listen."""

    context: handlers.OperatorContext
    memo: kopf.Memo
    base: str
    settings: kopf.OperatorSettings
    executors: list[concurrent.futures.Executor | None] = field(default_factory=list)


async def start(running: Engine) -> Started:
    context = handlers.OperatorContext(running, metrics_host="127.0.0.1", metrics_port=0)
    memo = kopf.Memo(context=context)
    settings = kopf.OperatorSettings()
    loop = asyncio.get_running_loop()
    before = getattr(loop, "_default_executor", None)
    await START(settings=settings, memo=memo)
    assert context.http is not None
    host, port = context.http.addresses[0][:2]
    started = Started(context, memo, f"http://{host}:{port}", settings)
    # start() installs a thread pool as the loop's default executor: hand back the old one
    # when done, so later tests on this loop keep theirs.
    started.executors = [getattr(loop, "_default_executor", None), before]
    return started


async def stop(started: Started) -> None:
    await STOP(memo=started.memo)
    mine, before = started.executors
    loop = asyncio.get_running_loop()
    setattr(loop, "_default_executor", before)  # noqa: B010 (no public way back)
    if mine is not None and mine is not before:
        mine.shutdown(wait=False)


async def get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as response:
        return response.status, await response.text()


async def test_healthz_fails_while_the_tick_loop_stalls_and_recovers_with_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(engine_module, "LIVENESS_SECONDS", STALL_AFTER)
    kube = StallingKube()
    fleet, cache = Fleet(), ReplicaCache()
    fleet.upsert(body("a"), NOW)
    cache.set("a", "worker", 1)
    running = Engine(kube, fleet, cache, Metrics(CollectorRegistry(), process=False),
                     lambda broker: Source(), EngineSettings(tick_seconds=0.01, fast_path=False),
                     clock=lambda: NOW)
    started = await start(running)
    try:
        async with aiohttp.ClientSession() as session:
            await asyncio.wait_for(kube.stalled.wait(), 5)
            assert await get(session, f"{started.base}/healthz") == (200, "ok\n")
            assert (await get(session, f"{started.base}/readyz"))[0] == 503  # no tick done

            await asyncio.sleep(STALL_AFTER * 2)  # the first tick is still stuck
            assert await get(session, f"{started.base}/healthz") == (
                503, "the tick loop is stuck\n"
            )

            kube.resume.set()  # the call comes back: the loop goes round again
            await asyncio.sleep(STALL_AFTER * 2)  # longer than the bound, ticking all along
            assert running.ticks > 1
            assert await get(session, f"{started.base}/healthz") == (200, "ok\n")
            assert await get(session, f"{started.base}/readyz") == (200, "ready\n")
    finally:
        kube.resume.set()
        await stop(started)
    assert all(task.done() for task in started.context.tasks)


async def test_start_bounds_every_watch_and_stop_ends_the_loop() -> None:
    running = Engine(Kube(), Fleet(), ReplicaCache(), Metrics(CollectorRegistry(), process=False),
                     lambda broker: Source(), EngineSettings(tick_seconds=0.01, fast_path=False),
                     clock=lambda: NOW)
    started = await start(running)
    try:
        watching = started.settings.watching
        assert (watching.server_timeout, watching.client_timeout, watching.connect_timeout) == (
            300, 330, 10
        )
        await asyncio.sleep(0.05)
        assert running.ticks > 0 and running.alive()
    finally:
        await stop(started)
    ticks = running.ticks
    await asyncio.sleep(0.05)
    assert running.ticks == ticks  # stopped: the loop no longer goes round


# --- cli: the Kubernetes client `queuescaler run` builds ---


class DroppingServer:
    """A TCP server that accepts each connection and closes it at once, counting them:
    every request the client sends fails, and each try is one connection."""

    def __init__(self) -> None:
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.2)
        self.port: int = self._socket.getsockname()[1]
        self.accepted = 0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._done.is_set():
            try:
                connection, _ = self._socket.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            connection.close()

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._socket.close()


@dataclass
class Ran:
    """What `queuescaler run` handed to kopf."""

    kwargs: dict[str, Any]
    context: handlers.OperatorContext
    probe: logging.Handler
    server: DroppingServer


@pytest.fixture
def ran(monkeypatch: pytest.MonkeyPatch) -> Iterator[Ran]:
    server = DroppingServer()
    seen: dict[str, Any] = {}

    def load_credentials() -> None:  # as a kubeconfig pointing at the local server would
        configuration = k8s.Configuration(host=f"http://127.0.0.1:{server.port}")
        k8s.Configuration.set_default(configuration)

    def run(**kwargs: Any) -> None:
        seen.update(kwargs)

    monkeypatch.setattr(k8s.Configuration, "_default", None)
    monkeypatch.setattr(cli, "load_kube_credentials", load_credentials)
    monkeypatch.setattr(kopf, "run", run)
    monkeypatch.setattr(kopf, "configure", lambda **_: None)
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")  # leave this process's allocator alone
    probe = logging.NullHandler()
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [probe])
    levels = {name: logging.getLogger(name).level for name in ("kopf.objects", "pika")}
    try:
        result = CliRunner().invoke(cli.main, ["run", "-n", "jobs", "--metrics-port", "9999"])
        assert result.exit_code == 0, result.output
        memo = seen.pop("memo")
        yield Ran(seen, memo.context, probe, server)
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        server.close()


def kube_of(ran: Ran) -> KubeClient:
    kube = ran.context.engine.kube
    assert isinstance(kube, KubeClient)
    return kube


async def test_run_retries_a_failed_kube_call_once(ran: Ran) -> None:
    with pytest.raises(KubeError):
        await kube_of(ran).read_selector("jobs", DEPLOYMENT)
    assert ran.server.accepted == 2  # the try and one retry (urllib3's default: 4 in all)


async def test_run_sends_every_kube_call_with_the_connect_and_read_timeouts(
    ran: Ran, monkeypatch: pytest.MonkeyPatch
) -> None:
    kube = kube_of(ran)
    sent: list[Any] = []
    pool = kube._api_client.rest_client.pool_manager

    def request(method: str, url: str, **kwargs: Any) -> urllib3.HTTPResponse:
        sent.append(kwargs.get("timeout"))
        raise urllib3.exceptions.ProtocolError("dropped")

    monkeypatch.setattr(pool, "request", request)
    for call in (kube.read_selector("jobs", DEPLOYMENT), kube.patch_status("jobs", "qs", {}),
                 kube.read_secret("jobs", "s")):
        with pytest.raises(KubeError):
            await call
    assert sent and all(isinstance(t, urllib3.Timeout) for t in sent)
    assert {(t.connect_timeout, t.read_timeout) for t in sent} == {(5.0, 15.0)}


def test_run_sizes_the_connection_pool_for_the_engines_concurrency(ran: Ran) -> None:
    pool = kube_of(ran)._api_client.rest_client.pool_manager
    assert pool.connection_pool_kw["maxsize"] == ran.context.engine.settings.concurrency + 4
    retries = pool.connection_pool_kw["retries"]  # the kubernetes client makes it a Retry
    assert getattr(retries, "total", retries) == 1


def test_run_with_a_namespace_watches_that_namespace_only(ran: Ran) -> None:
    assert ran.kwargs["clusterwide"] is False
    assert tuple(ran.kwargs["namespaces"]) == ("jobs",)
    assert ran.kwargs["standalone"] is True
    assert ran.context.metrics_port == 9999
    assert ran.context.elector is None and ran.context.engine.leading()


def test_run_redacts_every_log_handler(ran: Ran) -> None:
    assert any(isinstance(f, RedactingFilter) for f in ran.probe.filters)


@pytest.mark.parametrize(
    ("kubeconfig", "home_config", "loaded"),
    [
        pytest.param("{missing}:{config}", False, "{missing}:{config}", id="a-list"),
        pytest.param(None, False, "pod", id="in-a-pod"),
        pytest.param("", True, "~/.kube/config", id="empty-means-unset"),
        pytest.param(None, True, "~/.kube/config", id="home-config"),
    ],
)
def test_kube_credentials_come_from_a_kubeconfig_else_the_pod_without_a_plain_print(
    kubeconfig: str | None, home_config: bool, loaded: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """In a pod there is no kubeconfig: kubernetes' own load_config() then prints a
    plain-text line to stdout, which is not JSON (seen in the image, issue 13). The paths
    decided on are the ones loaded (the library keeps KUBECONFIG as it was at import)."""
    chosen: list[str] = []
    monkeypatch.setattr(k8s_config, "load_kube_config",
                        lambda config_file: chosen.append(config_file))
    monkeypatch.setattr(k8s_config, "load_incluster_config", lambda: chosen.append("pod"))
    monkeypatch.setenv("HOME", str(tmp_path))
    if home_config:
        (tmp_path / ".kube").mkdir()
        (tmp_path / ".kube" / "config").write_text("{}")
    (tmp_path / "config").write_text("{}")
    paths = {"missing": str(tmp_path / "missing"), "config": str(tmp_path / "config")}
    if kubeconfig is None:
        monkeypatch.delenv("KUBECONFIG", raising=False)
    else:
        monkeypatch.setenv("KUBECONFIG", kubeconfig.format(**paths).replace(":", os.pathsep))
    cli.load_kube_credentials()
    assert chosen == [loaded.format(**paths).replace(":", os.pathsep)]
    assert capsys.readouterr().out == ""
