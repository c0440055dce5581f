"""A consumer group's lag, rates, caps and busy members from one round's answers (lag.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from queuescaler.core.decision import ScalerState, decide
from queuescaler.core.sample import BrokerClient, ErrorKind, QueueRef, SourceError
from queuescaler.sources.kafka.lag import (
    IN_FLIGHT_NOTE,
    Reading,
    busy_members,
    partition_lag,
    topic_sample,
)
from queuescaler.sources.kafka.protocol import GROUP_ID_NOT_FOUND, Committed, Group, Member
from queuescaler.sources.kafka.spec import GroupScope
from queuescaler.sources.registry import parse_spec

pytestmark = pytest.mark.unit

NOW = 1_000.0
SCOPE = GroupScope("workers", "latest", "lag")
EARLY = GroupScope("workers", "earliest", "lag")


@pytest.mark.parametrize(
    ("end", "start", "committed", "reset", "lag"),
    [
        pytest.param(100, 0, 60, "latest", 40, id="end-minus-committed"),
        pytest.param(100, 0, None, "earliest", 100, id="no-commit-earliest-from-log-start"),
        pytest.param(100, 30, None, "earliest", 70, id="no-commit-earliest-after-retention"),
        pytest.param(100, 30, None, "latest", 0, id="no-commit-latest-is-zero"),
        pytest.param(100, 80, 50, "latest", 20, id="retention-deleted-not-counted"),
        pytest.param(100, 100, 50, "earliest", 0, id="everything-deleted"),
        pytest.param(100, 0, 120, "latest", 0, id="commit-past-end-latest-resets-to-the-end"),
        pytest.param(100, 30, 120, "earliest", 70,
                     id="commit-past-end-earliest-resets-to-the-log-start"),
        pytest.param(100, 0, 100, "earliest", 0, id="commit-at-the-end-is-caught-up"),
        pytest.param(0, 0, None, "earliest", 0, id="empty-partition"),
    ],
)
def test_partition_lag(end: int, start: int, committed: int | None, reset: str, lag: int) -> None:
    assert partition_lag(end, start, committed, reset) == lag


def member(
    name: str, assignment: Mapping[str, tuple[int, ...]] | None, *,
    instance: str | None = None, host: str = "/10.0.0.9",
) -> Member:
    return Member(f"{name}-uuid", name, host, instance, assignment)


def stable(*members: Member, state: str = "Stable") -> Group:
    return Group("workers", state, "consumer", members)


def reading(
    partitions: Mapping[int, tuple[int, int, int | None]],
    group: Group | SourceError | None = None,
    *,
    topic: str = "orders",
) -> Reading:
    """A round's answers for one topic: per partition (start, end, committed)."""
    return Reading(
        taken_at=NOW,
        partitions={topic: sorted(partitions)},
        ends={(topic, p): end for p, (_, end, _) in partitions.items()},
        starts={(topic, p): start for p, (start, _, _) in partitions.items()},
        committed={"workers": Committed("workers", {
            (topic, p): c for p, (_, _, c) in partitions.items() if c is not None})},
        groups={"workers": group if group is not None else stable(
            member("pod-a", {topic: (0, 1)}), member("pod-b", {topic: (2,)}))},
    )


THREE = {0: (0, 100, 90), 1: (0, 50, 50), 2: (20, 300, 10)}
"""Lag 10, 0 and 280 (retention deleted 10 messages the group never read)."""


def test_a_topics_sample_adds_its_partitions_up() -> None:
    sample = topic_sample(SCOPE, "orders", reading(THREE))
    assert not isinstance(sample, SourceError)
    assert (sample.ready, sample.unacked, sample.backlog) == (290, 0, 290)
    assert (sample.published_total, sample.acked_total) == (450, 160)
    assert sample.consumers == 2
    assert (sample.parallelism, sample.backlog_parallelism) == (3, 2)
    assert sample.complete and sample.scaling_pauses and not sample.rebalancing
    assert sample.taken_at == NOW
    assert sample.note == IN_FLIGHT_NOTE


