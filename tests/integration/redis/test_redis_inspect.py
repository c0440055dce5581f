"""Busy Celery workers on Redis, from the workers themselves: `RedisSource.clients()` runs
Celery's `inspect` (reserved, active, active_queues) as one broadcast round over the real
redis-server, answered by real Celery workers (the classic `tasks` app, prefork, named
`celery@<pod name>` as in a pod).

Redis alone cannot tell them apart: with Celery's default (acks on start) the task a worker
runs is no longer in kombu's unacked hash, and nothing in Redis says who waits on a list.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.workers import Pod, match_workers
from queuescaler.sources.redis.layout import Layout
from queuescaler.sources.redis.secret import broker_from_secret
from queuescaler.sources.redis.source import (
    CONTROL_ACL_NEEDS,
    CONTROL_CONNECTIONS,
    INSPECT_WAVES,
    RedisSource,
)
from queuescaler.sources.redis.streams import StreamGroup
from queuescaler_testkit.redis_server import SPARE_PORT, RedisServer
from queuescaler_testkit.workers.redis_tasks import (
    TASK_NAME,
    make_app,
    redis_worker_command,
    redis_worker_env,
)

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

BUSY_DB, SILENT_DB, EMPTY_DB, ACL_DB, LAYOUTS_DB = 16, 17, 18, 19, 25
"""Databases of their own (test_redis_source.py has 1 to 14, the worker test 15)."""
HELD = 3
"""Tasks sent to the busy worker: concurrency 1, prefetch 4, so 1 runs and 2 wait."""


def _url(server: RedisServer, database: int) -> str:
    return f"redis://:{server.password}@127.0.0.1:{server.port}/{database}"


def _flush(server: RedisServer, database: int) -> redis.Redis:
    admin = redis.Redis(port=server.port, password=server.password, db=database)
    admin.flushdb()
    return admin


class Workers:
    """Real Celery workers of ours, each in its own process group, stopped by PID."""

    def __init__(self, server: RedisServer, database: int, directory: Path) -> None:
        self.url = _url(server, database)
        self.directory = directory
        self.started = directory / "started.log"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, pod: str, *queues: str, pool: str = "prefork", work: float = 60) -> None:
        env = os.environ | redis_worker_env(
            self.url, self.url, started_log=self.started, work_seconds=work
        ) | {"POD_NAME": pod}
        with (self.directory / f"{pod}.log").open("wb") as log:
            self.processes[pod] = subprocess.Popen(
                redis_worker_command(*queues, pool=pool)(pod), env=env, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True,
            )

    def stop(self, pod: str) -> None:
        """A warm shutdown (SIGTERM), as Kubernetes asks; the pod is idle, so it is quick."""
        process = self.processes.pop(pod)
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)

    def log(self, pod: str) -> str:
        return (self.directory / f"{pod}.log").read_text(errors="replace")[-2000:]

    def kill_all(self) -> None:
        for process in self.processes.values():
            os.killpg(process.pid, signal.SIGKILL)  # ours, with prefork's children
            process.wait(timeout=10)
        self.processes.clear()


@contextmanager
def workers(server: RedisServer, database: int, directory: Path) -> Iterator[Workers]:
    started = Workers(server, database, directory)
    try:
        yield started
    finally:
        started.kill_all()


@pytest.fixture
async def source(redis_server: RedisServer) -> AsyncIterator[RedisSource]:
    """A source for BUSY_DB, where the busy, idle and other-queue workers live."""
    opened = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(BUSY_DB),
    }))
    yield opened
    await opened.close()


async def _until(
    source: RedisSource, done: object, what: str, timeout: float = 60
) -> list[BrokerClient]:
    """The clients once `done(clients)` holds (workers take seconds to start)."""
    assert callable(done)
    deadline = time.monotonic() + timeout
    last: list[BrokerClient] | SourceError = []
    while time.monotonic() < deadline:
        try:
            last = list(await source.clients([""]))
        except SourceError as error:
            last = error
        if isinstance(last, list) and done(last):
            return last
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what}: last listing {last!r}")


def _named(clients: list[BrokerClient]) -> dict[str | None, BrokerClient]:
    return {client.client_name: client for client in clients}


async def test_busy_idle_other_queue_and_stopped_workers_as_the_workers_tell(
    redis_server: RedisServer, source: RedisSource, tmp_path: Path
) -> None:
    admin = _flush(redis_server, BUSY_DB)
    with workers(redis_server, BUSY_DB, tmp_path) as pool:
        pool.start("pod-busy", "primes")
        pool.start("pod-idle", "primes-idle")
        pool.start("pod-other", "reports")
        await _until(source, lambda found: {c.client_name for c in found} == {
            "pod-busy", "pod-idle", "pod-other"}, "three workers answering")

        app = make_app(pool.url, pool.url)
        for number in range(HELD):
            app.send_task(TASK_NAME, args=(number,), queue="primes")
        found = await _until(
            source, lambda found: _named(found)["pod-busy"].unacked == HELD,
            f"the busy worker holding {HELD} tasks",
        )
        busy, idle, other = (_named(found)[pod] for pod in ("pod-busy", "pod-idle", "pod-other"))
        assert pool.started.read_text().count("\n") == 1, "one runs, two wait"
        assert busy == BrokerClient(
            "", "pod-busy", None, consumers=1, unacked=HELD,
            queues=frozenset({QueueRef("", "primes")}),
        )
        assert (idle.unacked, idle.queues) == (0, frozenset({QueueRef("", "primes-idle")}))
        assert (other.unacked, other.queues) == (0, frozenset({QueueRef("", "reports")}))
        assert len(found) == 3, "every worker answered: no client of unknown name"

        # Redis alone sees only the two waiting: Celery acked the running one when it began.
        sample = (await source.sample([QueueRef("", "primes")]))[QueueRef("", "primes")]
        assert isinstance(sample, QueueSample)
        assert (sample.ready, sample.unacked) == (0, HELD - 1)

        # What the core makes of it: the pool reading primes and primes-idle has two pods;
        # the reports worker is another pool's (another QueueScaler reads reports).
        mine = {QueueRef("", "primes"), QueueRef("", "primes-idle")}
        report = match_workers(
            [Pod("pod-busy"), Pod("pod-idle")], found, mine, {QueueRef("", "reports")}
        )
        assert (report.matched, report.busy, report.unattributed, report.consuming) == (
            2, 1, 0, 2)
        assert report.held == {"pod-busy": HELD, "pod-idle": 0}

        pool.stop("pod-idle")
        found = await _until(
            source, lambda found: "pod-idle" not in _named(found), "the stopped worker gone"
        )
        assert set(_named(found)) == {"pod-busy", "pod-other"}, pool.log("pod-idle")

    # Each round removed what it added: no reply route, no reply list left behind.
    leftovers = [key for key in admin.keys("*") if b"reply.celery.pidbox" in key]
    assert all(not admin.smembers(key) for key in leftovers if b"binding" in key), leftovers
    assert not [key for key in leftovers if b"binding" not in key], leftovers
    admin.close()


async def test_a_worker_that_does_not_answer_in_time_is_a_busy_client_of_unknown_name(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A solo pool runs the task in the loop that would answer: it got the broadcast (PUBLISH
    counted it) and says nothing. It is counted as busy, on whichever pod it may be."""
    _flush(redis_server, SILENT_DB).close()
    source = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(SILENT_DB),
    }), inspect_seconds=0.5)
    try:
        with workers(redis_server, SILENT_DB, tmp_path) as pool:
            pool.start("pod-solo", "slow", pool="solo")
            await _until(source, lambda found: [c.client_name for c in found] == ["pod-solo"],
                         "the solo worker answering while idle")
            make_app(pool.url, pool.url).send_task(TASK_NAME, args=(7,), queue="slow")
            found = await _until(
                source, lambda found: [c.client_name for c in found] == [None],
                "the busy solo worker silent",
            )
            assert found == [BrokerClient("", None, None, consumers=1, unacked=1, queues=None)]
            report = match_workers([Pod("pod-solo"), Pod("pod-spare")], found,
                                   {QueueRef("", "slow")})
            assert (report.unattributed, report.placed, report.protected) == (1, True, 2)
    finally:
        await source.close()


