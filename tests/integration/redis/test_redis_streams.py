"""Redis streams read by a consumer group, on the real redis-server (7.0, Debian's): the group's
lag is the backlog, its pending entries are in flight (per consumer: the busy ones), and the
stream's entries-added and the group's entries-read are the counters rates come from.

The spec tests at the end are pure (marked unit).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator

import pytest
import redis

from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.spec import SpecError
from queuescaler.core.throughput import flow_since, remember
from queuescaler.core.workers import Pod, match_workers
from queuescaler.sources.redis.secret import broker_from_secret
from queuescaler.sources.redis.source import RedisSource
from queuescaler.sources.redis.spec import RedisSourceSpec
from queuescaler.sources.redis.streams import StreamGroup
from queuescaler.sources.registry import parse_spec
from queuescaler_testkit.redis_server import RedisServer

DATABASE = 24
"""Apart from the other redis tests' databases."""
STREAM, GROUP = "jobs", "workers"
REF = StreamGroup(STREAM, GROUP).ref


@pytest.fixture
def admin(redis_server: RedisServer) -> Iterator[redis.Redis]:
    with redis.Redis(port=redis_server.port, password=redis_server.password,
                     db=DATABASE) as client:
        client.flushdb()
        client.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
        yield client


@pytest.fixture
async def source(redis_server: RedisServer) -> AsyncIterator[RedisSource]:
    opened = RedisSource(broker_from_secret({
        "redisUrl": redis_server.url, "password": redis_server.password,
        "database": str(DATABASE),
    }))
    yield opened
    await opened.close()


def work(admin: redis.Redis, consumer: str, take: int, ack: int) -> None:
    """`consumer` reads `take` new entries and acknowledges the first `ack` of them."""
    read = admin.xreadgroup(GROUP, consumer, {STREAM: ">"}, count=take)
    ids = [entry_id for _, entries in read for entry_id, _ in entries]
    assert len(ids) == take
    if ack:
        admin.xack(STREAM, GROUP, *ids[:ack])


async def _sample(source: RedisSource, ref: QueueRef = REF) -> QueueSample:
    got = (await source.sample([ref]))[ref]
    assert isinstance(got, QueueSample), got
    return got


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_a_groups_lag_pending_and_counters_are_its_sample(
    admin: redis.Redis, source: RedisSource
) -> None:
    for n in range(10):
        admin.xadd(STREAM, {"n": n})
    work(admin, "pod-a", take=3, ack=1)
    first = await _sample(source)
    assert (first.ready, first.unacked, first.consumers, first.complete) == (7, 2, 1, True)
    assert (first.published_total, first.acked_total) == (10, 1)
    assert (first.publish_rate, first.ack_rate) == (None, None)

    for n in range(5):
        admin.xadd(STREAM, {"n": n})
    work(admin, "pod-b", take=4, ack=4)
    second = await _sample(source)
    assert (second.ready, second.unacked, second.consumers) == (8, 2, 2)
    assert (second.published_total, second.acked_total) == (15, 5)

    # The core differences the counters into rates, as it does RabbitMQ's (polled each minute).
    later = dataclasses.replace(second, taken_at=first.taken_at + 60)
    flow = flow_since(remember((), first, 2), later, poll_seconds=60)
    assert flow.publish == pytest.approx(5 / 60) and flow.ack == pytest.approx(4 / 60)

    peeked = (await source.peek([REF]))[REF]
    assert isinstance(peeked, QueueSample) and not peeked.complete, "a peek may not shrink"
    assert (peeked.ready, peeked.unacked) == (8, 2)


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_a_group_whose_lag_redis_cannot_tell_is_bounded_by_the_streams_length(
    admin: redis.Redis, source: RedisSource
) -> None:
    """Review F5: an XDEL in the group's unread range makes XINFO GROUPS' lag null; the queue
    failed (then its fallback). The stream's length bounds the backlog from above: an
    incomplete sample that may grow the pool, never shrink it, and says why."""
    ids = [admin.xadd(STREAM, {"n": n}) for n in range(10)]
    work(admin, "pod-a", take=2, ack=0)
    admin.xdel(STREAM, ids[5])
    got = await _sample(source)
    assert (got.ready, got.unacked, got.complete) == (9, 2, False)
    assert got.note is not None and f"group {GROUP!r}'s lag" in got.note


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_streams_and_celery_queues_share_the_one_pipeline(
    admin: redis.Redis, source: RedisSource
) -> None:
    admin.xadd(STREAM, {"n": 1})
    admin.lpush("celery", b"{}")
    result = await source.sample([REF, QueueRef("", "celery")])
    stream, celery = result[REF], result[QueueRef("", "celery")]
    assert isinstance(stream, QueueSample) and isinstance(celery, QueueSample)
    assert (stream.ready, celery.ready) == (1, 1)


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_a_missing_stream_or_group_fails_alone(
    admin: redis.Redis, source: RedisSource
) -> None:
    admin.rpush("a-list", b"x")
    refs = {
        "missing-stream": StreamGroup("nope", GROUP).ref,
        "missing-group": StreamGroup(STREAM, "nobody").ref,
        "not-a-stream": StreamGroup("a-list", GROUP).ref,
    }
    result = await source.sample([REF, *refs.values()])
    assert isinstance(result[REF], QueueSample)
    kinds = {name: getattr(result[ref], "kind", None) for name, ref in refs.items()}
    assert kinds == {"missing-stream": ErrorKind.QUEUE_NOT_FOUND,
                     "missing-group": ErrorKind.QUEUE_NOT_FOUND,
                     "not-a-stream": ErrorKind.BAD_RESPONSE}


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_busy_consumers_are_the_ones_with_pending_entries(
    admin: redis.Redis, source: RedisSource
) -> None:
    for n in range(6):
        admin.xadd(STREAM, {"n": n})
    work(admin, "worker-0", take=3, ack=1)
    work(admin, "worker-1", take=2, ack=2)
    found = await source.clients([REF.scope])
    queues = frozenset({REF})
    assert sorted(found, key=lambda c: str(c.client_name)) == [
        BrokerClient(REF.scope, "worker-0", None, consumers=1, unacked=2, queues=queues),
        BrokerClient(REF.scope, "worker-1", None, consumers=1, unacked=0, queues=queues),
    ]
    report = match_workers([Pod("worker-0"), Pod("worker-1"), Pod("worker-2")], found, {REF})
    assert (report.matched, report.busy, report.held) == (2, 1, {"worker-0": 2, "worker-1": 0})

    with pytest.raises(SourceError) as raised:
        await source.clients([StreamGroup(STREAM, "nobody").scope])
    assert raised.value.kind is ErrorKind.QUEUE_NOT_FOUND