@pytest.mark.parametrize(
    ("scope", "caps"),
    [
        pytest.param(SCOPE, (3, 2), id="partitions-with-lag"),
        pytest.param(GroupScope("workers", "latest", "partitions"), (3, None), id="partitions"),
        pytest.param(GroupScope("workers", "latest", "none"), (None, None), id="idle-allowed"),
    ],
)
def test_the_caps_follow_the_scope(scope: GroupScope, caps: tuple[int | None, ...]) -> None:
    sample = topic_sample(scope, "orders", reading(THREE))
    assert not isinstance(sample, SourceError)
    assert (sample.parallelism, sample.backlog_parallelism) == caps


def test_without_limit_to_partitions_with_lag_the_decision_names_the_partitions_cap() -> None:
    """Lag on one partition of three, worth 29 replicas: capped at the three partitions, and
    the decision does not say three partitions have messages waiting (found end to end)."""
    spec = parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "maxReplicas": 10,
        "source": {"kafka": {"topic": "orders", "consumerGroup": "workers",
                             "connectionSecretRef": {"name": "kafka"},
                             "limitToPartitionsWithLag": False}},
    })
    scope = GroupScope.from_scope(spec.source.queues[0].scope)
    assert scope is not None and scope.cap == "partitions"
    sample = topic_sample(scope, "orders", reading({0: (0, 290, 0), 1: (0, 5, 5), 2: (0, 7, 7)}))
    assert not isinstance(sample, SourceError)
    decision = decide(spec, sample, 1, ScalerState(), NOW)
    assert decision.replicas == 3
    assert "at most 3 consumers can work at once" in decision.message, decision.message
    assert "have messages waiting" not in decision.message, decision.message


def test_lag_zero_everywhere_is_an_idle_complete_sample() -> None:
    sample = topic_sample(SCOPE, "orders", reading({0: (0, 7, 7), 1: (3, 3, None)}))
    assert not isinstance(sample, SourceError)
    assert (sample.ready, sample.backlog_parallelism, sample.complete) == (0, 0, True)


@pytest.mark.parametrize(
    ("scope", "ready", "said"),
    [
        pytest.param(SCOPE, 0, "count as read (offsetResetPolicy latest)", id="latest"),
        pytest.param(EARLY, 95, "count from the log start (offsetResetPolicy earliest)",
                     id="earliest"),
    ],
)
def test_a_group_without_commits_follows_its_reset_policy(
    scope: GroupScope, ready: int, said: str
) -> None:
    sample = topic_sample(scope, "orders", reading({0: (5, 100, None)}, stable()))
    assert not isinstance(sample, SourceError)
    assert sample.ready == ready and sample.complete
    assert sample.note is not None and said in sample.note


@pytest.mark.parametrize(
    ("reset", "ready", "replicas"),
    [
        pytest.param("earliest", 10, 1, id="earliest-counts-from-the-log-start"),
        pytest.param("latest", 0, 0, id="latest-counts-none"),
    ],
)
def test_a_commit_beyond_the_end_counts_as_the_consumer_would_reset(
    reset: str, ready: int, replicas: int
) -> None:
    """A truncated log, a topic recreated under a group that kept its offsets, an offset set
    by hand: committed 1000 on a partition that ends at 10. The consumer's fetch is out of
    range and it resets by its policy; read as lag 0 the pool went to zero with the 10
    messages stranded (review r1, on a real broker)."""
    spec = parse_spec({
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0, "maxReplicas": 20,
        "source": {"kafka": {"topic": "orders", "consumerGroup": "workers",
                             "offsetResetPolicy": reset,
                             "connectionSecretRef": {"name": "kafka"}}},
        "behavior": {"scaleDown": {"stabilizationSeconds": 0, "cooldownSeconds": 0}},
    })
    scope = GroupScope.from_scope(spec.source.queues[0].scope)
    assert scope is not None
    sample = topic_sample(scope, "orders", reading({0: (0, 10, 1000), 1: (0, 5, 5)}, stable()))
    assert not isinstance(sample, SourceError)
    assert (sample.ready, sample.complete) == (ready, True)
    assert sample.note is not None
    assert (f"committed offset beyond the end on 1 partition of topic 'orders': counted as "
            f"{reset} would reset") in sample.note, sample.note
    assert decide(spec, sample, 4, ScalerState(), NOW).replicas == replicas
    lags = {("orders", 0): partition_lag(10, 0, 1000, reset)}
    (client,) = busy_members(scope, scope.scope, stable(member("pod-a", {"orders": (0,)})),
                             Committed("workers", {("orders", 0): 1000}), lags)
    assert client.unacked == ready  # the member holds the work it will read again