async def test_no_worker_listening_is_an_error_not_an_idle_pool(
    redis_server: RedisServer,
) -> None:
    _flush(redis_server, EMPTY_DB).close()
    source = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(EMPTY_DB),
    }))
    try:
        with pytest.raises(SourceError) as raised:
            await source.clients([""])
    finally:
        await source.close()
    assert raised.value.kind is ErrorKind.BAD_RESPONSE
    assert "no Celery worker listens" in raised.value.message
    assert f"/{EMPTY_DB}.celery.pidbox" in raised.value.message


async def test_an_acl_user_with_the_documented_control_permissions_lists_workers(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    _flush(redis_server, ACL_DB).close()
    reads = ["+llen", "+hlen", "+hscan", "+smembers", "+select"]
    control = ["+publish", "+sadd", "+srem", "+del", "+brpop", "+rpop"]
    users = []
    with redis.Redis(port=redis_server.port, password=redis_server.password) as admin:
        for name, commands, channels in (
            ("qs-inspect", reads + control, [f"/{ACL_DB}.celery.pidbox"]),
            ("qs-sample-only", reads, []),
        ):
            password = f"pw-{name}-0123456789abcdef"
            admin.acl_setuser(name, enabled=True, passwords=[f"+{password}"], keys=["~*"],
                              channels=channels, commands=["-@all", *commands], reset=True)
            users.append((name, password))
    with workers(redis_server, ACL_DB, tmp_path) as pool:
        pool.start("pod-acl", "acl-q")
        for (user, password), allowed in zip(users, (True, False), strict=True):
            source = RedisSource(broker_from_secret({
                "redisUrl": f"redis://127.0.0.1:{redis_server.port}/{ACL_DB}",
                "username": user, "password": password,
            }))
            try:
                if allowed:
                    await _until(source, lambda found: [c.client_name for c in found]
                                 == ["pod-acl"], "the worker listed by the ACL user")
                else:
                    with pytest.raises(SourceError) as raised:
                        await source.clients([""])
                    assert raised.value.kind is ErrorKind.AUTH
                    assert CONTROL_ACL_NEEDS in raised.value.message
                    assert password not in raised.value.message
            finally:
                await source.close()


async def test_a_stopped_server_fails_the_listing_and_a_restarted_one_serves_the_next(
    tmp_path: Path,
) -> None:
    """The engine then holds the scale-down (busy workers unknown) for that tick only."""
    with RedisServer(port=SPARE_PORT) as spare:
        source = RedisSource(
            broker_from_secret({"redisUrl": spare.url, "password": spare.password}), timeout=1.0
        )
        try:
            with workers(spare, 0, tmp_path) as pool:
                pool.start("pod-r", "celery")
                await _until(source, lambda found: [c.client_name for c in found] == ["pod-r"],
                             "the worker listed")
                spare.stop()
                with pytest.raises(SourceError) as caught:
                    await source.clients([""])
                assert caught.value.kind is ErrorKind.UNREACHABLE, caught.value
                assert spare.password not in str(caught.value)
                spare.start()  # same port and password: the worker reconnects by itself
                await _until(source, lambda found: [c.client_name for c in found] == ["pod-r"],
                             "the worker listed again after the restart")
        finally:
            await source.close()


async def test_a_paused_server_is_a_timeout_and_the_next_round_is_fresh(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    _flush(redis_server, SILENT_DB).close()
    source = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(SILENT_DB),
    }), timeout=0.5)
    try:
        with workers(redis_server, SILENT_DB, tmp_path) as pool, redis.Redis(
            port=redis_server.port, password=redis_server.password
        ) as admin:
            pool.start("pod-p", "celery")
            await _until(source, lambda found: [c.client_name for c in found] == ["pod-p"],
                         "the worker listed")
            admin.execute_command("CLIENT", "PAUSE", "2000", "ALL")
            with pytest.raises(SourceError) as caught:
                await source.clients([""])
            assert caught.value.kind is ErrorKind.TIMEOUT, caught.value
            admin.execute_command("CLIENT", "UNPAUSE")
            found = await source.clients([""])
            assert [c.client_name for c in found] == ["pod-p"]
    finally:
        await source.close()


