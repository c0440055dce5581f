"""Replaying traffic against a spec, and the search for the cheapest setting: the pure half
of `queuescaler simulate` and `queuescaler recommend` (sim/replay.py, sim/tuning.py)."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from queuescaler.core.spec import SpecError
from queuescaler.sim import replay as sim
from queuescaler.sim import tuning
from queuescaler.sim.traces import NAMED, bursts, steady
from queuescaler.sim.traffic import MOVE_HORIZON, publish_rates_timed_by_backlog
from queuescaler.sim.tuning import DRAIN, MESSAGES_PER_REPLICA, STABILIZATION, recommend

pytestmark = pytest.mark.unit


def spec(**overrides: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": 40,
        "source": {"rabbitmq": {"queue": "work", "connectionSecretRef": {"name": "rabbit"}}},
        "target": {"messagesPerReplica": 20},
    }
    raw.update(overrides)
    return raw


SHORT_BURSTS = bursts(duration=900, first_at=120, every=450)
"""Fifteen minutes, two bursts of a minute at 200 msg/s over 5 msg/s, 100 ms tasks."""


def model(**given: Any) -> sim.ReplayModel:
    return sim.estimate_model(sim.Given(**given), trace=SHORT_BURSTS)


# --- traffic -----------------------------------------------------------------------------


def test_a_csv_with_a_header_iso_times_and_service_seconds() -> None:
    traffic = sim.traffic_from_csv(
        "time,publish_rate,service_seconds\n"
        "2026-01-01T00:00:00Z,10,0.5\n"
        "2026-01-01T00:01:00Z,20,\n"
        "2026-01-01T00:02:00+00:00,0,1.5\n",
        "t.csv",
    )
    assert traffic.times[1] - traffic.times[0] == 60
    assert traffic.publish_rates == (10.0, 20.0, 0.0)
    assert traffic.service_seconds == (0.5, None, 1.5)
    assert traffic.step == 60


def test_a_csv_without_header_in_seconds_has_no_service_column() -> None:
    traffic = sim.traffic_from_csv("# comment\n0,5\n\n15,7.5\n30,0\n", "t.csv")
    assert traffic.times == (0.0, 15.0, 30.0)
    assert traffic.service_seconds == ()


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("0,1\n", "at least two", id="one-line"),
        pytest.param("time,rate\n0,1\n1,1\n", "header must be", id="bad-header"),
        pytest.param("0,1\n10,x\n", "line 2: publish_rate 'x' is not a number", id="bad-rate"),
        pytest.param("0,1\n10,-3\n", "line 2: publish_rate '-3' must be >= 0", id="negative"),
        pytest.param("0,1\nyesterday,1\n", "line 2: time 'yesterday' is neither", id="bad-time"),
        pytest.param("0,1\n10,1,2,3\n", "line 2: expected time,publish_rate", id="four-cells"),
        pytest.param("10,1\n0,1\n", "times must increase", id="backwards"),
        pytest.param("0,1,0\n10,1,1\n", "line 1: service_seconds '0' must be from",
                     id="zero-service"),
        pytest.param("0,1,1\n10,1,1e6\n", r"line 2: service_seconds '1e6' must be from 1e-06 "
                     r"to 86,400 s \(a day\)", id="service-over-a-day"),
        pytest.param("0,1,1e-320\n10,1,1\n", "line 1: service_seconds '1e-320' must be from",
                     id="service-under-a-microsecond"),
        pytest.param("0,1,1\n10,1,inf\n", "line 2: service_seconds 'inf' is not a finite number",
                     id="infinite-service"),
        pytest.param("0,1,1\n10,1,nan\n", "line 2: service_seconds 'nan' is not a finite number",
                     id="nan-service"),
    ],
)
def test_a_bad_csv_says_where(text: str, words: str) -> None:
    with pytest.raises(sim.TrafficError, match=words):
        sim.traffic_from_csv(text, "t.csv")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        pytest.param("time,publish_rate\n1767225600000,5\n1767225615000,5\n",
                     r"line 2: time '1767225600000' is not seconds .* milliseconds\? divide by "
                     "1,000", id="milliseconds"),
        pytest.param("0,5\n1e30,5\n", "line 2: time '1e30' is not seconds", id="huge"),
        pytest.param("0,5\ninf,5\n", "line 2: time 'inf' is not seconds", id="infinite"),
        pytest.param("2026-01-01T00:00:00Z,5\n2026-01-01T00:00:15Z,5\n2062-01-01T00:00:30Z,5\n",
                     r"span 1,136,073,630 s \(2026-01-01T00:00:00Z to 2062-01-01T00:00:30Z\), "
                     r"more than the 31 days \(2,678,400 s\) a replay covers: a typo in a date\?",
                     id="typo-in-a-year"),
    ],
)
def test_a_csv_spanning_more_than_a_replay_covers_is_refused_at_once(
    text: str, words: str
) -> None:
    with pytest.raises(sim.TrafficError, match=words):
        sim.traffic_from_csv(text, "t.csv")


def test_traffic_spanning_more_than_31_days_is_refused_before_any_second_is_built() -> None:
    from queuescaler.sim.traffic import MAX_REPLAY_SECONDS

    sim.Traffic("t", (0.0, float(MAX_REPLAY_SECONDS)), (1.0, 1.0))  # 31 days: replayed
    with pytest.raises(sim.TrafficError, match="more than the 31 days"):
        sim.Traffic("t", (0.0, MAX_REPLAY_SECONDS + 1.0), (1.0, 1.0))


def test_a_negative_backlog_at_the_start_publishes_nothing_in_the_warm_up() -> None:
    traffic = sim.Traffic("t", (0.0, 60.0), (1.0, 1.0), backlog=(-50.0, 1.0))
    workload = sim.workload_from_traffic(traffic)
    assert min(workload.arrivals) >= 0
    assert not any("the backlog at the start" in note for note in workload.notes)


def test_a_csv_may_start_with_a_utf8_byte_order_mark() -> None:
    traffic = sim.traffic_from_csv("\ufefftime,publish_rate\n0,5\n10,5\n", "t.csv")
    assert traffic.times == (0.0, 10.0) and traffic.publish_rates == (5.0, 5.0)


def test_each_rate_holds_until_the_next_point_and_the_last_for_one_step() -> None:
    traffic = sim.Traffic("t", (100.0, 160.0, 220.0), (0.0, 50.0, 0.0))
    workload = sim.workload_from_traffic(traffic, seed=1)
    warm = sim.WARM_UP
    assert workload.warm_up == warm and workload.duration == 180
    counted = workload.arrivals[warm:]
    assert sum(counted[:60]) == 0
    assert 2_700 < sum(counted[60:120]) < 3_300
    assert sum(counted[120:]) == 0
    assert workload.start == 100.0 - warm


def test_the_warm_up_replays_the_first_rate_uncounted() -> None:
    traffic = sim.Traffic("t", (0.0, 60.0), (5.0, 0.0))
    workload = sim.workload_from_traffic(traffic, seed=1)
    assert 200 < sum(workload.arrivals[: sim.WARM_UP]) < 400  # 5 msg/s for a minute
    assert workload.published == sum(workload.arrivals[sim.WARM_UP :])
    made = sim.estimate_model(sim.Given(service_seconds=0.1))
    run = sim.replay(spec(), workload, made).run(sim.OURS)
    assert len(run.replicas) == len(run.backlog) == workload.duration == 120


def test_arrivals_are_drawn_once_per_seed() -> None:
    traffic = sim.Traffic("t", (0.0, 600.0), (3.0, 3.0))
    one = sim.workload_from_traffic(traffic, seed=1)
    assert one == sim.workload_from_traffic(traffic, seed=1)
    assert one.arrivals != sim.workload_from_traffic(traffic, seed=2).arrivals


def test_the_recorded_backlog_at_the_start_is_published_first_and_gaps_are_told() -> None:
    traffic = sim.Traffic(
        "t", (0.0, 10.0, 20.0, 200.0), (0.0, 0.0, 0.0, 0.0),
        backlog=(250.0, None, 0.0, 0.0), replicas=(2.0, 2.0, None, 1.0),
    )
    workload = sim.workload_from_traffic(traffic)
    warm = sim.WARM_UP
    assert workload.arrivals[warm - 1] == 250 and workload.published == 0
    assert workload.recorded_replicas[:warm] == (None,) * warm
    assert workload.recorded_replicas[warm : warm + 10] == (2.0,) * 10
    assert workload.recorded_replicas[warm + 25] is None
    assert any("250 messages" in note for note in workload.notes)
    assert any("180 s without a recorded point" in note for note in workload.notes)


# --- the worker model --------------------------------------------------------------------------


def test_given_values_win_and_say_so() -> None:
    traffic = sim.Traffic("t", (0.0, 60.0), (1.0, 1.0), per_replica_rates=(4.0, 4.0))
    made = sim.estimate_model(
        sim.Given(service_seconds=2.0, concurrency=4, prefetch=0, pod_start_delay=30.0),
        traffic=traffic,
    )
    assert (made.service_seconds, made.concurrency, made.prefetch, made.pod_start_delay) == (
        2.0, 4, None, 30.0)
    assert {made.origin(k) for k in ("service time", "concurrency", "prefetch",
                                     "pod start delay")} == {"given"}
    assert made.workers(seed=3).prefetch is None


@pytest.mark.parametrize(
    ("traffic", "concurrency", "seconds", "origin"),
    [
        pytest.param(
            sim.Traffic("t", (0.0, 60.0, 120.0), (1.0, 3.0, 0.0),
                        service_seconds=(1.0, 2.0, None),
                        per_replica_rates=(10.0, 10.0, 10.0)),
            None, 1.75, "mean of the traffic's service_seconds", id="service-column-weighted",
        ),
        pytest.param(
            sim.Traffic("t", (0.0, 60.0, 120.0), (1.0, 1.0, 1.0),
                        per_replica_rates=(2.0, None, 8.0)),
            4, 0.5, "concurrency 4 / per-replica rate 8", id="per-replica-rate-latest",
        ),
        pytest.param(sim.Traffic("t", (0.0, 60.0), (1.0, 1.0)), None,
                     sim.DEFAULT_SERVICE_SECONDS, "default", id="nothing-to-go-on"),
    ],
)
def test_the_task_time_is_estimated_from_what_the_traffic_has(
    traffic: sim.Traffic, concurrency: int | None, seconds: float, origin: str
) -> None:
    made = sim.estimate_model(sim.Given(concurrency=concurrency), traffic=traffic)
    assert made.service_seconds == pytest.approx(seconds)
    assert made.origin("service time").startswith(origin) or origin in made.origin("service time")
    assert made.origin("prefetch").startswith("default (not estimated: ")


def test_a_synthetic_trace_brings_its_task_time() -> None:
    made = model()
    assert made.service_seconds == pytest.approx(0.1)
    assert made.origin("service time") == "the trace's (bursts)"


# --- replaying ---------------------------------------------------------------------------------


def test_compare_replays_the_peer_and_the_oracle_on_the_same_work() -> None:
    workload = sim.workload_from_trace(SHORT_BURSTS)
    result = sim.replay(spec(), workload, model(), compare=True)
    assert [run.policy for run in result.runs] == [sim.OURS, sim.KEDA, sim.ORACLE]
    assert result.world == "messages" and result.published == SHORT_BURSTS.published
    ours = result.run(sim.OURS)
    assert sum(count for _, count in ours.scale_reasons) == ours.scale_events > 0
    assert sum(count for _, count in ours.decisions) >= ours.scale_events
    assert {reason for reason, _ in ours.scale_reasons} <= {
        "backlog", "rate", "activation", "idle", "stabilization", "step-limit", "max-bound",
        "min-bound", "cooldown", "busy-workers"}
    for run in result.runs:
        assert 0 <= run.p50_wait <= run.p95_wait
        assert run.replica_hours >= sum(run.replicas) / 3600  # + stopping pods' grace
        assert len(run.replicas) == len(run.backlog) == workload.duration
    assert result.run(sim.ORACLE).p95_wait < ours.p95_wait
    assert result.recorded is None


def test_a_replay_is_deterministic() -> None:
    workload = sim.workload_from_trace(SHORT_BURSTS)
    assert sim.replay(spec(), workload, model()) == sim.replay(spec(), workload, model())


def test_the_fluid_world_folds_concurrency_into_a_replicas_rate() -> None:
    workload = sim.workload_from_trace(steady(rate=40.0, duration=600))
    four_slow = sim.estimate_model(sim.Given(service_seconds=0.4, concurrency=4))
    one_fast = sim.estimate_model(sim.Given(service_seconds=0.1, concurrency=1))
    fluid = [sim.replay(spec(), workload, m, world="fluid").runs for m in (four_slow, one_fast)]
    assert fluid[0] == fluid[1]
    assert sim.choose_world(workload) == "messages"
    assert sim.choose_world(sim.Workload("big", (sim.MESSAGE_LEVEL_LIMIT + 1,))) == "fluid"


@pytest.mark.parametrize(
    ("recorded", "minimum", "start"),
    [
        pytest.param((3.0, 4.0), 0, 3, id="the-recorded-pool"),
        pytest.param((), 0, 2, id="what-the-first-minute-needs"),
        pytest.param((), 5, 5, id="never-below-min"),
        pytest.param((90.0,), 0, 40, id="never-above-max"),
    ],
)
def test_every_pool_starts_where_the_recording_or_the_load_says(
    recorded: tuple[float, ...], minimum: int, start: int
) -> None:
    workload = sim.Workload("w", (20,) * 120, recorded_replicas=recorded)
    made = sim.estimate_model(sim.Given(service_seconds=0.1))  # 20 msg/s x 0.1 s = 2 busy
    assert sim.initial_replicas(spec(minReplicas=minimum), workload, made) == start


def test_the_recorded_pool_is_summed_for_comparison() -> None:
    workload = sim.Workload("w", (0,) * 4, recorded_replicas=(2.0, 2.0, None, 3.0))
    assert sim.recorded(workload) == sim.Recorded(replica_hours=7 / 3600, scale_events=1)


def test_a_spec_the_operator_refuses_is_refused_with_its_words() -> None:
    workload = sim.workload_from_trace(SHORT_BURSTS)
    with pytest.raises(SpecError, match=r"spec.target.messagesPerReplica: must be >= 1"):
        sim.replay(spec(target={"messagesPerReplica": 0}), workload, model())
    with pytest.raises(SpecError, match=r"spec.maxReplicas: is required"):
        recommend({k: v for k, v in spec().items() if k != "maxReplicas"}, workload, model(), 30)


def test_every_named_trace_carries_its_name() -> None:
    assert {name: build().name for name, build in NAMED.items()} == {n: n for n in NAMED}


# --- the search ---------------------------------------------------------------------------------


def test_recommend_finds_the_cheapest_setting_meeting_the_goal_and_patches_only_that() -> None:
    workload = sim.workload_from_trace(SHORT_BURSTS)
    wasteful = spec(target={"messagesPerReplica": 5})  # 20 is cheaper by more than MIN_SAVING
    found = recommend(wasteful, workload, model(), p95_goal=60.0)
    assert dict(found.given.values) == {MESSAGES_PER_REPLICA: 5, DRAIN: None,
                                         STABILIZATION: 300}
    assert len({trial.values for trial in found.tried}) == len(found.tried)
    assert found.best is not None and found.best.meets
    assert found.best.run.p95_wait <= 60.0
    meeting = [t for t in found.tried if t.meets]
    assert found.best.run.replica_hours == min(t.run.replica_hours for t in meeting)
    assert found.best.run.replica_hours <= 0.95 * found.given.run.replica_hours
    expected: dict[str, Any] = {}
    for path, value in found.best.values:
        if value != dict(found.given.values)[path]:
            node = expected.setdefault("spec", {})
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
    assert found.patch == expected != {}
    # the patch merged onto the spec, as kubectl applies it, replays as the setting chosen
    merged = _merge(wasteful, found.patch["spec"])
    again = sim.replay_ours(merged, workload, model(), world=found.world,
                            start=sim.initial_replicas(wasteful, workload, model()))
    assert again == found.best.run


def test_a_spec_meeting_the_goal_is_patched_only_for_a_real_saving(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tuning, "MIN_SAVING", 1.0)  # nothing is 100% cheaper
    workload = sim.workload_from_trace(SHORT_BURSTS)
    found = recommend(spec(), workload, model(), p95_goal=60.0)
    assert found.given.meets and found.best is found.given and found.patch == {}
    assert len(found.tried) > 1


def test_a_goal_no_setting_meets_gives_no_patch_and_the_closest() -> None:
    workload = sim.workload_from_trace(SHORT_BURSTS)
    found = recommend(spec(maxReplicas=2), workload, model(), p95_goal=1.0)
    assert found.best is None and found.patch == {}
    assert found.closest.run.p95_wait == min(t.run.p95_wait for t in found.tried)


def _merge(base: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch (RFC 7386), as `kubectl patch --type merge` applies it."""
    merged = dict(base)
    for key, value in patch.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, dict):
            merged[key] = _merge(dict(merged.get(key) or {}), value)
        else:
            merged[key] = value
    return merged