@pytest.mark.parametrize("state", ["PreparingRebalance", "CompletingRebalance"])
def test_a_rebalance_is_reported(state: str) -> None:
    group = stable(member("pod-a", None), member("pod-b", None), member("pod-c", None),
                   state=state)
    sample = topic_sample(SCOPE, "orders", reading(THREE, group))
    assert not isinstance(sample, SourceError)
    assert sample.rebalancing and sample.complete
    assert sample.consumers == 3  # assignments not told: every member


def test_consumers_are_the_members_assigned_the_topic() -> None:
    group = stable(member("pod-a", {"orders": (0, 1, 2)}), member("pod-b", {"other": (0,)}),
                   member("idle", {}))
    sample = topic_sample(SCOPE, "orders", reading(THREE, group))
    assert not isinstance(sample, SourceError) and sample.consumers == 1


def test_an_undescribed_group_makes_the_sample_incomplete() -> None:
    refused = SourceError(ErrorKind.AUTH, "DescribeGroups refused: GROUP_AUTHORIZATION_FAILED")
    sample = topic_sample(SCOPE, "orders", reading(THREE, refused))
    assert not isinstance(sample, SourceError)
    assert not sample.complete and sample.consumers == 0
    assert sample.note is not None and "its members and rebalances are unknown" in sample.note


@pytest.mark.parametrize(
    "group",
    [
        pytest.param(Group("workers", "Dead", "", ()), id="dead"),
        pytest.param(Group("workers", "", "", (), GROUP_ID_NOT_FOUND), id="not-found"),
    ],
)
def test_a_group_describe_groups_does_not_know_but_with_commits_is_incomplete(
    group: Group,
) -> None:
    sample = topic_sample(SCOPE, "orders", reading(THREE, group))
    assert not isinstance(sample, SourceError)
    assert not sample.complete
    assert sample.note is not None and "KIP-848" in sample.note


def test_a_group_that_never_existed_is_complete_and_empty() -> None:
    sample = topic_sample(EARLY, "orders", reading({0: (0, 4, None)}, Group(
        "workers", "Dead", "", ())))
    assert not isinstance(sample, SourceError)
    assert (sample.ready, sample.consumers, sample.complete) == (4, 0, True)


def test_a_partition_not_read_leaves_the_sample_incomplete() -> None:
    read = reading(THREE)
    lost = SourceError(ErrorKind.UNREACHABLE, "partition 2 of topic 'orders': LEADER_NOT_AVAILABLE")
    read = Reading(NOW, read.partitions, {**read.ends, ("orders", 2): lost}, read.starts,
                   read.committed, read.groups)
    sample = topic_sample(SCOPE, "orders", read)
    assert not isinstance(sample, SourceError)
    assert (sample.ready, sample.complete) == (10, False)
    assert sample.backlog_parallelism == 2  # the unread one may lag: counted
    assert sample.note is not None and "1 of 3 partitions" in sample.note


def test_a_refused_committed_offset_is_a_partition_not_read() -> None:
    read = reading(THREE)
    committed = Committed("workers", {("orders", 0): 90, ("orders", 1): 50},
                          errors={("orders", 2): 29})
    read = Reading(NOW, read.partitions, read.ends, read.starts, {"workers": committed},
                   read.groups)
    sample = topic_sample(SCOPE, "orders", read)
    assert not isinstance(sample, SourceError)
    assert not sample.complete and "TOPIC_AUTHORIZATION_FAILED" in (sample.note or "")


def test_no_partition_read_is_the_partitions_error() -> None:
    lost = SourceError(ErrorKind.TIMEOUT, "no answer in time")
    read = Reading(NOW, {"orders": [0]}, {("orders", 0): lost}, {("orders", 0): 0},
                   {"workers": Committed("workers", {})}, {"workers": stable()})
    outcome = topic_sample(SCOPE, "orders", read)
    assert isinstance(outcome, SourceError) and outcome.kind is ErrorKind.TIMEOUT