def _spec(block: dict[str, object]) -> object:
    return parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
        "maxReplicas": 3,
        "source": {"redis": {"connectionSecretRef": {"name": "redis"}, **block}},
    }).source


@pytest.mark.unit
def test_a_stream_block_names_its_group_in_the_queues_scope() -> None:
    source = _spec({"stream": STREAM, "group": GROUP, "includeUnacked": False})
    assert isinstance(source, RedisSourceSpec)
    assert source.queues == (REF,) and not source.include_in_flight
    assert StreamGroup.from_scope(REF.scope) == StreamGroup(STREAM, GROUP)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("block", "where"),
    [
        pytest.param({"stream": STREAM}, "group", id="stream-without-group"),
        pytest.param({"queue": "celery", "group": GROUP}, "group", id="group-without-stream"),
        pytest.param({"queue": "celery", "stream": STREAM, "group": GROUP}, "queue",
                     id="queue-and-stream"),
        pytest.param({"stream": STREAM, "group": GROUP, "keyPrefix": "p:"}, "keyPrefix",
                     id="kombu-option-on-a-stream"),
    ],
)
def test_a_stream_block_is_refused_where_it_is_wrong(block: dict[str, object], where: str
                                                     ) -> None:
    with pytest.raises(SpecError) as raised:
        _spec(block)
    assert raised.value.field_path == f"spec.source.redis.{where}"


@pytest.mark.integration
@pytest.mark.asyncio(loop_scope="session")
async def test_a_scope_that_cannot_be_told_holds_its_own_pools_only(
    admin: redis.Redis, source: RedisSource
) -> None:
    """A stream pool and a Celery pool on one database, and no Celery worker listening: the
    Celery scope is one busy client of unknown name (its pools keep their pods), while the
    stream pool's consumers are listed and matched as ever."""
    admin.xadd(STREAM, {"n": 1})
    work(admin, "worker-0", take=1, ack=0)
    celery = QueueRef("", "celery")
    found = await source.clients([REF.scope, celery.scope])
    unknown = BrokerClient("", None, None, consumers=1, unacked=1)
    assert unknown in found and len(found) == 2
    streams = match_workers([Pod("worker-0"), Pod("worker-1")], found, {REF})
    assert (streams.busy, streams.unattributed, streams.protected) == (1, 0, 1)
    celerys = match_workers([Pod("celery-a"), Pod("celery-b")], found, {celery})
    assert (celerys.unattributed, celerys.protected) == (1, 2)
