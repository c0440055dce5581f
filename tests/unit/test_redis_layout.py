"""kombu's Redis layout as the redis source reads it: keys, unacked entries, and whose they are.

The key names are checked against kombu's own channel (its `_q_for_pri`), so a kombu release
that moves them fails here rather than in a user's cluster.
"""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from kombu.transport.redis import Channel

from queuescaler.sources.redis.layout import (
    DEFAULT_SEPARATOR,
    Binding,
    Layout,
    attribute,
    parse_bindings,
    routing_of,
    topic_matches,
)

pytestmark = pytest.mark.unit


def kombu_keys(queue: str, steps: list[int], separator: str = DEFAULT_SEPARATOR) -> set[str]:
    """The lists kombu 5.7 reads for `queue` (its `_size`), computed by kombu's own methods."""
    channel = Channel.__new__(Channel)  # the key methods need no connection
    channel.priority_steps = steps
    channel.sep = separator
    return {channel._q_for_pri(queue, step) for step in steps}


@pytest.mark.parametrize(
    ("steps", "separator"),
    [
        pytest.param([0, 3, 6, 9], DEFAULT_SEPARATOR, id="kombu-default"),
        pytest.param(list(range(10)), ":", id="celery-docs-priority-setup"),
        pytest.param([0, 5], DEFAULT_SEPARATOR, id="two-steps"),
        pytest.param([0], DEFAULT_SEPARATOR, id="no-priorities"),
    ],
)
def test_every_list_kombu_uses_is_read(steps: list[int], separator: str) -> None:
    read = set(Layout(separator=separator).priority_keys("celery"))
    assert kombu_keys("celery", steps, separator) <= read
    assert len(read) == 10


def test_the_plain_list_comes_first_and_the_prefix_goes_on_every_key() -> None:
    keys = Layout(key_prefix="app1:", separator=":").priority_keys("celery")
    assert keys[0] == "app1:celery"
    assert keys[3] == "app1:celery:3"
    assert Layout(key_prefix="app1:").unacked_key == "app1:unacked"
    assert Layout(key_prefix="app1:").binding_key("media") == "app1:_kombu.binding.media"


@pytest.mark.parametrize(
    "layout",
    [
        pytest.param(Layout(), id="default"),
        pytest.param(Layout(key_prefix="p:"), id="prefix"),
        pytest.param(Layout(separator=":"), id="separator"),
        pytest.param(Layout(key_prefix='["odd"', separator="\x00"), id="odd-characters"),
    ],
)
def test_a_layout_travels_in_a_scope_and_back(layout: Layout) -> None:
    assert Layout.from_scope(layout.scope) == layout


def test_the_default_layout_is_the_empty_scope() -> None:
    assert Layout().scope == ""


@pytest.mark.parametrize("scope", ["/", "[1, 2]", '["a"]', '["a", ""]', "{}"])
def test_a_scope_that_is_no_layout_is_refused(scope: str) -> None:
    with pytest.raises(ValueError):
        Layout.from_scope(scope)


def kombu_entry(message: object, exchange: str | None, routing_key: str | None) -> str:
    """What kombu's QoS.append writes: `dumps([message._raw, EX, RK])` (json.dumps)."""
    return json.dumps([message, exchange, routing_key])


