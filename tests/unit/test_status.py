"""Status as the user sees it and as the operator's memory: pure, so tested on plain data."""

from __future__ import annotations

import datetime
from dataclasses import replace
from typing import Any

import pytest

from queuescaler.core.decision import (
    PROBE_PAUSE_SECONDS,
    Decision,
    Reason,
    Recommendation,
    ScalerState,
)
from queuescaler.core.sample import QueueSample
from queuescaler.core.status import (
    MAX_RECOMMENDATIONS,
    Condition,
    TickOutcome,
    build_status,
    iso,
    merge_conditions,
    needs_write,
    parse_iso,
    state_from_status,
)

pytestmark = pytest.mark.unit

T0 = 1_800_000_000.0


def outcome(
    *,
    ready: int = 0,
    replicas: int = 2,
    reason: Reason = Reason.BACKLOG,
    message: str = "backlog 20 / 10 per replica -> 2",
    failures: int = 0,
    conditions: tuple[Condition, ...] = (Condition("Ready", True, "Sampling", "ok"),),
    recommendations: tuple[Recommendation, ...] = (),
) -> TickOutcome:
    return TickOutcome(
        generation=1,
        include_unacked=True,
        sample=QueueSample(ready=ready, unacked=0, consumers=2, taken_at=T0, ack_rate=4.0),
        current_replicas=2,
        decision=Decision(replicas, reason, message, replicas, False),
        state=ScalerState(consecutive_failures=failures, recommendations=recommendations),
        conditions=conditions,
    )


def test_iso_round_trips_whole_seconds() -> None:
    assert parse_iso(iso(T0)) == T0
    assert parse_iso("not a time") is None
    assert parse_iso(None) is None


@pytest.mark.parametrize("moment", [
    pytest.param(T0, id="whole-second"),
    pytest.param(T0 + 0.999, id="just-before-the-next-second"),
    pytest.param(T0 - 0.001, id="just-before-this-second"),
    pytest.param(0.5, id="the-epoch"),
])
def test_iso_truncates_to_the_second_as_strftime_does(moment: float) -> None:
    """iso() remembers the seconds it formatted; what it says stays datetime's."""
    expected = datetime.datetime.fromtimestamp(moment, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")
    assert iso(moment) == iso(moment) == expected


@pytest.mark.parametrize(
    ("before", "status", "flips", "moved"),
    [
        pytest.param(None, True, True, True, id="new-condition-flips"),
        pytest.param("True", True, False, False, id="same-status-keeps-transition-time"),
        pytest.param("True", False, True, True, id="changed-status-flips"),
    ],
)
def test_transition_time_moves_only_when_the_status_flips(
    before: str | None, status: bool, flips: bool, moved: bool
) -> None:
    previous: list[dict[str, Any]] = []
    if before is not None:
        previous = [{"type": "Ready", "status": before, "lastTransitionTime": iso(T0)}]
    merged, flipped = merge_conditions(
        previous, [Condition("Ready", status, "R", "m")], T0 + 60, generation=3
    )
    assert bool(flipped) is flips
    assert (merged[0]["lastTransitionTime"] == iso(T0 + 60)) is moved
    assert merged[0]["observedGeneration"] == 3


def test_restore_renews_the_newest_recommendation_to_now() -> None:
    stored = {
        "lastScaleTime": iso(T0),
        "recommendations": [{"at": iso(T0 + 10), "replicas": 5}, {"at": iso(T0), "replicas": 8}],
        "consecutiveFailures": 2,
        "perReplicaRate": 3.5,
    }
    state = state_from_status(stored, now=T0 + 100)
    assert state.last_scale_time == T0 + 1  # whole seconds stored: never earlier than true
    # times round up as lastScaleTime does: a window never ends earlier after a restart
    assert state.recommendations == (Recommendation(T0 + 1, 8), Recommendation(T0 + 100, 5))
    assert state.consecutive_failures == 2
    assert state.per_replica_rate == 3.5
    assert not state.rate_measured  # not said: still a lower bound


@pytest.mark.parametrize(("stored", "measured"), [(True, True), (False, False), ("yes", False)])
def test_a_measured_speed_stays_measured_across_a_restart(stored: Any, measured: bool) -> None:
    state = state_from_status({"perReplicaRate": 3.5, "perReplicaRateMeasured": stored}, now=T0)
    assert state.rate_measured is measured
    written, _ = build_status({}, replace(outcome(), state=state), T0)
    assert written["perReplicaRateMeasured"] is measured


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param({}, id="empty"),
        pytest.param({"recommendations": "nonsense", "perReplicaRate": -1}, id="wrong-types"),
        pytest.param({"consecutiveFailures": -3, "lastScaleTime": "yesterday"}, id="bad-values"),
    ],
)
def test_restore_from_damaged_status_starts_fresh(stored: dict[str, Any]) -> None:
    state = state_from_status(stored, now=T0)
    assert replace(state, restored=False, probe_unknown_until=None, watching_since=None) == (
        ScalerState()
    )
    assert state.restored is bool(stored)  # a restart all the same: no shrinking until counted


