"""parse_queue_listing: the management API's answer, trusted for nothing.

Tables for what RabbitMQ really sends (and what it sends for a queue without statistics),
then fuzzing: whatever the bytes, the answer is a result or SourceError(BAD_RESPONSE).
"""

from __future__ import annotations

import json
import re
import urllib.parse
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.sources.rabbitmq.listing import (
    FILTER_MAX_NAMES,
    MAX_RATE,
    QUEUE_COLUMNS,
    mark_missing_vhosts,
    name_filter_query,
    parse_queue_listing,
    parse_vhost_names,
)

pytestmark = pytest.mark.unit

VHOST = "jobs"
THUMBS = QueueRef(VHOST, "thumbnails")
MAILS = QueueRef(VHOST, "mails")
AT = 1_700_000_000.5

FULL: dict[str, Any] = {
    "name": "thumbnails",
    "vhost": VHOST,
    "messages_ready": 7,
    "messages_unacknowledged": 3,
    "consumers": 2,
    "consumer_capacity": 0.5,
    "consumer_utilisation": 0.25,
    "message_stats": {
        "publish_details": {"rate": 4.5},
        "ack_details": {"rate": 4},
        "deliver_get_details": {"rate": 4.2},
    },
}
"""One queue as `/api/queues?columns=...` lists it on RabbitMQ 3.10 under load."""


def _entry(**changes: Any) -> dict[str, Any]:
    """FULL with fields replaced; a value of ... removes the field."""
    entry = {**FULL, **changes}
    return {key: value for key, value in entry.items() if value is not ...}


def _parse(*entries: Any, wanted: tuple[QueueRef, ...] = (THUMBS,)) -> Any:
    return parse_queue_listing(json.dumps(list(entries)).encode(), wanted, AT)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            FULL,
            QueueSample(
                7,
                3,
                2,
                AT,
                publish_rate=4.5,
                ack_rate=4.0,
                deliver_rate=4.2,
                consumer_utilisation=0.5,
            ),
            id="every-column",
        ),
        pytest.param(
            _entry(message_stats=..., consumer_capacity=0, consumer_utilisation=0),
            QueueSample(7, 3, 2, AT, consumer_utilisation=0.0),
            id="nothing-published-yet-no-rates",
        ),
        pytest.param(
            _entry(message_stats={"publish_details": {"rate": 0.0}}),
            QueueSample(7, 3, 2, AT, publish_rate=0.0, consumer_utilisation=0.5),
            id="published-never-acked-some-rates",
        ),
        pytest.param(
            _entry(consumer_capacity=...),
            QueueSample(
                7,
                3,
                2,
                AT,
                publish_rate=4.5,
                ack_rate=4.0,
                deliver_rate=4.2,
                consumer_utilisation=0.25,
            ),
            id="older-broker-utilisation-only",
        ),
        pytest.param(
            _entry(consumer_capacity=..., consumer_utilisation="", message_stats=...),
            QueueSample(7, 3, 2, AT),
            id="empty-string-utilisation-means-unknown",
        ),
        pytest.param(
            _entry(message_stats={"ack_details": {"rate": None}}),
            QueueSample(7, 3, 2, AT, consumer_utilisation=0.5),
            id="null-rate-means-unknown",
        ),
        pytest.param(
            _entry(extra={"nested": [1, 2]}, messages=10),
            QueueSample(
                7,
                3,
                2,
                AT,
                publish_rate=4.5,
                ack_rate=4.0,
                deliver_rate=4.2,
                consumer_utilisation=0.5,
            ),
            id="unknown-fields-ignored",
        ),
    ],
)
def test_a_listed_queue_becomes_a_sample(entry: dict[str, Any], expected: QueueSample) -> None:
    assert _parse(entry) == {THUMBS: expected}


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        pytest.param(_entry(messages_ready=...), "'messages_ready'", id="ready-missing"),
        pytest.param(_entry(consumers=None), "'consumers'", id="consumers-null"),
        pytest.param(_entry(messages_ready="7"), "not a count", id="count-as-string"),
        pytest.param(_entry(messages_unacknowledged=True), "not a count", id="count-as-bool"),
        pytest.param(_entry(messages_ready=-1), "not a count", id="negative-count"),
        pytest.param(_entry(messages_ready=7.0), "not a count", id="count-as-float"),
        pytest.param(_entry(consumer_capacity="full"), "not a number", id="capacity-as-string"),
        pytest.param(_entry(message_stats=[]), "'message_stats'", id="stats-as-list"),
        pytest.param(
            _entry(message_stats={"ack_details": 3}), "ack_details", id="details-as-number"
        ),
        pytest.param(
            _entry(message_stats={"publish_details": {"rate": "fast"}}),
            "not a number",
            id="rate-as-string",
        ),
    ],
)
def test_a_malformed_queue_fails_alone(entry: dict[str, Any], says: str) -> None:
    result = _parse(entry, {**FULL, "name": "mails"}, wanted=(THUMBS, MAILS))
    error = result[THUMBS]
    assert isinstance(error, SourceError)
    assert error.kind is ErrorKind.BAD_RESPONSE
    assert says in error.message
    assert "thumbnails" in error.message
    assert isinstance(result[MAILS], QueueSample)


