"""Whose workers: a busy client counts only for the QueueScalers whose queues it consumes.

Two pools (two QueueScalers, two Deployments, two queues) may share one vhost. The consumer
listing says which queues each channel consumes; a client consuming none of a QueueScaler's
queues is another pool's, neither busy nor unplaced for this one. Where the listings cannot
say (the consumer listing failed, or disagrees with the channel listing taken a moment
before), the client's queues are unknown and it counts for every QueueScaler in its vhost,
as before: protection fails closed. Tables for the parser and the rule, fuzzing of the
parser, properties of the plan.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from queuescaler.core.decision import Reason
from queuescaler.core.plan import Memory, Observations, Plan, WorkerLook, plan
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.spec import QueueScalerSpec
from queuescaler.core.workers import Pod, match_workers, serves
from queuescaler.sources.rabbitmq.listing import (
    CHANNEL_COLUMNS,
    CONSUMER_COLUMNS,
    parse_client_connections,
    parse_consumer_listing,
)
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

VHOST = "jobs"
THUMBS, MAILS, OTHER = QueueRef(VHOST, "thumbs"), QueueRef(VHOST, "mails"), QueueRef(VHOST, "x")
ELSEWHERE = QueueRef("elsewhere", "thumbs")
CONNECTION = "10.0.0.7:40112 -> 10.0.0.2:5672"


def _channel_name(number: int = 1, connection: str = CONNECTION) -> str:
    return f"{connection} ({number})"


def _channel(number: int = 1, connection: str = CONNECTION, **fields: Any) -> dict[str, Any]:
    """One channel as `/api/channels?columns=...` lists it on RabbitMQ 3.10."""
    entry: dict[str, Any] = {
        "name": _channel_name(number, connection),
        "vhost": VHOST,
        "connection_details": {"name": connection, "peer_host": "10.0.0.7"},
        "consumer_count": 1,
        "messages_unacknowledged": 1,
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not ...}


def _consumer(
    queue: QueueRef | None = THUMBS, number: int = 1, connection: str = CONNECTION, **fields: Any
) -> dict[str, Any]:
    """One consumer as `/api/consumers?columns=...` lists it on RabbitMQ 3.10 (read from it)."""
    entry: dict[str, Any] = {
        "channel_details": {
            "connection_name": connection,
            "name": _channel_name(number, connection),
            "peer_host": "10.0.0.7",
        },
        "queue": None if queue is None else {"name": queue.name, "vhost": queue.scope},
    }
    entry.update(fields)
    return {k: v for k, v in entry.items() if v is not ...}


CONNECTIONS = [{"name": CONNECTION, "vhost": VHOST, "user_provided_name": "worker-a"}]


def _parse(channels: list[Any], consumers: list[Any] | bytes | None) -> list[BrokerClient]:
    body = json.dumps(consumers).encode() if isinstance(consumers, list) else consumers
    return parse_client_connections(
        json.dumps(CONNECTIONS).encode(), json.dumps(channels).encode(), {VHOST}, body
    )


def _queues(*refs: QueueRef) -> frozenset[QueueRef]:
    return frozenset(refs)


@pytest.mark.parametrize(
    ("channels", "consumers", "queues"),
    [
        pytest.param([_channel()], [_consumer()], _queues(THUMBS), id="one-channel-one-queue"),
        pytest.param(
            [_channel(consumer_count=2)], [_consumer(THUMBS), _consumer(MAILS)],
            _queues(THUMBS, MAILS), id="one-channel-consuming-two-queues",
        ),
        pytest.param(
            [_channel(1), _channel(2, messages_unacknowledged=0)],
            [_consumer(THUMBS, 1), _consumer(MAILS, 2)], _queues(THUMBS, MAILS),
            id="several-channels-of-one-connection-add-up",
        ),
        pytest.param(
            [_channel(1), _channel(2, consumer_count=0, messages_unacknowledged=0)],
            [_consumer(THUMBS, 1)], _queues(THUMBS),
            id="a-publishing-channel-beside-does-not-spoil-it",
        ),
        pytest.param(
            [_channel(1)], [_consumer(THUMBS, 1), _consumer(MAILS, 2)], _queues(THUMBS, MAILS),
            id="a-consumer-on-a-channel-opened-after-the-channel-listing-adds-its-queue",
        ),
        pytest.param(
            [_channel()], [_consumer(THUMBS), _consumer(MAILS, connection="elsewhere")],
            _queues(THUMBS), id="other-connections-consumers-are-theirs",
        ),
        pytest.param([_channel()], None, None, id="no-consumer-listing-unknown"),
        pytest.param([_channel()], b"<html>", None, id="consumer-listing-not-json-unknown"),
        pytest.param(
            [_channel()], b'{"error": "x"}', None, id="consumer-listing-not-a-list-unknown",
        ),
        pytest.param(
            [_channel()], [], None,
            id="channel-missing-from-the-consumer-listing-unknown",
        ),
        pytest.param(
            [_channel(consumer_count=2)], [_consumer(THUMBS)], None,
            id="fewer-consumers-listed-than-the-channel-counts-unknown",
        ),
        pytest.param(
            [_channel(consumer_count=0)], [], None,
            id="messages-held-with-no-consumer-unknown",
        ),
        pytest.param(
            [_channel(consumer_count=...)], [_consumer()], None,
            id="channel-without-consumer-count-unknown",
        ),
        pytest.param(
            [_channel(messages_unacknowledged=...)], [_consumer()], _queues(THUMBS),
            id="unknown-unacked-count-busy-with-known-queues",
        ),
        pytest.param([_channel(name=...)], [_consumer()], None, id="unnamed-channel-unknown"),
        pytest.param(
            [_channel()], [_consumer(None)], None, id="consumer-with-unreadable-queue-unknown",
        ),
        pytest.param(
            [_channel()], [{**_consumer(), "queue": {"name": 3, "vhost": VHOST}}], None,
            id="consumer-with-malformed-queue-unknown",
        ),
        pytest.param(
            [_channel()], [_consumer(channel_details="x"), "junk", 7], None,
            id="consumer-on-no-readable-channel-left-out",
        ),
        pytest.param(
            [_channel(1), _channel(2)], [_consumer(THUMBS, 1)], None,
            id="one-unknown-channel-makes-the-connection-unknown",
        ),
    ],
)
def test_the_consumer_listing_says_what_each_client_consumes(
    channels: list[Any], consumers: list[Any] | bytes | None, queues: frozenset[QueueRef] | None
) -> None:
    (client,) = _parse(channels, consumers)
    assert client.queues == queues
    assert [dataclasses.replace(client, queues=None)] == _parse(channels, None)  # nothing else


def test_a_consumer_listing_is_read_by_channel() -> None:
    listing = parse_consumer_listing(json.dumps([
        _consumer(THUMBS, 1), _consumer(MAILS, 1), _consumer(None, 2), {"queue": {}},
    ]).encode())
    assert {name: (c.connection, c.queues) for name, c in listing.items()} == {
        _channel_name(1): (CONNECTION, [THUMBS, MAILS]),
        _channel_name(2): (CONNECTION, [None]),
    }


def test_the_columns_name_what_the_parser_reads() -> None:
    assert "name" in CHANNEL_COLUMNS
    assert set(CONSUMER_COLUMNS) == {
        "queue.name", "queue.vhost", "channel_details.name", "channel_details.connection_name",
    }


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8)
    | st.sampled_from([VHOST, CONNECTION, _channel_name(1), "thumbs", "name", "vhost"]),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(
        st.sampled_from([
            "name", "vhost", "queue", "channel_details", "connection_name", "consumer_count",
            "messages_unacknowledged", "connection_details",
        ]) | st.text(max_size=4),
        inner, max_size=5,
    ),
    max_leaves=20,
)
_entries = st.lists(
    st.one_of(
        st.builds(_consumer, st.sampled_from([THUMBS, MAILS, OTHER, None]), st.integers(1, 3)),
        _json,
    ),
    max_size=5,
)
_channels = st.lists(
    st.builds(
        _channel, st.integers(1, 3),
        consumer_count=st.sampled_from([0, 1, 2, ..., "2", None]),
        messages_unacknowledged=st.sampled_from([0, 1, 5, ..., -1]),
    ),
    max_size=4,
)


@given(consumers=_json)
def test_any_json_gives_consumers_or_a_bad_response(consumers: Any) -> None:
    try:
        parse_consumer_listing(json.dumps(consumers).encode())
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE


@given(consumers=st.binary(max_size=64))
def test_any_bytes_give_consumers_or_a_bad_response(consumers: bytes) -> None:
    try:
        parse_consumer_listing(consumers)
    except SourceError as error:
        assert error.kind is ErrorKind.BAD_RESPONSE


@settings(max_examples=300)
@given(channels=_channels, consumers=st.one_of(_entries, _json, st.binary(max_size=32)))
def test_any_consumer_listing_only_ever_names_queues_it_lists(
    channels: list[Any], consumers: Any
) -> None:
    """Whatever the consumer listing holds, the clients' counts are those of the channels, and
    their queues are unknown or queues the listing named; it never fails the call."""
    body = consumers if isinstance(consumers, bytes) else json.dumps(consumers).encode()
    found = _parse(channels, body)
    assert [(c.client_name, c.consumers, c.unacked) for c in found] == [
        (c.client_name, c.consumers, c.unacked) for c in _parse(channels, None)
    ]
    named = {THUMBS, MAILS, OTHER}
    for client in found:
        assert client.queues is None or client.queues <= named


# --- the rule: whose workers a client may be ---


def _client(queues: frozenset[QueueRef] | None, unacked: int = 1, name: str | None = None,
            vhost: str = VHOST) -> BrokerClient:
    return BrokerClient(vhost, name, None, 1, unacked, queues)


@pytest.mark.parametrize(
    ("client", "ours", "serving"),
    [
        pytest.param(_client(_queues(THUMBS)), {THUMBS}, True, id="consumes-our-queue"),
        pytest.param(_client(_queues(MAILS)), {THUMBS}, False, id="consumes-another-pools-queue"),
        pytest.param(
            _client(_queues(OTHER)), {THUMBS}, True,
            id="consumes-a-queue-no-pool-reads-fails-closed",
        ),
        pytest.param(
            _client(_queues(THUMBS, MAILS)), {MAILS}, True,
            id="consumes-queues-of-two-pools-serves-both",
        ),
        pytest.param(
            _client(_queues(THUMBS, OTHER)), {THUMBS, MAILS}, True,
            id="one-of-several-queues-of-ours",
        ),
        pytest.param(_client(None), {THUMBS}, True, id="unknown-queues-fail-closed"),
        pytest.param(
            _client(None, vhost="elsewhere"), {THUMBS}, False, id="unknown-queues-other-vhost",
        ),
        pytest.param(
            _client(_queues(ELSEWHERE), vhost="elsewhere"), {THUMBS}, False,
            id="same-queue-name-in-another-vhost",
        ),
        pytest.param(_client(_queues()), {THUMBS}, True, id="consumes-nothing-known-fails-closed"),
    ],
)
def test_a_client_serves_the_pools_whose_queues_it_consumes(
    client: BrokerClient, ours: set[QueueRef], serving: bool
) -> None:
    assert serves(client, ours, {MAILS}) is serving


def test_a_busy_client_on_a_retry_queue_of_ours_is_not_another_pools() -> None:
    """Review: a worker of ours also consuming `thumbs.retry` (no QueueScaler reads it), seen
    by the broker from a node address that matches no pod, holds 5 messages: it stays ours,
    and the unmatched pods are kept (the first version ignored it and removed 3 of 4)."""
    retry = QueueRef(VHOST, "thumbs.retry")
    clients = [_client(_queues(THUMBS), 0)] * 4 + [_client(frozenset({retry}), 5)]
    report = match_workers([Pod(f"thumbs-{i}") for i in range(4)], clients, {THUMBS}, {MAILS})
    assert report.unattributed == 1 and report.protected == 4


PODS = [Pod("thumbs-0"), Pod("thumbs-1"), Pod("thumbs-2")]


@pytest.mark.parametrize(
    ("clients", "busy", "unattributed", "protected"),
    [
        pytest.param(
            [_client(_queues(THUMBS), 1, "thumbs-0")] + [_client(_queues(MAILS), 3)] * 6,
            1, 0, 1, id="another-pools-busy-clients-are-not-ours",
        ),
        pytest.param(
            [_client(_queues(THUMBS), 1, "thumbs-0"), _client(None, 3)], 1, 1, 3,
            id="a-busy-client-of-unknown-queues-holds-the-unmatched-pods",
        ),
        pytest.param(
            [_client(_queues(THUMBS), 1, "thumbs-0"), _client(_queues(THUMBS), 2)], 1, 1, 3,
            id="a-busy-client-of-ours-on-no-pod-still-holds",
        ),
        pytest.param(
            [_client(_queues(THUMBS, MAILS), 2, "thumbs-1")], 1, 0, 1,
            id="a-pod-consuming-both-pools-is-busy",
        ),
        pytest.param(
            [_client(_queues(THUMBS), 0, "thumbs-1"), _client(_queues(MAILS), 2, "thumbs-1")],
            1, 0, 1, id="our-pods-busy-connection-to-another-queue-keeps-it",
        ),
        pytest.param(
            [_client(_queues(MAILS), 2, "thumbs-1", vhost="elsewhere")], 0, 0, 0,
            id="connections-in-other-vhosts-left-out-as-before",
        ),
    ],
)
def test_only_our_clients_are_matched_to_our_pods(
    clients: list[BrokerClient], busy: int, unattributed: int, protected: int
) -> None:
    report = match_workers(PODS, clients, {THUMBS}, {MAILS})
    assert (report.busy, report.unattributed, report.protected) == (busy, unattributed, protected)


# --- the plan: two pools in one vhost ---

NOW = 1_800_000_000.0


def _spec(queue: str) -> QueueScalerSpec:
    return parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": queue},
        "minReplicas": 1,
        "maxReplicas": 10,
        "source": {"rabbitmq": {"queue": queue, "vhost": VHOST,
                                "connectionSecretRef": {"name": "s"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0,
                                   "maxStepPercent": 100}},
    })


def _tick(queue: QueueRef, clients: list[BrokerClient], pods: list[Pod],
          unacked: int = 0) -> Plan:
    current = len(pods)
    seen = Observations(
        now=NOW, answer={queue: QueueSample(0, unacked, current, NOW)}, current=current,
        workers=WorkerLook(
            tuple(pods), tuple(clients), others=frozenset({THUMBS, MAILS} - {queue})
        ),
    )
    return plan(_spec(queue.name), Memory(current_replicas=current), seen, generation=1,
                name=queue.name)


MAIL_PODS = [Pod(f"mails-{i}") for i in range(6)]
THUMB_PODS = [Pod(f"thumbs-{i}") for i in range(4)]
BUSY_MAILERS = [_client(_queues(MAILS), 3, pod.name) for pod in MAIL_PODS]
IDLE_THUMBERS = [_client(_queues(THUMBS), 0, pod.name) for pod in THUMB_PODS]


def test_an_idle_pool_shrinks_beside_a_busy_pool_in_its_vhost() -> None:
    """bench/real_workers.py --one-vhost: six busy clients of the mail pool held every
    scale-down of the thumbnail pool ("6 busy clients matched no pod")."""
    made = _tick(THUMBS, BUSY_MAILERS + IDLE_THUMBERS, THUMB_PODS)
    assert made.scale_to == 1, made.decision
    assert made.decision is not None and "matched no pod" not in made.decision.message
    busy = _tick(MAILS, BUSY_MAILERS + IDLE_THUMBERS, MAIL_PODS, unacked=18)
    assert busy.scale_to is None and busy.decision is not None
    assert busy.decision.replicas == 6 and busy.decision.reason is Reason.BUSY_WORKERS


def test_busy_clients_of_unknown_queues_still_hold_every_pool() -> None:
    unknown = [_client(None, 3, pod.name) for pod in MAIL_PODS]
    made = _tick(THUMBS, unknown + IDLE_THUMBERS, THUMB_PODS)
    assert made.scale_to is None
    assert made.decision is not None and "6 busy clients matched no pod" in made.decision.message


def test_work_in_flight_counts_only_our_clients_holdings() -> None:
    """The queue has 2 messages in flight; the clients holding messages are another pool's:
    what we hold is on no listed client of ours, so the unmatched pods stay."""
    pods = [*THUMB_PODS[:2], Pod("thumbs-new-0"), Pod("thumbs-new-1")]
    made = _tick(THUMBS, BUSY_MAILERS + IDLE_THUMBERS[:2], pods, unacked=2)
    assert made.decision is not None and made.decision.replicas == 2
    assert "in flight on no listed client" in made.decision.message


def _clients(names: list[str | None]) -> st.SearchStrategy[list[BrokerClient]]:
    return st.lists(
        st.builds(
            _client,
            st.sampled_from([_queues(THUMBS), _queues(MAILS), _queues(THUMBS, MAILS), None]),
            st.integers(0, 3),
            st.sampled_from(names),
        ),
        max_size=8,
    )


ANY_NAME = [None, "stranger", *(p.name for p in THUMB_PODS + MAIL_PODS)]


@settings(max_examples=200, deadline=None)
@given(clients=_clients(ANY_NAME), foreign=_clients([None, *(p.name for p in MAIL_PODS)]),
       unacked=st.integers(0, 6))
def test_property_another_pools_clients_never_change_our_plan(
    clients: list[BrokerClient], foreign: list[BrokerClient], unacked: int
) -> None:
    """Clients that consume only the mail queue and come from none of the thumbnail pool's
    pods are invisible to it, however many and however busy."""
    theirs = [c for c in foreign if c.queues == _queues(MAILS)]
    alone = _tick(THUMBS, clients, THUMB_PODS, unacked)
    beside = _tick(THUMBS, clients + theirs, THUMB_PODS, unacked)
    assert (alone.scale_to, alone.decision) == (beside.scale_to, beside.decision)


@settings(max_examples=200, deadline=None)
@given(clients=_clients(ANY_NAME))
def test_property_unknown_queues_never_protect_fewer_pods(clients: list[BrokerClient]) -> None:
    """What the consumer listing says only ever lets a pool ignore other pools' clients:
    with every client's queues unknown (the listing failed), at least as many pods are kept,
    and a busy pod of ours is busy whatever its connections consume."""
    known = match_workers(THUMB_PODS, clients, {THUMBS})
    blurred = [dataclasses.replace(c, queues=None) for c in clients]
    unknown = match_workers(THUMB_PODS, blurred, {THUMBS})
    assert unknown.protected >= known.protected
    assert dict(unknown.held) == dict(known.held)