@pytest.mark.parametrize(
    ("measured", "unknown_until"), [(False, T0 + PROBE_PAUSE_SECONDS), (True, None)]
)
def test_a_restart_does_not_know_whether_a_probe_failed(
    measured: bool, unknown_until: Any
) -> None:
    """Whether a probe failed since the last status write is not known: for that long the
    restarted operator probes no further than both answers agree (property test: either
    guess alone moved a pool the run that kept going held)."""
    state = state_from_status({"perReplicaRate": 3.5, "perReplicaRateMeasured": measured}, T0)
    assert state.probe_unknown_until == unknown_until
    assert state.probe_failed_at is None


def test_a_probes_rest_is_written_and_read_back() -> None:
    """A pool resting 80 minutes after its fourth failed probe rested 10 after a restart
    (the count was kept in memory only): status keeps when and how often."""
    state = ScalerState(per_replica_rate=3.5, probe_failed_at=T0 - 1200.4, probe_failures=4)
    written, _ = build_status({}, replace(outcome(), state=state), T0)
    assert (written["probeFailedAt"], written["probeFailures"]) == (iso(T0 - 1201), 4)
    restored = state_from_status(written, T0)
    assert restored.probe_failures == 4
    assert restored.probe_failed_at == T0 - 1200  # the stored second, rounded up: never earlier
    assert restored.probe_unknown_until == T0 + PROBE_PAUSE_SECONDS  # since the write: unknown
    paused = replace(state, probe_failures=0)  # pods starting paused it: no failure counted
    written, _ = build_status(written, replace(outcome(), state=paused), T0)
    assert "probeFailures" not in written and "probeFailedAt" in written
    measured = replace(state, rate_measured=True, probe_failures=0)
    written, _ = build_status(written, replace(outcome(), state=measured), T0)
    assert "probeFailedAt" not in written and "probeFailures" not in written


@pytest.mark.parametrize(
    ("stored", "failed_at", "failures"),
    [
        pytest.param({"probeFailedAt": iso(T0 + 3600), "probeFailures": 2}, T0, 2,
                     id="written-by-a-clock-ahead-is-taken-as-now"),
        pytest.param({"probeFailedAt": iso(T0 - 60), "probeFailures": 99}, T0 - 59, 4,
                     id="count-beyond-the-most-counted"),
        pytest.param({"probeFailedAt": iso(T0 - 60), "probeFailures": True}, T0 - 59, 0,
                     id="a-boolean-is-no-count"),
        pytest.param({"probeFailedAt": iso(T0 - 60), "probeFailures": -2}, T0 - 59, 0,
                     id="negative-count"),
        pytest.param({"probeFailedAt": "lately", "probeFailures": 3}, None, 0,
                     id="no-time-no-count"),
        pytest.param({"probeFailedAt": iso(T0 - 60), "probeFailures": 3,
                      "perReplicaRateMeasured": True}, None, 0, id="measured-since"),
    ],
)
def test_a_damaged_probe_record_is_read_safely(
    stored: dict[str, Any], failed_at: float | None, failures: int
) -> None:
    state = state_from_status({"perReplicaRate": 3.5, **stored}, T0)
    assert (state.probe_failed_at, state.probe_failures) == (failed_at, failures)


@pytest.mark.parametrize("failures", [0, 1, 4])
def test_a_probes_time_renewed_alone_waits_for_a_stale_status(failures: int) -> None:
    """Pods still starting, a failure past the fourth, or a Kafka lag (a partition always
    has one waiting) renew the rest's time at every poll: written with the next write or
    once the stored status is stale, not at each poll (review 40: with probeFailures set
    each such pool wrote at every poll, 2,000 writes a second at 10,000 pools of 5 s)."""
    def at(moment: float) -> TickOutcome:
        return replace(outcome(), state=ScalerState(per_replica_rate=3.5,
                                                    probe_failed_at=moment,
                                                    probe_failures=failures))
    written, _ = build_status({}, at(T0), T0)
    new, _ = build_status(written, at(T0 + 15), T0 + 15)
    assert not needs_write(written, new, stale=False)
    assert needs_write(written, new, stale=True)  # within a refresh: a restart keeps it