def test_a_queue_listed_by_name_only_is_pending_not_broken() -> None:
    """A new queue is listed before its statistics exist: the engine peeks at it instead."""
    result = _parse(
        {"name": "thumbnails", "vhost": VHOST}, {**FULL, "name": "mails"}, wanted=(THUMBS, MAILS)
    )
    error = result[THUMBS]
    assert isinstance(error, SourceError)
    assert error.kind is ErrorKind.STATS_PENDING
    assert isinstance(result[MAILS], QueueSample)


KNOWN_RATES: dict[str, float] = {"publish_rate": 4.5, "ack_rate": 4.0, "deliver_rate": 4.2}


def _with_rate(details: str, rate: Any) -> dict[str, Any]:
    """FULL with one rate replaced; the other two as FULL has them."""
    stats = {**FULL["message_stats"], details: {"rate": rate}}
    return _entry(message_stats=stats)


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        pytest.param(1200, 1200, id="count"),
        pytest.param(1200.0, 1200, id="integral-float"),
        pytest.param(-1, None, id="negative"),
        pytest.param(12.5, None, id="fractional"),
        pytest.param(None, None, id="null"),
        pytest.param(..., None, id="absent"),
        pytest.param(10**400, None, id="beyond-any-float"),
    ],
)
def test_cumulative_counters_are_read_or_unknown(count: Any, expected: int | None) -> None:
    counted = {**FULL["message_stats"], "publish": count, "ack": 1190}
    stats = {key: value for key, value in counted.items() if value is not ...}
    sample = _parse(_entry(message_stats=stats))[THUMBS]
    assert isinstance(sample, QueueSample)
    assert (sample.published_total, sample.acked_total) == (expected, 1190)


def test_a_counter_of_the_wrong_type_fails_the_queue() -> None:
    stats = {**FULL["message_stats"], "publish": 1200, "ack": "many"}
    assert isinstance(_parse(_entry(message_stats=stats))[THUMBS], SourceError)


@pytest.mark.parametrize(
    ("details", "field", "rate"),
    [
        pytest.param("ack_details", "ack_rate", -3.5, id="negative-after-a-counter-reset"),
        pytest.param("publish_details", "publish_rate", -1e-9, id="negative-by-a-hair"),
        pytest.param("deliver_get_details", "deliver_rate", 1e12, id="absurd-1e12"),
        pytest.param("ack_details", "ack_rate", MAX_RATE * 1.001, id="just-above-the-bound"),
        pytest.param("publish_details", "publish_rate", 10**400, id="integer-beyond-float"),
        pytest.param("ack_details", "ack_rate", float("nan"), id="nan"),
        pytest.param("ack_details", "ack_rate", float("inf"), id="infinity"),
        pytest.param("publish_details", "publish_rate", float("-inf"), id="minus-infinity"),
    ],
)
def test_an_impossible_rate_is_unknown_and_the_counts_stay(
    details: str, field: str, rate: Any
) -> None:
    """A glitched rate must not take away the counts, which the decision needs most."""
    # Python's json writes and reads NaN and Infinity, as RabbitMQ's own Erlang JSON may not.
    sample = _parse(_with_rate(details, rate))[THUMBS]
    rates: dict[str, float | None] = {**KNOWN_RATES, field: None}
    assert sample == QueueSample(
        7,
        3,
        2,
        AT,
        publish_rate=rates["publish_rate"],
        ack_rate=rates["ack_rate"],
        deliver_rate=rates["deliver_rate"],
        consumer_utilisation=0.5,
    )


@pytest.mark.parametrize(
    "rate",
    [
        pytest.param(0, id="zero"),
        pytest.param(-0.0, id="minus-zero"),
        pytest.param(MAX_RATE, id="at-the-bound"),
        pytest.param(123_456.75, id="a-fast-queue"),
    ],
)
def test_a_possible_rate_is_kept(rate: float) -> None:
    sample = _parse(_with_rate("ack_details", rate))[THUMBS]
    assert isinstance(sample, QueueSample)
    assert sample.ack_rate == rate