@pytest.mark.parametrize(
    ("partitions", "committed", "kind"),
    [
        pytest.param(SourceError(ErrorKind.QUEUE_NOT_FOUND, "topic 'orders' does not exist"),
                     Committed("workers", {}), ErrorKind.QUEUE_NOT_FOUND, id="topic-missing"),
        pytest.param([0], SourceError(ErrorKind.AUTH, "group 'workers': GROUP_AUTH"),
                     ErrorKind.AUTH, id="group-refused"),
    ],
)
def test_a_topic_or_group_error_is_the_queues(
    partitions: list[int] | SourceError, committed: Committed | SourceError, kind: ErrorKind
) -> None:
    read = Reading(NOW, {"orders": partitions}, {("orders", 0): 1}, {},
                   {"workers": committed}, {"workers": stable()})
    outcome = topic_sample(SCOPE, "orders", read)
    assert isinstance(outcome, SourceError) and outcome.kind is kind


# --- busy members ---------------------------------------------------------------------------

TEXT = SCOPE.scope


def test_a_member_is_busy_while_its_partitions_lag() -> None:
    group = stable(member("pod-a", {"orders": (0, 1)}), member("pod-b", {"orders": (2,)}))
    lags = {("orders", 0): 10, ("orders", 1): 0, ("orders", 2): 0}
    found = busy_members(SCOPE, TEXT, group, Committed("workers", {}), lags)
    assert found == [
        BrokerClient(TEXT, "pod-a", "10.0.0.9", 1, 10, frozenset({QueueRef(TEXT, "orders")})),
        BrokerClient(TEXT, "pod-b", "10.0.0.9", 1, 0, frozenset({QueueRef(TEXT, "orders")})),
    ]


def test_a_partition_of_unknown_lag_makes_its_member_busy() -> None:
    group = stable(member("pod-a", {"orders": (0,)}))
    (client,) = busy_members(SCOPE, TEXT, group, Committed("workers", {}), {("orders", 0): None})
    assert client.unacked == 1


def test_the_instance_id_names_the_member_and_the_host_loses_its_slash() -> None:
    group = stable(member("consumer-1", {"orders": (0,)}, instance="pod-7", host="/fd00::9"))
    (client,) = busy_members(SCOPE, TEXT, group, Committed("workers", {}), {("orders", 0): 0})
    assert (client.client_name, client.peer_host) == ("pod-7", "fd00::9")


@pytest.mark.parametrize(("lag", "held"), [(5, 1), (0, 0)])
def test_members_during_a_rebalance_hold_work_when_the_group_lags(lag: int, held: int) -> None:
    group = stable(member("pod-a", None), state="PreparingRebalance")
    (client,) = busy_members(SCOPE, TEXT, group, Committed("workers", {}), {("orders", 0): lag})
    assert (client.unacked, client.queues) == (held, None)


@pytest.mark.parametrize(
    ("group", "lag", "unknown"),
    [
        pytest.param(Group("workers", "Empty", "consumer", ()), 3, True, id="empty-with-lag"),
        pytest.param(Group("workers", "Dead", "", ()), 3, True, id="kip-848-with-lag"),
        pytest.param(Group("workers", "Empty", "consumer", ()), 0, False, id="empty-idle"),
    ],
)
def test_a_group_with_lag_and_no_member_shown_holds_its_pods(
    group: Group, lag: int, unknown: bool
) -> None:
    found = busy_members(SCOPE, TEXT, group, Committed("workers", {}), {("orders", 0): lag})
    assert found == ([BrokerClient(TEXT, None, None, 1, 1)] if unknown else [])


def test_busy_members_cannot_be_told_without_the_group() -> None:
    refused = SourceError(ErrorKind.UNREACHABLE, "coordinator down")
    with pytest.raises(SourceError):
        busy_members(SCOPE, TEXT, refused, Committed("workers", {}), {})
    with pytest.raises(SourceError):
        busy_members(SCOPE, TEXT, stable(), refused, {})


@pytest.mark.parametrize("allow_idle", [False, True])
def test_a_kafka_sample_is_never_a_shared_queue(allow_idle: bool) -> None:
    """Review r2: allowIdleConsumers drops the partition cap (parallelism None), and the
    core read 'no cap' as 'a queue every consumer shares', measuring a busy group's load as
    its speed again. Whether a queue is shared is a fact of its own."""
    scope = GroupScope("workers", "latest", "none" if allow_idle else "lag")
    sample = topic_sample(scope, "orders", reading({0: (0, 100, 10), 1: (0, 100, 10)}, stable()))
    assert not isinstance(sample, SourceError)
    assert sample.shared is False
    assert (sample.parallelism is None) is allow_idle