def test_the_replayed_pool_is_set_against_the_recorded_one_second_by_second() -> None:
    like = sim.likeness((1, 2, 4, 4, 1), (1.0, None, 2.0, 4.0, 1.0))
    assert like == sim.Likeness(mean_difference=0.5, within_one=0.75, late_by=0,
                                within_one_late=0.75, peaks=(4, 4))
    assert sim.likeness((1, 2), (None, None)) is None


STEP_UP_AND_DOWN = (0.0,) * 10 + (5.0,) * 10 + (0.0,) * 20


@pytest.mark.parametrize(
    ("late", "late_by", "share"),
    [
        pytest.param(3, 3, 1.0, id="late by 3 s: matched 3 s earlier"),
        pytest.param(sim.LIKENESS_LAG, sim.LIKENESS_LAG, 1.0, id="late by the most it may be"),
        pytest.param(sim.LIKENESS_LAG + 3, sim.LIKENESS_LAG, 34 / 40, id="later than that"),
        pytest.param(-3, 0, 34 / 40, id="early: not forgiven"),
    ],
)
def test_a_replayed_pool_late_by_a_statistics_interval_matches_taken_that_much_earlier(
    late: int, late_by: int, share: float
) -> None:
    """The replayed arrivals come from a publish rate that is late: the pool that scales the
    same way a few seconds later matches once taken that much earlier."""
    replayed = ((0,) * (10 + late) + (5,) * 10 + (0,) * 30)[:40]
    like = sim.likeness(replayed, STEP_UP_AND_DOWN)
    assert like is not None
    assert like.within_one == (40 - 2 * abs(late)) / 40
    assert (like.late_by, like.within_one_late) == (late_by, share)