CELERY_MESSAGE = {
    "body": "W1sxN10sIHt9LCB7fV0=",
    "content-encoding": "utf-8",
    "content-type": "application/json",
    "headers": {"task": "tasks.is_prime", "argsrepr": '("a \\"quoted\\" ]", 17)'},
    "properties": {"priority": 3, "delivery_info": {"exchange": "celery", "routing_key": "celery"}},
}


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(kombu_entry(CELERY_MESSAGE, "celery", "celery"), ("celery", "celery"),
                     id="celery-task"),
        pytest.param(kombu_entry(CELERY_MESSAGE, "", "video"), ("", "video"),
                     id="default-exchange"),
        pytest.param(kombu_entry({}, None, "q"), ("", "q"), id="null-exchange"),
        pytest.param(kombu_entry({}, 'ex"\\', 'rk",]'), ('ex"\\', 'rk",]'), id="escapes"),
        pytest.param(kombu_entry({}, "é", "ключ"), ("é", "ключ"), id="unicode"),
        pytest.param(json.dumps([{}, "a", "b"], indent=2).encode(), ("a", "b"), id="bytes-spaced"),
        pytest.param("not json", None, id="garbage"),
        pytest.param(json.dumps({"a": 1}), None, id="an-object"),
        pytest.param(json.dumps([{}, "a"]), None, id="two-items"),
        pytest.param(json.dumps([{}, 1, "b"]), None, id="exchange-not-a-string"),
        pytest.param(b"\xff\xfe[", None, id="not-utf8"),
    ],
)
def test_routing_of_an_unacked_entry(entry: str | bytes, expected: tuple[str, str] | None) -> None:
    assert routing_of(entry) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=10,
)


@given(
    message=st.dictionaries(st.text(), json_values, max_size=4),
    exchange=st.none() | st.text(),
    routing_key=st.none() | st.text(),
    ascii_only=st.booleans(),
)
def test_reading_the_tail_agrees_with_a_full_parse(
    message: dict[str, object], exchange: str | None, routing_key: str | None, ascii_only: bool
) -> None:
    entry = json.dumps([message, exchange, routing_key], ensure_ascii=ascii_only)
    assert routing_of(entry) == (exchange or "", routing_key or "")


@given(st.text())
def test_any_text_reads_as_a_route_or_none_without_raising(text: str) -> None:
    route = routing_of(text)
    assert route is None or all(isinstance(part, str) for part in route)


@pytest.mark.parametrize(
    ("binding_key", "routing_key", "matches"),
    [
        pytest.param("media.video.*", "media.video.hd", True, id="star-one-word"),
        pytest.param("media.video.*", "media.video", False, id="star-needs-a-word"),
        pytest.param("media.video.*", "media.video.hd.x", False, id="star-only-one-word"),
        pytest.param("media.#", "media", True, id="hash-zero-words"),
        pytest.param("media.#", "media.a.b.c", True, id="hash-many-words"),
        pytest.param("#", "anything.at.all", True, id="hash-alone"),
        pytest.param("#.hd", "media.video.hd", True, id="hash-first"),
        pytest.param("a.#.z", "a.z", True, id="hash-between-none"),
        pytest.param("a.#.z", "a.b.c.z", True, id="hash-between-many"),
        pytest.param("a.#.z", "a.b.c", False, id="hash-between-wrong-end"),
        pytest.param("exact", "exact", True, id="no-wildcards"),
        pytest.param("exact", "other", False, id="no-wildcards-other"),
    ],
)
def test_topic_matching(binding_key: str, routing_key: str, matches: bool) -> None:
    assert topic_matches(binding_key, routing_key) is matches


def test_bindings_are_read_as_kombu_writes_them() -> None:
    sep = DEFAULT_SEPARATOR
    members = [
        f"celery{sep}{sep}celery".encode(),
        f"media.video.*{sep}^media\\.video\\..*?[^\\.]$".encode() + f"{sep}video".encode(),
        b"broken",
        f"rk{sep}{sep}".encode(),  # no queue
    ]
    assert parse_bindings(members, sep) == (
        Binding(routing_key="celery", topic=False, queue="celery"),
        Binding(routing_key="media.video.*", topic=True, queue="video"),
    )