@pytest.mark.parametrize(
    ("capacity", "utilisation", "expected"),
    [
        pytest.param(1.5, ..., None, id="capacity-above-one"),
        pytest.param(-0.2, ..., None, id="capacity-negative"),
        pytest.param(float("nan"), ..., None, id="capacity-nan"),
        pytest.param(1.0000001, ..., 1.0, id="rounding-above-one-clamped"),
        pytest.param(-1e-9, ..., 0.0, id="rounding-below-zero-clamped"),
        pytest.param(1.0, ..., 1.0, id="capacity-exactly-one"),
        pytest.param(7, 0.25, 0.25, id="absurd-capacity-falls-back-to-utilisation"),
        pytest.param(..., 2.0, None, id="utilisation-above-one"),
    ],
)
def test_consumer_capacity_outside_zero_to_one_is_unknown(
    capacity: Any, utilisation: Any, expected: float | None
) -> None:
    sample = _parse(_entry(consumer_capacity=capacity, consumer_utilisation=utilisation))[THUMBS]
    assert isinstance(sample, QueueSample)
    assert sample.consumer_utilisation == expected
    assert (sample.ready, sample.unacked, sample.consumers) == (7, 3, 2)


@pytest.mark.parametrize(
    ("listing", "wanted", "found"),
    [
        pytest.param([FULL], (THUMBS, MAILS), {THUMBS}, id="missing-queue-others-sampled"),
        pytest.param([_entry(vhost="other")], (THUMBS,), set(), id="same-name-other-vhost"),
        pytest.param([], (THUMBS,), set(), id="empty-listing"),
        pytest.param(
            ["thumbnails", 3, None, [FULL], FULL],
            (THUMBS,),
            {THUMBS},
            id="non-object-entries-skipped",
        ),
        pytest.param(
            [_entry(name=None), _entry(vhost=5)],
            (THUMBS,),
            set(),
            id="entries-without-string-names-skipped",
        ),
        pytest.param([FULL], (), set(), id="nothing-wanted"),
    ],
)
def test_queues_not_listed_are_not_found(
    listing: list[Any], wanted: tuple[QueueRef, ...], found: set[QueueRef]
) -> None:
    result = _parse(*listing, wanted=wanted)
    assert set(result) == set(wanted)
    for ref in wanted:
        if ref in found:
            assert isinstance(result[ref], QueueSample)
        else:
            error = result[ref]
            assert isinstance(error, SourceError)
            assert error.kind is ErrorKind.QUEUE_NOT_FOUND
            assert repr(ref.name) in error.message


def test_one_page_of_a_filtered_listing_is_read_like_the_listing() -> None:
    page = {"filtered_count": 1, "item_count": 1, "items": [FULL], "page": 1, "page_count": 1}
    body = json.dumps(page).encode()
    assert parse_queue_listing(body, [THUMBS], AT) == _parse(FULL)


@pytest.mark.parametrize(
    ("names", "matching", "not_matching"),
    [
        pytest.param(
            ["thumbnails"],
            ["thumbnails"],
            ["thumbnails2", "xthumbnails", ""],
            id="anchored-both-ends",
        ),
        pytest.param(
            ["celery.pidbox", "a+b", "(x)|[y]"],
            ["celery.pidbox", "a+b", "(x)|[y]"],
            ["celeryXpidbox", "aab", "x", "(x)"],
            id="regex-characters-escaped",
        ),
        pytest.param(["jobs", "jobs"], ["jobs"], ["jobsjobs"], id="duplicates-once"),
        pytest.param(
            ["é-queue", "with space"],
            ["é-queue", "with space"],
            ["e-queue"],
            id="unicode-and-spaces",
        ),
    ],
)
def test_name_filter_matches_exactly_the_names(
    names: list[str], matching: list[str], not_matching: list[str]
) -> None:
    query = name_filter_query(names)
    assert query is not None
    params = dict(urllib.parse.parse_qsl(query))
    assert params["use_regex"] == "true" and params["page"] == "1"
    assert int(params["page_size"]) >= FILTER_MAX_NAMES
    for name in matching:
        assert re.search(params["name"], name), name
    for name in not_matching:
        assert not re.search(params["name"], name), name


@pytest.mark.parametrize(
    "names",
    [
        pytest.param([], id="no-names"),
        pytest.param([f"q{n}" for n in range(FILTER_MAX_NAMES + 1)], id="too-many-names"),
        pytest.param([f"{n:02d}" + "x" * 200 for n in range(15)], id="too-long-for-a-url"),
    ],
)
def test_name_filter_gives_way_to_the_whole_listing(names: list[str]) -> None:
    assert name_filter_query(names) is None


def test_first_of_duplicate_entries_wins() -> None:
    result = _parse(FULL, _entry(messages_ready=99))
    assert result[THUMBS] == _parse(FULL)[THUMBS]