def test_a_flapping_pool_does_not_match_at_any_lag() -> None:
    """One lag for the whole recording: a pool that swings through the recorded count does
    not match because it passes near it every few seconds."""
    recorded = tuple(float(2 + 6 * (second // 10 % 2)) for second in range(60))
    flapping = tuple(second % 11 for second in range(60))
    like = sim.likeness(flapping, recorded)
    assert like is not None
    assert like.within_one_late < 0.4


TIMES = tuple(2.0 * point for point in range(12))


def messages(rates: tuple[float, ...], times: tuple[float, ...] = TIMES) -> float:
    spans = [b - a for a, b in itertools.pairwise(times)]
    return sum(rate * span for rate, span in zip(rates, [*spans, spans[-1]], strict=True))


def test_a_burst_the_backlog_saw_first_is_moved_back_to_it_from_the_late_rate() -> None:
    """As recorded on the integration test's run: 200 messages land at once, the rate reads
    0 for three more points, then 40/s for 6 s (240 counted: RabbitMQ's rate overshoots)."""
    rates = (0.0,) * 5 + (40.0,) * 3 + (0.0,) * 4
    backlog = (0.0, 0.0, 200.0, 170.0, 131.0, 91.0, 45.0, 5.0, 0.0, 0.0, 0.0, 0.0)
    timed, notes = publish_rates_timed_by_backlog(TIMES, rates, backlog)
    assert timed == (0.0, 100.0, 0.0, 0.0, 0.0, 0.0, 0.0, 20.0, 0.0, 0.0, 0.0, 0.0)
    assert messages(timed) == messages(rates)
    assert notes == (f"200 messages moved up to {MOVE_HORIZON:g} s earlier, to where the "
                     "backlog grew (a publish rate is measured over time already past)",)


def test_a_burst_on_top_of_steady_traffic_moves_only_the_rates_rise() -> None:
    rates = (10.0,) * 4 + (60.0,) * 2 + (10.0,) * 6
    backlog = (0.0, 0.0, 100.0, 80.0, 60.0, 40.0, 20.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    timed, _ = publish_rates_timed_by_backlog(TIMES, rates, backlog)
    assert timed == (10.0, 50.0, 10.0, 10.0, 20.0, 60.0) + (10.0,) * 6
    assert messages(timed) == messages(rates)


@pytest.mark.parametrize(
    "backlog",
    [
        pytest.param((), id="no backlog series"),
        pytest.param((None,) * 12, id="no backlog points"),
        pytest.param((5.0,) * 12, id="flat: the pool keeps up"),
        pytest.param(tuple(100.0 - 8 * point for point in range(12)), id="draining"),
        pytest.param((0.0, 8.0, None, 30.0) + (0.0,) * 8, id="growth the rate already counts"),
        pytest.param((0.0, 500.0) + (0.0,) * 10, id="a burst in the first interval"),
        pytest.param((5e4,) * 5 + (1e3,) + (5e4,) * 6, id="one queue did not answer, then did"),
        pytest.param((10.0,) * 5 + (1e12,) + (10.0,) * 6, id="one absurd reading"),
    ],
)
def test_rates_the_backlog_does_not_contradict_are_kept_exactly(
    backlog: tuple[float | None, ...]
) -> None:
    """Steady traffic has no rise to move: a dip that recovers, or an absurd reading, moves
    nothing; the first interval's rate seeds the warm-up and is not raised."""
    rates = (10.0,) * 6 + tuple(10.0 - point / 3 for point in range(6))
    assert publish_rates_timed_by_backlog(TIMES, rates, backlog) == (rates, ())


def test_what_the_rate_never_counted_is_not_made_up() -> None:
    rates = (0.0,) * 12
    assert publish_rates_timed_by_backlog(TIMES, rates, (0.0,) * 3 + (600.0,) * 9) == (rates, ())


def test_messages_move_only_from_intervals_ending_within_the_horizon() -> None:
    """A rate that rises 20 s after the growth is not this burst."""
    rates = (0.0,) * 10 + (50.0,) * 2
    backlog = (0.0, 0.0, 100.0) + (100.0,) * 9
    assert publish_rates_timed_by_backlog(TIMES, rates, backlog) == (rates, ())


@pytest.mark.parametrize(
    "times",
    [
        pytest.param((0.0, 15.0, 30.0, 45.0, 60.0, 75.0), id="steps as long as the horizon"),
        pytest.param((0.0, 2.0, 4.0, 3604.0, 3606.0, 3608.0), id="an hour's gap"),
    ],
)
def test_nothing_moves_across_gaps_or_coarse_steps(times: tuple[float, ...]) -> None:
    rates = (0.0, 0.0, 0.0, 40.0, 40.0, 0.0)
    backlog = (0.0, 0.0, 300.0, 300.0, 0.0, 0.0)
    assert publish_rates_timed_by_backlog(times, rates, backlog) == (rates, ())


def test_rounding_moves_nothing_and_says_nothing() -> None:
    """Prometheus' millisecond times and rates filled from the backlog's growth."""
    times = tuple(round(1_700_000_000.123 + 7 * point, 3) for point in range(12))
    backlog = tuple(float(3 * point) for point in range(12))
    rates = tuple(3 / 7 for _ in range(12))
    assert publish_rates_timed_by_backlog(times, rates, backlog) == (rates, ())


def test_an_absurd_rate_is_left_as_recorded() -> None:
    rates = (0.0, 0.0, 1e308, 0.0)
    assert publish_rates_timed_by_backlog(TIMES[:4], rates, (0.0, 0.0, 9.0, 0.0)) == (rates, ())