@pytest.mark.parametrize("right_ca", [pytest.param(True, id="right-ca"),
                                      pytest.param(False, id="wrong-ca")])
async def test_the_listing_goes_over_tls_and_verifies_the_server(
    redis_server: RedisServer, right_ca: bool
) -> None:
    source = RedisSource(broker_from_secret({
        "redisUrl": redis_server.tls_url, "password": redis_server.password,
        "database": str(EMPTY_DB),
        "ca.crt": redis_server.ca_cert if right_ca else redis_server.wrong_ca_cert,
    }), timeout=2.0)
    try:
        with pytest.raises(SourceError) as caught:
            await source.clients([""])
    finally:
        await source.close()
    if right_ca:  # through TLS to the broadcast, which nobody hears in this database
        assert caught.value.kind is ErrorKind.BAD_RESPONSE, caught.value
        assert "no Celery worker listens" in caught.value.message
    else:
        assert caught.value.kind is ErrorKind.TLS_FAILED, caught.value
        assert "TLS failed" in caught.value.message


@pytest.mark.parametrize("layouts", [3, 2 * CONTROL_CONNECTIONS * INSPECT_WAVES])
async def test_many_kombu_layouts_on_one_database_are_listed_in_bounded_time(
    redis_server: RedisServer, layouts: int
) -> None:
    """Review F4: one round per layout at once took more connections than the control pool
    has ("Too many connections"), so every listing of a database with three Celery apps on it
    failed and none of its pools scaled down. Rounds now wait for a connection, and the
    listing ends within its waves: a layout whose round could not start is blind alone."""
    with _flush(redis_server, LAYOUTS_DB) as admin:
        admin.xadd("jobs", {"n": 1})
        admin.xgroup_create("jobs", "workers", id="0")
        admin.xreadgroup("workers", "pod-a", {"jobs": ">"}, count=1)
    scopes = [Layout(key_prefix=f"app{i}:").scope for i in range(layouts)]
    scopes.append(StreamGroup("jobs", "workers").scope)
    inspect_seconds = 0.2
    source = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(LAYOUTS_DB),
    }), timeout=2, inspect_seconds=inspect_seconds)
    try:
        clients = await source.clients(scopes)
    finally:
        await source.close()
    assert any(c.client_name == "pod-a" and c.unacked == 1 for c in clients), clients
    # Each layout without workers is one blind client (its pools hold their pods); how long
    # the listing takes belongs in bench/, not here.
    assert sum(1 for c in clients if c.client_name is None) == layouts, clients