@pytest.mark.parametrize(
    ("body", "says"),
    [
        pytest.param(b"<html>502 Bad Gateway</html>", "not JSON", id="html-error-page"),
        pytest.param(b"", "not JSON", id="empty-body"),
        pytest.param(b'{"error":"Object Not Found"}', "not a list", id="json-object"),
        pytest.param(b"null", "not a list", id="json-null"),
        pytest.param(b"\xff\xfe\x00garbage", "not JSON", id="not-utf8"),
        pytest.param(b"[" * 100_000, "not JSON", id="nested-too-deep"),
    ],
)
def test_a_body_that_is_no_list_fails_the_call(body: bytes, says: str) -> None:
    with pytest.raises(SourceError) as caught:
        parse_queue_listing(body, [THUMBS], AT)
    assert caught.value.kind is ErrorKind.BAD_RESPONSE
    assert says in caught.value.message


def test_vhost_names_and_missing_vhosts() -> None:
    names = parse_vhost_names(b'[{"name": "jobs"}, {"name": 3}, "x", {"name": "/"}]')
    assert names == {"jobs", "/"}
    elsewhere = QueueRef("gone", "thumbnails")
    result = _parse(FULL, wanted=(THUMBS, MAILS, elsewhere))
    marked = mark_missing_vhosts(result, names)
    kinds = {ref: getattr(outcome, "kind", None) for ref, outcome in marked.items()}
    assert kinds == {
        THUMBS: None,
        MAILS: ErrorKind.QUEUE_NOT_FOUND,
        elsewhere: ErrorKind.VHOST_NOT_FOUND,
    }


def test_columns_name_every_field_the_parser_reads() -> None:
    assert set(QUEUE_COLUMNS) >= {
        "name",
        "vhost",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_stats.publish_details.rate",
        "message_stats.ack_details.rate",
    }


# Fuzzing: never an exception other than SourceError(BAD_RESPONSE).

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
FIELDS = (
    "messages_ready",
    "messages_unacknowledged",
    "consumers",
    "consumer_capacity",
    "consumer_utilisation",
    "message_stats",
)
ENTRIES = st.fixed_dictionaries(
    {
        "name": st.sampled_from(["thumbnails", "mails"]) | JSON_VALUES,
        "vhost": st.just(VHOST) | JSON_VALUES,
    },
    optional={
        **{field: st.integers(-2, 10**20) | JSON_VALUES for field in FIELDS},
        "message_stats": st.dictionaries(
            st.sampled_from(["publish_details", "ack_details", "deliver_get_details"]),
            st.fixed_dictionaries({}, optional={"rate": JSON_VALUES}) | JSON_VALUES,
        )
        | JSON_VALUES,
    },
)


def _check_outcome(body: bytes) -> None:
    wanted = (THUMBS, MAILS)
    try:
        result = parse_queue_listing(body, wanted, AT)
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE
        return
    assert set(result) == set(wanted)
    for outcome in result.values():
        if isinstance(outcome, SourceError):
            assert outcome.kind in (
                ErrorKind.BAD_RESPONSE,
                ErrorKind.QUEUE_NOT_FOUND,
                ErrorKind.STATS_PENDING,
            )
        else:
            assert isinstance(outcome, QueueSample)
            assert min(outcome.ready, outcome.unacked, outcome.consumers) >= 0
            for rate in (outcome.publish_rate, outcome.ack_rate, outcome.deliver_rate):
                assert rate is None or 0.0 <= rate <= MAX_RATE, rate
            utilisation = outcome.consumer_utilisation
            assert utilisation is None or 0.0 <= utilisation <= 1.0, utilisation


@given(st.binary(max_size=200))
def test_fuzz_arbitrary_bytes(body: bytes) -> None:
    _check_outcome(body)


@given(JSON_VALUES)
def test_fuzz_arbitrary_json(document: Any) -> None:
    _check_outcome(json.dumps(document).encode())


@given(st.lists(ENTRIES | JSON_VALUES, max_size=6))
def test_fuzz_listings_with_missing_and_wrong_typed_fields(listing: list[Any]) -> None:
    _check_outcome(json.dumps(listing).encode())


@given(st.lists(ENTRIES | JSON_VALUES, max_size=4), JSON_VALUES)
def test_fuzz_pages_of_filtered_listings(listing: list[Any], extra: Any) -> None:
    _check_outcome(json.dumps({"items": listing, "page_count": extra}).encode())


@given(st.lists(ENTRIES, max_size=3), st.integers(0, 400))
def test_fuzz_truncated_listings(listing: list[Any], cut: int) -> None:
    _check_outcome(json.dumps(listing).encode()[:cut])
