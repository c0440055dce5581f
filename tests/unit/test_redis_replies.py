"""The redis source's reading of the replies its pipeline gets: what an error in place of a
reply means, when a sample is complete, and what its note says. Pure (no server): the
replies are the values redis-py hands back with raise_on_error=False."""

from __future__ import annotations

import pytest
import redis.exceptions

from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.redis.layout import Layout
from queuescaler.sources.redis.secret import RedisBroker
from queuescaler.sources.redis.source import ACL_NEEDS, RedisSource, _Plan, _readies, failure
from queuescaler.sources.redis.streams import StreamGroup, stream_sample

pytestmark = pytest.mark.unit

WHERE = "Redis at redis://redis:6379/0"
ENTRY = b'[{"body": "x"}, "", "jobs"]'


@pytest.mark.parametrize(
    ("error", "kind", "says"),
    [
        pytest.param(redis.exceptions.ResponseError(
            "BUSY Redis is busy running a script. You can only call SCRIPT KILL or SHUTDOWN "
            "NOSAVE."), ErrorKind.UNREACHABLE, "cannot answer now", id="busy"),
        pytest.param(redis.exceptions.ResponseError("MOVED 3999 10.0.0.7:6379"),
                     ErrorKind.BAD_CONFIG, "Redis Cluster", id="moved"),
        pytest.param(redis.exceptions.MovedError("3999 10.0.0.7:6379"),
                     ErrorKind.BAD_CONFIG, "Redis Cluster", id="moved-as-redis-py-parses-it"),
        pytest.param(redis.exceptions.ResponseError(
            "MASTERDOWN Link with MASTER is down and replica-serve-stale-data is set to 'no'."),
            ErrorKind.UNREACHABLE, "cannot answer now", id="masterdown"),
        pytest.param(redis.exceptions.ResponseError("ERR something else"),
                     ErrorKind.BAD_RESPONSE, "answered an error", id="other"),
        pytest.param(redis.exceptions.NoPermissionError(
            "User qs has no permissions to run the 'llen' command"),
            ErrorKind.AUTH, ACL_NEEDS, id="acl"),
    ],
)
def test_only_wrongtype_is_called_a_wrong_layout(
    error: Exception, kind: ErrorKind, says: str
) -> None:
    """Review F9: BUSY, MOVED and MASTERDOWN were told to the user as "not kombu's Redis
    layout"; they are the server's state or topology."""
    plan = _Plan(Layout(), [QueueRef("", "celery")])
    got = _readies(plan, [error] * 10, WHERE)[QueueRef("", "celery")]
    assert isinstance(got, SourceError)
    assert (got.kind, "not kombu's Redis layout" in got.message) == (kind, False)
    assert says in got.message


def test_a_whole_pipeline_refused_by_the_servers_state_is_named_so() -> None:
    """BUSY or MASTERDOWN to the connection's SELECT fails the whole tick: unreachable for
    now, not a bad response."""
    for text in ("BUSY Redis is busy running a script.", "MASTERDOWN Link with MASTER is down"):
        got = failure(redis.exceptions.ResponseError(text), WHERE)
        assert got.kind is ErrorKind.UNREACHABLE
        assert got.message == f"{WHERE} cannot answer now: {text}"


def test_wrongtype_is_the_wrong_layout() -> None:
    plan = _Plan(Layout(), [QueueRef("", "celery")])
    error = redis.exceptions.ResponseError(
        "WRONGTYPE Operation against a key holding the wrong kind of value")
    got = _readies(plan, [0, error] + [0] * 8, WHERE)[QueueRef("", "celery")]
    assert isinstance(got, SourceError) and got.kind is ErrorKind.BAD_RESPONSE
    assert "not kombu's Redis layout" in got.message


def _unacked(replies: list[object]) -> tuple[object, bool, str | None]:
    source = RedisSource(RedisBroker("redis"))
    plan = _Plan(Layout(), [QueueRef("", "jobs")], ["jobs"])
    return source._unacked(plan, list(replies), WHERE)


def test_an_open_hscan_cursor_leaves_the_sample_incomplete_whatever_hlen_said() -> None:
    """Review F5: HLEN and HSCAN are two commands; a page as long as the earlier HLEN with
    its cursor still open may have missed entries added in between."""
    entries = {f"t{i}".encode(): ENTRY for i in range(3)}
    per_queue, complete, note = _unacked([3, (17, entries), set()])
    assert (per_queue, complete) == ({"jobs": 3}, False)
    assert note is not None and "not read in one scan page" in note
    assert _unacked([3, (0, entries), set()]) == ({"jobs": 3}, True, None)


@pytest.mark.parametrize(
    ("replies", "says"),
    [
        pytest.param(
            [3, redis.exceptions.NoPermissionError(
                "User qs has no permissions to run the 'hscan' command"), set()],
            ["'hscan'", "refused", ACL_NEEDS], id="hscan-refused"),
        pytest.param(
            [redis.exceptions.NoPermissionError(
                "User qs has no permissions to run the 'hlen' command"), (0, {}), set()],
            ["'hlen'", ACL_NEEDS], id="hlen-refused"),
        pytest.param(
            [redis.exceptions.ResponseError(
                "WRONGTYPE Operation against a key holding the wrong kind of value")] * 2
            + [set()],
            ["the unacked key 'unacked' is not kombu's hash"], id="unacked-not-a-hash"),
        pytest.param(
            [redis.exceptions.ResponseError("BUSY Redis is busy running a script.")] * 2
            + [set()],
            ["cannot answer now"], id="busy"),
        pytest.param(
            [1, (0, {b"t1": b'[{"body": "x"}, "jobs", "jobs"]'}),
             redis.exceptions.NoPermissionError(
                 "User qs has no permissions to run the 'smembers' command")],
            ["bindings of exchange 'jobs'", "'smembers'"], id="bindings-refused"),
    ],
)
def test_a_held_count_out_of_reach_is_incomplete_and_says_why(
    replies: list[object], says: list[str]
) -> None:
    """Review F3: a refused HSCAN or HLEN, or an `unacked` of another type, left every sample
    incomplete for ever and nothing said why."""
    _, complete, note = _unacked(replies)
    assert not complete
    assert note is not None
    for text in says:
        assert text in note


def test_refused_bindings_are_told_only_when_a_held_message_needed_them() -> None:
    refused = redis.exceptions.NoPermissionError(
        "User qs has no permissions to run the 'smembers' command")
    default_exchange = (0, {b"t1": ENTRY})  # exchange "": the routing key names the queue
    assert _unacked([1, default_exchange, refused]) == ({"jobs": 1}, True, None)


def test_a_stream_group_whose_lag_redis_cannot_tell_is_an_upper_bound() -> None:
    """Review F5: a null lag (an XDEL in the group's unread range) failed the queue; the
    stream's length bounds the backlog from above, so the sample may still grow the pool."""
    where = StreamGroup("jobs", "workers")
    groups = [{"name": "workers", "lag": None, "pending": 2, "consumers": 3,
               "entries-read": 10}]
    got = stream_sample(where, groups, {"length": 40, "entries-added": 50}, 0.0, full=True)
    assert isinstance(got, QueueSample)
    assert (got.ready, got.unacked, got.complete) == (40, 2, False)
    assert got.note is not None and "lag" in got.note
