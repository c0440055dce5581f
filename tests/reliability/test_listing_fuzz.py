"""The management API parser fed what a broken, old or hostile broker might send.

Beyond tests/unit/test_rabbitmq_parser.py: realistic listings with one field broken at a
time (every field, every wrong type), JSON that Python reads but JSON forbids (NaN,
Infinity), nesting deep enough to exhaust the recursion limit, numbers too long to convert,
bytes that are not UTF-8, and queue names that carry a registered secret. The parser must
answer every wanted queue with a sample or a SourceError of a known kind, raise nothing but
SourceError(BAD_RESPONSE), and never put a secret in a message. A sample's rates are None or
in [0, MAX_RATE], its utilisation None or in [0, 1]; an impossible number there never costs
the queue its counts.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuescaler.core.redact import register_secret
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.rabbitmq.listing import (
    MAX_RATE,
    QUEUE_COLUMNS,
    name_filter_query,
    parse_queue_listing,
    parse_vhost_names,
)

pytestmark = pytest.mark.unit

SECRET = f"S3cr3t-{uuid.uuid4()}"
register_secret(SECRET)
VHOST = "jobs"
WANTED = (QueueRef(VHOST, "a"), QueueRef(VHOST, f"q-{SECRET}"), QueueRef("/", "a"))


def good_entry(name: str, vhost: str = VHOST) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "messages_ready": 3,
        "messages_unacknowledged": 1,
        "consumers": 2,
        "consumer_capacity": 0.5,
        "message_stats": {
            "publish_details": {"rate": 1.5},
            "ack_details": {"rate": 1.0},
            "deliver_get_details": {"rate": 1.0},
        },
    }


WEIRD = st.one_of(
    st.none(),
    st.booleans(),
    st.text(max_size=5),
    st.sampled_from(["", "5", "NaN", "1e3"]),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
FIELD_PATHS = [tuple(column.split(".")) for column in QUEUE_COLUMNS]


def check(body: bytes) -> None:
    try:
        result = parse_queue_listing(body, WANTED, 1.0)
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE
        assert SECRET not in error.message
        return
    assert set(result) == set(WANTED)
    for outcome in result.values():
        if isinstance(outcome, SourceError):
            assert outcome.kind in (
                ErrorKind.BAD_RESPONSE,
                ErrorKind.QUEUE_NOT_FOUND,
                ErrorKind.STATS_PENDING,
            )
            assert SECRET not in outcome.message, outcome.message
        else:
            assert isinstance(outcome, QueueSample)
            assert min(outcome.ready, outcome.unacked, outcome.consumers) >= 0
            for rate in (outcome.publish_rate, outcome.ack_rate, outcome.deliver_rate):
                assert rate is None or 0.0 <= rate <= MAX_RATE, rate  # also refuses NaN
            utilisation = outcome.consumer_utilisation
            assert utilisation is None or 0.0 <= utilisation <= 1.0, utilisation


def set_path(entry: dict[str, Any], path: tuple[str, ...], value: Any, delete: bool) -> None:
    node: Any = entry
    for key in path[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    if delete:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value


@settings(max_examples=300)
@given(
    st.lists(st.tuples(st.sampled_from(FIELD_PATHS), WEIRD, st.booleans()), max_size=3),
    st.sampled_from([e.name for e in WANTED]),
)
def test_one_broken_field_at_a_time_in_a_realistic_listing(
    breakages: list[tuple[tuple[str, ...], Any, bool]], name: str
) -> None:
    entries = [good_entry("a"), good_entry(f"q-{SECRET}"), good_entry("a", "/")]
    target = next(e for e in entries if e["name"] == name)
    for path, value, delete in breakages:
        set_path(target, path, value, delete)
    # json.dumps writes NaN and Infinity as Python's json.loads reads them back.
    check(json.dumps(entries).encode())


RATE_PATHS = [path for path in FIELD_PATHS if path[0] == "message_stats"]
UTILISATION_PATHS = [("consumer_capacity",), ("consumer_utilisation",)]
ANY_NUMBER = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(-(2**70), 2**70),
    st.sampled_from([-1.0, -1e-9, 1e12, MAX_RATE, MAX_RATE * 1.0001, 10**400, 1.0000001]),
)


@settings(max_examples=300)
@given(st.lists(st.tuples(st.sampled_from(RATE_PATHS + UTILISATION_PATHS), ANY_NUMBER), max_size=5))
def test_an_impossible_number_never_costs_the_counts(
    breakages: list[tuple[tuple[str, ...], Any]],
) -> None:
    entry = good_entry("a")
    for path, value in breakages:
        set_path(entry, path, value, delete=False)
    check(json.dumps([entry]).encode())
    outcome = parse_queue_listing(json.dumps([entry]).encode(), WANTED, 1.0)[WANTED[0]]
    assert isinstance(outcome, QueueSample), outcome
    assert (outcome.ready, outcome.unacked, outcome.consumers) == (3, 1, 2)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"[" * 100_000 + b"]" * 100_000, id="nesting-past-the-recursion-limit"),
        pytest.param(
            b'[{"name": "a", "vhost": "jobs", "messages_ready": ' + b"9" * 5000 + b"}]",
            id="integer-too-long-to-convert",
        ),
        pytest.param(b'[{"name": "a", "vhost": "jobs", "messages_ready": NaN}]', id="nan-count"),
        pytest.param(
            b'[{"name": "a", "vhost": "jobs", "messages_ready": 1, '
            b'"messages_unacknowledged": 0, "consumers": 0, '
            b'"message_stats": {"ack_details": {"rate": Infinity}}}]',
            id="infinite-rate",
        ),
        pytest.param(
            b'[{"name": "a", "vhost": "jobs", "messages_ready": 1e400}]', id="float-overflow-count"
        ),
        pytest.param(b"\xff\xfe[\x00]", id="not-utf-8"),
        pytest.param(b"\xef\xbb\xbf[]", id="utf-8-bom"),
        pytest.param(b"", id="empty-body"),
        pytest.param(b"null", id="json-null"),
        pytest.param(b'{"items": null, "page_count": 1}', id="page-without-items"),
        pytest.param(b'{"error": "Object Not Found", "reason": "Not Found"}', id="error-object"),
        pytest.param(
            b'[{"name": "a", "vhost": "jobs"}, {"name": "a", "vhost": "jobs", '
            b'"messages_ready": 1}]',
            id="stats-not-emitted-then-duplicate",
        ),
        pytest.param(
            json.dumps(
                [{"name": f"q-{SECRET}", "vhost": VHOST, "messages_ready": "many"}]
            ).encode(),
            id="secret-in-a-queue-name-of-a-broken-entry",
        ),
    ],
)
def test_hostile_bodies(body: bytes) -> None:
    check(body)


@given(st.binary(max_size=400))
def test_vhost_listing_of_any_bytes_is_a_set_of_names_or_bad_response(body: bytes) -> None:
    try:
        names = parse_vhost_names(body)
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE
        return
    assert all(isinstance(n, str) for n in names)


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=25))
def test_name_filter_of_any_names_is_bounded_or_declined(names: list[str]) -> None:
    query = name_filter_query(names)
    if query is not None:
        assert len(query) <= 3000
        assert query.startswith("page=1&")