def test_a_probes_new_failure_is_written_at_once() -> None:
    first = replace(outcome(), state=ScalerState(per_replica_rate=3.5, probe_failed_at=T0))
    written, _ = build_status({}, first, T0)
    failed = replace(outcome(), state=ScalerState(per_replica_rate=3.5, probe_failed_at=T0 + 15,
                                                  probe_failures=1))
    new, _ = build_status(written, failed, T0 + 15)
    assert needs_write(written, new, stale=False)


def test_a_decisions_time_is_the_time_of_its_sentence() -> None:
    """A sentence with newer numbers under an old time read as stale numbers made live."""
    first, _ = build_status({}, outcome(message="a"), T0)
    same, _ = build_status(first, outcome(message="a"), T0 + 15)
    assert same["lastDecision"]["at"] == first["lastDecision"]["at"]
    second, _ = build_status(first, outcome(message="b"), T0 + 15)
    assert second["lastDecision"]["at"] == iso(T0 + 15)
    assert second["lastDecision"]["message"] == "b"


@pytest.mark.parametrize(
    ("change", "stale", "write"),
    [
        pytest.param({}, False, False, id="steady-state-writes-nothing"),
        pytest.param({"ready": 7}, False, False, id="backlog-alone-waits"),
        pytest.param({"ready": 7}, True, True, id="backlog-written-when-stale"),
        pytest.param({"message": "other words"}, False, False, id="sentence-alone-waits"),
        pytest.param({"failures": 4}, False, False, id="failure-count-alone-waits"),
        pytest.param({}, True, False, id="stale-but-only-renewed-timestamps-writes-nothing"),
        pytest.param({"replicas": 3}, False, True, id="new-desired-count-written-at-once"),
        pytest.param({"reason": Reason.COOLDOWN}, False, True, id="new-reason-written-at-once"),
        pytest.param(
            {"conditions": (Condition("Ready", False, "Unreachable", "down"),)},
            False,
            True,
            id="condition-flip-written-at-once",
        ),
        pytest.param(
            {"recommendations": (Recommendation(T0, 9),)},
            False,
            True,
            id="new-recommendation-value-written-at-once",
        ),
    ],
)
def test_status_is_written_only_when_it_matters(
    change: dict[str, Any], stale: bool, write: bool
) -> None:
    written, _ = build_status({}, outcome(recommendations=(Recommendation(T0, 2),)), T0)
    base: dict[str, Any] = {"recommendations": (Recommendation(T0, 2),)}
    new, _ = build_status(written, outcome(**{**base, **change}), T0 + 15)
    assert needs_write(written, new, stale=stale) is write


def test_a_history_longer_than_status_holds_keeps_its_highest_across_a_restart() -> None:
    """A falling load under an hour's scale-down window keeps a staircase of 120 ever lower
    recommendations; status holds 64. Left open in session 22: the newest 64 were written, so the
    restored operator's highest was 64 where the running one's was 120, and it shrank the
    pool at once. Every later tick, the restored window's highest is at least the running
    one's."""
    window = 3600.0
    running = tuple(Recommendation(T0 + 30 * i, 120 - i) for i in range(120))
    written, _ = build_status({}, outcome(recommendations=running), T0 + 3570)
    assert len(written["recommendations"]) <= MAX_RECOMMENDATIONS
    assert written["recommendations"][0]["replicas"] == 120
    ats = [parse_iso(r["at"]) for r in written["recommendations"]]
    assert ats == sorted(ats)
    restored = state_from_status(written, now=T0 + 3570).recommendations

    def highest(history: tuple[Recommendation, ...], now: float) -> int:
        return max((r.replicas for r in history if r.at > now - window), default=0)

    for now in range(int(T0) + 3570, int(T0) + 3570 + 2 * int(window)):  # every second
        assert highest(restored, now) >= highest(running, now)
        # folded in runs of two polls: held one poll longer at most, and the second that
        # whole-second stamps round up (review 35)
        assert highest(restored, now) <= highest(running, now - 31)


def test_a_failed_sample_drops_the_numbers_it_could_not_renew() -> None:
    """Defect 19: a backlog shown after sampling failed read as live."""
    good, _ = build_status({}, outcome(), T0)
    assert "backlog" in good and good["lastSampleTime"] == iso(T0)
    failed, _ = build_status(good, replace(outcome(), sample=None), T0 + 60)
    assert "backlog" not in failed and "rates" not in failed
    assert failed["lastSampleTime"] == iso(T0)