def test_unacked_entries_go_to_the_queues_kombu_would_restore_them_to() -> None:
    bindings = {
        "celery": (Binding("celery", False, "celery"),),
        "media": (
            Binding("media.video.*", True, "video"),
            Binding("media.#", True, "archive"),
            Binding("media.audio", False, "audio"),
        ),
        "empty": (),
    }
    routes = [
        ("celery", "celery"), ("celery", "celery"),
        ("", "direct-queue"),
        ("media", "media.video.hd"),  # video and archive both get it
        ("media", "media.audio"),  # archive and audio
        # Routed nowhere now (the bindings changed since it was published): kombu restores
        # it to the exchange's undeliver path, not a queue that can be told; a worker still
        # holds it, so it is unresolved (review F2), not dropped from a complete sample.
        ("empty", "x"),
        ("celery", "other"),  # no binding matches: the same
        ("", ""),  # the default exchange with no routing key: no queue's either
        ("unknown", "x"),  # bindings not read: unresolved
        None,  # unreadable
    ]
    placed = attribute(routes, bindings)
    assert placed.per_queue == {
        "celery": 2, "direct-queue": 1, "video": 1, "archive": 2, "audio": 1,
    }
    assert placed.unresolved == 5


def test_a_message_of_an_exchange_with_no_bindings_left_is_unresolved() -> None:
    placed = attribute([("media", "media.video.hd")], {"media": ()})
    assert (dict(placed.per_queue), placed.unresolved) == ({}, 1)


def test_a_message_whose_routing_key_no_binding_matches_any_more_is_unresolved() -> None:
    # The worker's queue `video` was re-bound from media.video.* to video.*; the two messages
    # it holds were routed by the old binding.
    bindings = {"media": (Binding(routing_key="video.*", topic=True, queue="video"),)}
    placed = attribute([("media", "media.video.hd")] * 2, bindings)
    assert (dict(placed.per_queue), placed.unresolved) == ({}, 2)


topic_words = st.sampled_from(["a", "b", "c", "", "*", "#"])


@given(
    st.lists(st.tuples(st.lists(topic_words, min_size=1, max_size=4), st.booleans(),
                       st.sampled_from(["q1", "q2", "q3"])), max_size=8),
    st.lists(st.lists(st.sampled_from(["a", "b", "c", "", "*", "#"]), min_size=1, max_size=5),
             min_size=1, max_size=6),
)
def test_indexed_bindings_route_as_each_binding_would_alone(
    raw_bindings: list[tuple[list[str], bool, str]], raw_routes: list[list[str]]
) -> None:
    """The direct index and the topic trie place a message exactly where trying every
    binding in turn (`topic_matches`, or equal routing keys) does."""
    known = tuple(Binding(".".join(words), topic, queue) for words, topic, queue in raw_bindings)
    for words in raw_routes:
        routing_key = ".".join(words)
        expected = {
            b.queue for b in known
            if (topic_matches(b.routing_key, routing_key) if b.topic
                else b.routing_key == routing_key)
        }
        placed = attribute([("x", routing_key)], {"x": known})
        assert set(placed.per_queue) == expected
        assert placed.unresolved == (0 if expected else 1)


def test_topic_routing_is_near_routes_plus_bindings_and_bounded_per_tick() -> None:
    """Review F6: 2,000 distinct routing keys x 500 topic bindings were a million matches on
    the event loop (about 1.8 s of CPU per tick). Indexed, they are placed in about a second's
    hundredth; beyond the budget the rest is unresolved (the sample incomplete), never
    seconds of CPU."""
    bindings = {"tenants": tuple(
        Binding(f"tenant.{i}.*", topic=True, queue=f"jobs-{i % 20}") for i in range(500))}
    routes = [("tenants", f"tenant.{i}.job") for i in range(2_000)]
    placed = attribute(routes, bindings)
    assert (sum(placed.per_queue.values()), placed.unresolved) == (500, 1_500)
    assert placed.over_budget == 0
    budgeted = attribute(routes, bindings, topic_budget=1_000)
    # Four steps a route (root, tenant, its id, *): 250 routes, the other 1,750 unresolved.
    assert budgeted.over_budget == 2_000 - 250
    assert budgeted.unresolved == 2_000 - sum(budgeted.per_queue.values())
    assert sum(budgeted.per_queue.values()) <= 250


def test_no_entries_place_nothing() -> None:
    placed = attribute([], {})
    assert (dict(placed.per_queue), placed.unresolved) == ({}, 0)
