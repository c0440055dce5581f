"""The simulator's world, the peers' documented formulas, and the oracle: behaviour only.

Nothing here times anything; `bench/decide.py` measures and prints the comparisons.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from queuescaler.core.sample import QueueSample
from queuescaler.sim.peers import (
    HorizontalPodAutoscaler,
    KedaMessageRatePolicy,
    KedaQueueLengthPolicy,
    WorkerPodAutoscalerPolicy,
)
from queuescaler.sim.simulator import (
    FixedPolicy,
    OraclePolicy,
    Policy,
    QueueScalerPolicy,
    Sampling,
    simulate,
)
from queuescaler.sim.traces import (
    Trace,
    bursts,
    diurnal,
    idle_then_flood,
    keda_rate,
    low_rate,
    slow_spikes,
    standard_traces,
    steady,
)
from queuescaler.sim.workers import MessageWorld, ServiceKind, ServiceTimes, WorkerModel, messages

pytestmark = pytest.mark.unit

SHORT = 600
"""Ten minutes of trace: long enough for a stabilization window, quick to replay."""


def short_traces() -> list[Any]:
    return [
        pytest.param(steady(duration=SHORT), id="steady"),
        pytest.param(diurnal(duration=SHORT, period=SHORT), id="diurnal"),
        pytest.param(bursts(duration=SHORT, first_at=60, every=300), id="bursts"),
        pytest.param(slow_spikes(duration=SHORT, first_at=60, every=300), id="slow-spikes"),
        pytest.param(idle_then_flood(duration=SHORT, idle_seconds=200), id="idle-then-flood"),
    ]


def queuescaler_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": 100,
        "source": {"rabbitmq": {"queue": "work", "connectionSecretRef": {"name": "rabbit"}}},
        "target": {"messagesPerReplica": 10},
    }
    spec.update(overrides)
    return spec


POLICIES: list[Any] = [
    pytest.param(lambda trace: FixedPolicy(2), id="fixed-small"),
    pytest.param(lambda trace: FixedPolicy(40), id="fixed-large"),
    pytest.param(lambda trace: OraclePolicy(trace), id="oracle"),
    pytest.param(lambda trace: KedaQueueLengthPolicy(value=10), id="keda-queue-length"),
    pytest.param(
        lambda trace: KedaMessageRatePolicy(value=trace.service_rate), id="keda-message-rate"
    ),
    pytest.param(
        lambda trace: WorkerPodAutoscalerPolicy(
            target_messages_per_worker=10, seconds_to_process_one_job=1 / trace.service_rate
        ),
        id="worker-pod-autoscaler",
    ),
    pytest.param(lambda trace: QueueScalerPolicy(queuescaler_spec()), id="queuescaler"),
]


class Recorder:
    """A policy that asks for a scripted count and remembers every sample it was shown."""

    def __init__(
        self,
        script: Callable[[float], int],
        *,
        sampling: Sampling | None = None,
        initial_replicas: int = 0,
        removes_idle_first: bool = False,
    ) -> None:
        self.name = "recorder"
        self.sampling = sampling or Sampling(polling_interval=1.0)
        self.initial_replicas = initial_replicas
        self.removes_idle_first = removes_idle_first
        self.seen: list[tuple[float, QueueSample, int]] = []
        self._script = script

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        self.seen.append((now, sample, current))
        return self._script(now)


def one_off(count: int, *, at: int = 0, duration: int = 60, service_rate: float = 1.0) -> Trace:
    arrivals = [0] * duration
    arrivals[at] = count
    return Trace("one-off", tuple(arrivals), service_rate)


# --- the world ---------------------------------------------------------------------------


@pytest.mark.parametrize("make_policy", POLICIES)
@pytest.mark.parametrize("trace", short_traces())
def test_every_message_is_served_or_left(trace: Trace, make_policy: Callable[..., Policy]) -> None:
    result = simulate(trace, make_policy(trace), initial_replicas=2)

    assert result.published == trace.published
    assert result.served + result.left == pytest.approx(trace.published, abs=1e-6)
    assert result.served >= 0 and result.left >= 0


@pytest.mark.parametrize(
    ("replicas", "trace"),
    [
        pytest.param(0, steady(duration=SHORT), id="no-pool"),
        pytest.param(3, bursts(duration=SHORT, first_at=60), id="small-pool"),
        pytest.param(25, slow_spikes(duration=SHORT, first_at=60), id="slow-tasks"),
    ],
)
def test_a_pool_that_never_scales_costs_replicas_times_duration(
    replicas: int, trace: Trace
) -> None:
    result = simulate(trace, FixedPolicy(replicas))

    assert result.replica_seconds == replicas * trace.duration
    assert result.scale_events == 0
    assert set(result.replicas) <= {replicas}


@pytest.mark.parametrize(
    ("count", "service_rate", "p50", "p95"),
    [
        pytest.param(10, 1.0, 4.0, 9.0, id="one-replica-one-per-second"),
        pytest.param(100, 10.0, 4.0, 9.0, id="one-replica-ten-per-second"),
        pytest.param(1, 1.0, 0.0, 0.0, id="nothing-to-wait-for"),
    ],
)
def test_waits_follow_fifo_service(count: int, service_rate: float, p50: float, p95: float) -> None:
    result = simulate(one_off(count, service_rate=service_rate), FixedPolicy(1))

    assert (result.p50_wait, result.p95_wait) == (p50, p95)
    assert result.left == 0


@pytest.mark.parametrize("delay", [pytest.param(0.0, id="instant"), pytest.param(10.0, id="10s")])
def test_new_replicas_serve_only_after_the_pod_start_delay(delay: float) -> None:
    trace = one_off(5, duration=40, service_rate=100.0)
    result = simulate(trace, Recorder(lambda now: 1), pod_start_delay=delay)

    assert result.p95_wait == delay
    assert result.scale_events == 1


def test_a_scale_down_hands_in_flight_messages_back() -> None:
    trace = one_off(10, duration=60, service_rate=0.05)  # 20 s tasks
    blind = simulate(trace, Recorder(lambda now: 10 if now < 5 else 5, initial_replicas=10))
    spare = simulate(
        trace,
        Recorder(lambda now: 10 if now < 5 else 5, initial_replicas=10, removes_idle_first=True),
    )

    assert blind.redelivered == pytest.approx(5)
    assert blind.served + blind.left == pytest.approx(10)
    assert spare.redelivered == pytest.approx(5)  # all ten were busy: no idle one to spare


def test_idle_first_removal_spares_busy_replicas() -> None:
    trace = one_off(4, duration=60, service_rate=0.05)

    def script(now: float) -> int:
        return 10 if now < 5 else 6

    blind = simulate(trace, Recorder(script, initial_replicas=10))
    spare = simulate(trace, Recorder(script, initial_replicas=10, removes_idle_first=True))

    assert blind.redelivered == pytest.approx(4 * 4 / 10)
    assert spare.redelivered == 0


def test_samples_are_as_stale_as_their_source() -> None:
    trace = one_off(50, at=10, duration=30, service_rate=1.0)
    policy = Recorder(
        lambda now: 0, sampling=Sampling(polling_interval=1.0, count_delay=0.0, stats_delay=5.0)
    )
    simulate(trace, policy)
    by_time = {now: sample for now, sample, _ in policy.seen}

    assert by_time[11.0].ready == 50  # AMQP: the next second already shows the burst
    assert by_time[11.0].publish_rate == 0.0  # the management API has not seen it yet
    assert by_time[16.0].publish_rate == pytest.approx(50 / 5)
    assert by_time[3.0].publish_rate is None  # no full rate window yet


def test_the_policy_is_asked_at_its_polling_interval() -> None:
    policy = Recorder(lambda now: 0, sampling=Sampling(polling_interval=15.0))
    simulate(steady(duration=100), policy)

    assert [now for now, _, _ in policy.seen] == [0.0, 15.0, 30.0, 45.0, 60.0, 75.0, 90.0]


# --- the oracle --------------------------------------------------------------------------


@pytest.mark.parametrize("trace", short_traces())
def test_the_oracle_never_waits_longer_than_a_fixed_small_pool(trace: Trace) -> None:
    oracle = simulate(trace, OraclePolicy(trace))
    small = simulate(trace, FixedPolicy(2))

    assert oracle.p95_wait <= small.p95_wait
    assert oracle.p95_wait == 0.0


@pytest.mark.parametrize("make_policy", POLICIES)
@pytest.mark.parametrize("trace", short_traces())
def test_no_policy_that_never_keeps_a_message_waiting_is_cheaper_than_the_oracle(
    trace: Trace, make_policy: Callable[..., Policy]
) -> None:
    oracle = simulate(trace, OraclePolicy(trace))
    other = simulate(trace, make_policy(trace), initial_replicas=oracle.replicas[0])

    if other.mean_wait == 0.0:
        assert oracle.replica_seconds <= other.replica_seconds
    else:
        assert oracle.mean_wait < other.mean_wait


class OneReplicaLess:
    """The oracle's plan with one replica fewer during one second: any cheaper plan."""

    def __init__(self, oracle: OraclePolicy, second: int) -> None:
        self.name = "oracle-less-one"
        self.sampling = oracle.sampling
        self.removes_idle_first = True
        self.initial_replicas = oracle.initial_replicas - (second == 0)
        self._oracle = oracle
        self._second = second

    def desired(self, sample: QueueSample, current: int, now: float) -> int:
        wanted = self._oracle.desired(sample, current, now)
        return wanted - 1 if int(now) == self._second else wanted


@pytest.mark.parametrize(
    "trace",
    [
        pytest.param(
            bursts(base=2, burst_rate=50, burst_seconds=20, every=60, first_at=30, duration=120),
            id="fast-tasks",
        ),
        pytest.param(
            slow_spikes(base=0.5, spike_messages=20, every=60, first_at=30, duration=120),
            id="slow-tasks",
        ),
    ],
)
def test_every_replica_second_the_oracle_pays_for_is_needed(trace: Trace) -> None:
    # The oracle's pool at t is the most replicas busy at any second of [t, t + delay]:
    # a pod needed then must have been asked for by t. One replica fewer at any second
    # makes some message wait, or takes a task from a busy replica (redelivered, its work
    # lost), so no plan is cheaper at zero wait: the oracle is a fair lower bound.
    paid = simulate(trace, OraclePolicy(trace)).replicas

    for second, size in enumerate(paid):
        if size:
            fewer = simulate(trace, OneReplicaLess(OraclePolicy(trace), second))
            assert fewer.mean_wait > 0.0 or fewer.redelivered > 0.0, f"second {second}"


def test_the_oracle_asks_for_replicas_a_start_delay_ahead() -> None:
    trace = one_off(30, at=40, duration=60, service_rate=1.0)
    oracle = OraclePolicy(trace, pod_start_delay=10.0)
    result = simulate(trace, oracle, pod_start_delay=10.0)

    assert result.replicas[29] == 0
    assert result.replicas[30] == 30
    assert result.p95_wait == 0.0


def test_a_capped_oracle_runs_the_full_pool_while_a_backlog_remains() -> None:
    trace = one_off(300, at=20, duration=120, service_rate=0.2)  # 1,500 replica-seconds of work
    result = simulate(trace, OraclePolicy(trace, max_replicas=100))

    assert max(result.replicas) == 100
    assert result.replicas[20:30] == (100,) * 10
    assert result.p95_wait == 10.0  # three waves of 100 five-second tasks
    assert result.left == pytest.approx(0, abs=1e-6)


# --- the HPA, per its documented defaults --------------------------------------------------


def hpa_sync(hpa: HorizontalPodAutoscaler, metric: float, current: int, now: float) -> int:
    return hpa.recommend(metric, 10.0, current, now)


def test_hpa_does_not_scale_down_within_300s_of_a_higher_recommendation() -> None:
    hpa = HorizontalPodAutoscaler(min_replicas=1, max_replicas=100)
    replicas = hpa_sync(hpa, 100.0, 10, 0.0)  # 10 per replica: a recommendation of 10
    held = []
    for now in range(15, 300, 15):
        replicas = hpa_sync(hpa, 10.0, replicas, float(now))
        held.append(replicas)

    assert set(held) == {10}
    assert hpa_sync(hpa, 10.0, replicas, 300.0) == 1


@pytest.mark.parametrize(
    ("metric", "current", "expected"),
    [
        pytest.param(105.0, 10, 10, id="within-tolerance-above"),
        pytest.param(91.0, 10, 10, id="within-tolerance-below"),
        pytest.param(120.0, 10, 12, id="beyond-tolerance"),
        pytest.param(0.0, 0, 0, id="disabled-at-zero"),
    ],
)
def test_hpa_tolerance(metric: float, current: int, expected: int) -> None:
    hpa = HorizontalPodAutoscaler(min_replicas=1, max_replicas=100)

    assert hpa_sync(hpa, metric, current, 0.0) == expected


@pytest.mark.parametrize(
    ("current", "limit"),
    [
        pytest.param(1, 5, id="four-pods-beat-doubling"),
        pytest.param(3, 7, id="four-pods-beat-doubling-of-three"),
        pytest.param(10, 20, id="doubling-beats-four-pods"),
    ],
)
def test_hpa_scale_up_is_the_larger_of_100_percent_and_4_pods_per_15s(
    current: int, limit: int
) -> None:
    hpa = HorizontalPodAutoscaler(min_replicas=1, max_replicas=1000)

    first = hpa_sync(hpa, 10_000.0, current, 0.0)
    again = hpa_sync(hpa, 10_000.0, first, 10.0)  # same 15 s period: no further room
    later = hpa_sync(hpa, 10_000.0, again, 15.0)

    assert first == limit
    assert again == limit
    assert later > limit


# --- KEDA ----------------------------------------------------------------------------------


def sample(ready: int = 0, unacked: int = 0, publish_rate: float | None = None) -> QueueSample:
    return QueueSample(
        ready=ready, unacked=unacked, consumers=0, taken_at=0.0, publish_rate=publish_rate
    )


def test_keda_wakes_from_zero_only_at_its_own_polling_interval() -> None:
    keda = KedaQueueLengthPolicy(value=10)
    assert keda.desired(sample(), 0, 0.0) == 0
    assert keda.desired(sample(ready=50), 0, 15.0) == 0  # an HPA sync: the HPA is off at zero
    assert keda.desired(sample(ready=50), 0, 30.0) == 1  # KEDA's poll activates


def test_keda_scales_to_zero_only_after_the_cooldown_period() -> None:
    keda = KedaQueueLengthPolicy(value=10)
    assert keda.desired(sample(ready=5), 1, 0.0) == 1
    replicas = [keda.desired(sample(), 1, float(now)) for now in range(15, 300, 15)]

    assert set(replicas) == {1}
    assert keda.desired(sample(), 1, 300.0) == 0


@pytest.mark.parametrize(
    ("policy", "metric_sample", "expected"),
    [
        pytest.param(
            KedaQueueLengthPolicy(value=10), sample(ready=150, unacked=50), 20, id="queue-length"
        ),
        pytest.param(
            KedaMessageRatePolicy(value=5), sample(publish_rate=42.0), 9, id="message-rate"
        ),
    ],
)
def test_keda_modes_feed_their_metric_to_the_hpa(
    policy: KedaQueueLengthPolicy | KedaMessageRatePolicy,
    metric_sample: QueueSample,
    expected: int,
) -> None:
    policy.desired(sample(ready=1, publish_rate=1.0), 4, 0.0)  # first KEDA poll: active

    assert policy.desired(metric_sample, 10, 15.0) == expected


# --- worker-pod-autoscaler, per its README ----------------------------------------------------


@pytest.mark.parametrize(
    ("options", "ready", "publish_rate", "current", "expected"),
    [
        pytest.param({}, 90, 0.0, 1, 5, id="backlog-over-target"),
        pytest.param(
            {"seconds_to_process_one_job": 0.5}, 0, 5.0, 1, 3, id="rpm-floor-readme-example"
        ),
        pytest.param(
            {"max_disruption": "50%", "max_replicas": 1000}, 0, 0.0, 500, 250, id="disruption-%"
        ),
        pytest.param(
            {"max_disruption": "125", "max_replicas": 1000}, 0, 0.0, 500, 375, id="disruption-pods"
        ),
        pytest.param({"max_replicas": 10}, 1000, 0.0, 1, 10, id="max-bound"),
    ],
)
def test_worker_pod_autoscaler_formula(
    options: dict[str, Any], ready: int, publish_rate: float, current: int, expected: int
) -> None:
    wpa = WorkerPodAutoscalerPolicy(target_messages_per_worker=20, **options)

    assert wpa.desired(sample(ready=ready, publish_rate=publish_rate), current, 0.0) == expected


# --- queuescaler inside the simulator ---------------------------------------------------------


def test_queuescaler_sees_ready_live_and_rates_late() -> None:
    policy = QueueScalerPolicy(queuescaler_spec(pollingIntervalSeconds=5))

    assert policy.sampling == Sampling(polling_interval=5.0, count_delay=0.0, stats_delay=5.0)
    assert policy.initial_replicas == 0


def test_queuescaler_in_dry_run_never_scales() -> None:
    policy = QueueScalerPolicy(queuescaler_spec(dryRun=True))
    result = simulate(bursts(duration=SHORT, first_at=60), policy, initial_replicas=1)

    assert result.scale_events == 0


def test_the_fast_path_wakes_a_flood_within_a_peek_not_a_polling_interval() -> None:
    flood = idle_then_flood(duration=SHORT, idle_seconds=200)
    spec = queuescaler_spec(pollingIntervalSeconds=15)
    peeking = simulate(flood, QueueScalerPolicy(spec, peek_every=1.0), initial_replicas=0)
    polling = simulate(flood, QueueScalerPolicy(spec), initial_replicas=0)

    def woke(replicas: tuple[int, ...]) -> int:
        return next(t for t, n in enumerate(replicas) if n > 0)

    assert woke(peeking.replicas) <= 201
    assert woke(polling.replicas) >= 210, "the sample at the interval: 210 is the first after"


def test_between_samples_the_fast_path_only_grows() -> None:
    trace = bursts(duration=SHORT, first_at=60, every=300)
    policy = QueueScalerPolicy(queuescaler_spec(pollingIntervalSeconds=15), peek_every=1.0)
    replicas = simulate(trace, policy, initial_replicas=1).replicas

    shrank = [t for t in range(1, len(replicas)) if replicas[t] < replicas[t - 1]]
    grew_between = [t for t in range(1, len(replicas))
                    if replicas[t] > replicas[t - 1] and t % 15]
    assert shrank and all(t % 15 == 0 for t in shrank), shrank
    assert grew_between, "a burst is acted on before the next sample"


def test_early_decisions_see_what_an_amqp_peek_gives_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # review: the early sample kept the management API's rates and counters, which the
    # engine's peek never has (the rate floor and the drain policy then answered early)
    import queuescaler.sim.simulator as simulator

    seen: list[QueueSample] = []
    real = simulator.decide

    def recording(*args: Any, **kwargs: Any) -> Any:
        sample = args[1]
        if sample is not None and not sample.complete:
            seen.append(sample)
        return real(*args, **kwargs)

    monkeypatch.setattr(simulator, "decide", recording)
    trace = bursts(duration=SHORT, first_at=60, every=300)
    simulate(trace, QueueScalerPolicy(queuescaler_spec(), peek_every=1.0), initial_replicas=1)
    assert seen, "the bursts are decided early"
    assert all(
        s.unacked == 0 and s.publish_rate is None and s.ack_rate is None
        and s.published_total is None and s.acked_total is None for s in seen
    )


DEFAULTS_SPEC: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
    "minReplicas": 1, "maxReplicas": 200,
    "source": {"rabbitmq": {"queue": "q", "connectionSecretRef": {"name": "r"}}},
}
"""The CRD's defaults (messagesPerReplica 10), which bench/decide.py does not run."""


@pytest.mark.parametrize(("stats_delay", "seed"), [(5.0, 4), (5.0, 6), (15.0, 1), (60.0, 2),
                                                   (60.0, 5)])
def test_a_steady_pool_never_measured_does_not_flap(stats_delay: float, seed: int) -> None:
    # review: probe a quarter down, fall behind, scale to the backlog, drain it before two
    # polls saw work waiting, probe again: ~110 scale events an hour for ever
    policy = QueueScalerPolicy(DEFAULTS_SPEC, stats_delay=stats_delay, peek_every=1.0)
    result = simulate(steady(seed=seed), policy, initial_replicas=10, measure_from=300)
    assert result.scale_events <= 10, (result.scale_events, result.p95_wait)


def test_a_steady_load_does_not_flap_on_rate_noise() -> None:
    # review: 40 replicas of 5 s tasks held by the rate floor on a publish rate read off
    # 40 messages: a dip of 10 replicas is chance, not a drained burst
    trace = steady(rate=8.0, service_rate=0.2, duration=3600, seed=7)
    policy = QueueScalerPolicy(DEFAULTS_SPEC, stats_delay=5.0, peek_every=1.0)
    result = simulate(trace, policy, initial_replicas=40, measure_from=600)
    assert result.scale_events <= 4, (result.scale_events, result.p95_wait)


# --- traces -------------------------------------------------------------------------------


def test_traces_are_reproducible() -> None:
    first = standard_traces()
    again = standard_traces()

    assert first == again
    assert [t.name for t in first] == [
        "steady",
        "diurnal",
        "bursts",
        "slow-spikes",
        "idle-then-flood",
    ]
    assert all(t.duration == 3600 for t in first)


def test_a_different_seed_gives_a_different_trace() -> None:
    assert steady(seed=1).arrivals != steady(seed=2).arrivals


@pytest.mark.parametrize(
    ("trace", "quiet", "busy"),
    [
        pytest.param(bursts(), range(0, 300), range(300, 360), id="bursts"),
        pytest.param(idle_then_flood(), range(0, 1800), range(1800, 2400), id="idle-then-flood"),
    ],
)
def test_traces_have_their_shape(trace: Trace, quiet: range, busy: range) -> None:
    quiet_mean = sum(trace.arrivals[s] for s in quiet) / len(quiet)
    busy_mean = sum(trace.arrivals[s] for s in busy) / len(busy)

    assert busy_mean > 10 * max(quiet_mean, 1.0)


@pytest.mark.parametrize("trace", short_traces())
def test_our_defaults_beat_keda_queue_length_on_wait_and_cost(trace: Trace) -> None:
    """The comparison above holds for any policy that waits; this one says ours does well:
    on every short trace, both less waiting and fewer replica-seconds than KEDA's
    QueueLength scaler under the HPA's defaults, from the oracle's starting pool."""
    start = simulate(trace, OraclePolicy(trace)).replicas[0]
    ours = simulate(trace, QueueScalerPolicy(queuescaler_spec()), initial_replicas=start)
    keda = simulate(trace, KedaQueueLengthPolicy(value=10), initial_replicas=start)

    assert ours.p95_wait <= keda.p95_wait
    assert ours.replica_seconds <= keda.replica_seconds


# --- real workers: prefetch, concurrency, uneven tasks (issue 12) ---------------------------


def worker_model(**options: Any) -> WorkerModel:
    """Constant tasks unless told otherwise: the tests below count messages exactly."""
    options.setdefault("service", ServiceTimes(ServiceKind.CONSTANT))
    return WorkerModel(**options)


def seen_at(policy: Recorder) -> dict[float, QueueSample]:
    return {now: sample for now, sample, _ in policy.seen}


@pytest.mark.parametrize(
    ("prefetch", "concurrency", "held"),
    [
        pytest.param(1, 1, 1, id="prefetch-1"),
        pytest.param(4, 1, 4, id="prefetch-4"),
        pytest.param(4, 4, 16, id="prefetch-4-concurrency-4"),
        pytest.param(None, 1, 30, id="unlimited"),
    ],
)
def test_a_worker_holds_up_to_prefetch_times_concurrency_unacked(
    prefetch: int | None, concurrency: int, held: int
) -> None:
    trace = one_off(30, duration=20, service_rate=0.05)  # 20 s tasks: nothing ends here
    policy = Recorder(lambda now: 1, initial_replicas=1)
    result = simulate(
        trace, policy, workers=worker_model(prefetch=prefetch, concurrency=concurrency)
    )
    sample = seen_at(policy)[5.0]

    assert sample.unacked == held  # in progress + parked
    assert sample.ready == 30 - held
    assert sample.consumers == 1
    assert result.p50_wait > 0  # only `concurrency` of them started: the rest wait


def test_parked_messages_go_back_to_the_queue_when_a_worker_stops() -> None:
    trace = one_off(8, duration=60, service_rate=0.05)  # 20 s tasks
    policy = Recorder(lambda now: 2 if now < 5 else 1, initial_replicas=2)
    result = simulate(trace, policy, workers=worker_model(prefetch=4))
    samples = seen_at(policy)

    assert (samples[4.0].ready, samples[4.0].unacked) == (0, 8)  # two workers, 4 each
    # The stopped worker's 3 parked messages are back; the kept one has no room for them.
    assert (samples[6.0].ready, samples[6.0].unacked, samples[6.0].consumers) == (3, 5, 1)
    assert result.redelivered == 3
    assert result.cut_short == 0  # its task in progress ended within the grace period
    # Stopped at 5, its task (published within second 0) done 20 s after it arrived.
    assert result.grace_seconds == pytest.approx(15.0, abs=1.0)
    assert result.replica_seconds == pytest.approx(5 * 2 + 55 * 1 + result.grace_seconds)


def test_a_task_outliving_the_grace_period_is_cut_short_and_requeued() -> None:
    trace = one_off(2, duration=120, service_rate=1 / 50)  # 50 s tasks
    policy = Recorder(lambda now: 2 if now < 5 else 1, initial_replicas=2)
    result = simulate(trace, policy, workers=worker_model(grace_period=30.0))

    assert result.cut_short == 1
    assert result.redelivered == 1
    assert result.grace_seconds == pytest.approx(30.0)
    assert result.served == 2  # the kept worker runs it again after its own task
    assert result.left == 0


def test_statistics_lag_shows_in_unacked_while_ready_and_consumers_are_live() -> None:
    trace = one_off(10, at=10, duration=30, service_rate=0.02)
    policy = Recorder(
        lambda now: 1,
        sampling=Sampling(polling_interval=1.0, count_delay=0.0, stats_delay=5.0),
        initial_replicas=1,
    )
    simulate(trace, policy, workers=worker_model(prefetch=None))
    samples = seen_at(policy)

    # With no prefetch limit the broker pushes all ten to the one consumer at once: the
    # live `ready` is empty and `unacked` still shows the management API's older view.
    assert (samples[11.0].ready, samples[11.0].unacked, samples[11.0].consumers) == (0, 0, 1)
    assert samples[15.0].unacked == 0
    assert samples[16.0].unacked == 10
    assert samples[16.0].publish_rate == pytest.approx(10 / 5)


def test_the_sample_carries_the_cumulative_counters_as_old_as_the_rates() -> None:
    trace = one_off(10, at=2, duration=30, service_rate=1.0)
    policy = Recorder(
        lambda now: 10,
        sampling=Sampling(polling_interval=1.0, stats_delay=5.0),
        initial_replicas=10,
    )
    simulate(trace, policy, workers=worker_model())
    samples = seen_at(policy)

    assert (samples[20.0].published_total, samples[20.0].acked_total) == (10, 10)
    assert samples[7.0].published_total == 0  # the burst at 2 is not in 5 s old statistics
    assert samples[8.0].published_total == 10


def test_concurrency_serves_several_messages_per_replica_at_once() -> None:
    trace = one_off(8, duration=30, service_rate=0.1)  # 10 s tasks
    one = simulate(trace, FixedPolicy(1), workers=worker_model(concurrency=1, prefetch=1))
    four = simulate(trace, FixedPolicy(1), workers=worker_model(concurrency=4, prefetch=1))

    assert one.served == 2  # at 10 s and 20 s
    assert four.served == 8  # four at 10 s, four at 20 s
    assert four.p95_wait == pytest.approx(10.0, abs=1.0)


@pytest.mark.parametrize(
    "service",
    [
        pytest.param(ServiceTimes(ServiceKind.EXPONENTIAL), id="exponential"),
        pytest.param(ServiceTimes(ServiceKind.LOGNORMAL, 1.5), id="lognormal"),
        pytest.param(ServiceTimes(ServiceKind.PARETO, 2.5), id="pareto"),
    ],
)
def test_arrivals_and_service_times_are_reproducible_and_keep_the_trace_mean(
    service: ServiceTimes,
) -> None:
    trace = steady(rate=50.0, service_rate=2.0, duration=400, seed=7)
    arrivals, services = messages(trace, service, 3)
    again = messages(Trace(trace.name, tuple(trace.arrivals), trace.service_rate), service, 3)
    other = messages(trace, service, 4)

    assert (arrivals, services) == again
    assert arrivals != other[0]
    assert len(arrivals) == trace.published
    assert list(arrivals) == sorted(arrivals)
    assert all(int(at) < trace.duration for at in arrivals)
    assert sum(services) / len(services) == pytest.approx(0.5, rel=0.15)


def test_poisson_arrivals_with_a_seed_replay_the_same_run() -> None:
    model = WorkerModel(prefetch=4, concurrency=4, service=ServiceTimes(), start_delay=(10, 30))
    runs = [
        simulate(
            bursts(duration=SHORT, first_at=60, every=300, seed=9),
            QueueScalerPolicy(queuescaler_spec(target={"messagesPerReplica": 400})),
            workers=model,
            initial_replicas=1,
        )
        for _ in range(2)
    ]

    assert runs[0] == runs[1]
    assert runs[0].published == bursts(duration=SHORT, first_at=60, every=300, seed=9).published


def test_pods_start_within_the_start_delay_range() -> None:
    trace = one_off(0, duration=60)
    policy = Recorder(
        lambda now: 20,
        sampling=Sampling(polling_interval=1.0),
    )
    simulate(trace, policy, workers=worker_model(start_delay=(10.0, 30.0)))
    consumers = {now: sample.consumers for now, sample, _ in policy.seen}

    assert consumers[10.0] == 0
    assert 0 < consumers[20.0] < 20
    assert consumers[31.0] == 20


WORKER_MODELS: list[Any] = [
    pytest.param(WorkerModel(), id="prefetch-1"),
    pytest.param(WorkerModel(prefetch=16, concurrency=4, seed=2), id="prefetch-16-c4"),
    pytest.param(
        WorkerModel(prefetch=None, service=ServiceTimes(ServiceKind.LOGNORMAL), seed=3),
        id="unlimited-heavy",
    ),
]


@pytest.mark.parametrize("model", WORKER_MODELS)
@pytest.mark.parametrize("make_policy", POLICIES)
def test_every_message_is_served_or_left_with_real_workers(
    model: WorkerModel, make_policy: Callable[..., Policy]
) -> None:
    trace = slow_spikes(duration=SHORT, first_at=60, every=300, spike_messages=60)
    result = simulate(trace, make_policy(trace), initial_replicas=2, workers=model)

    assert result.published == trace.published
    assert result.served + result.left == trace.published
    assert result.cut_short <= result.redelivered


def test_the_oracle_of_real_workers_pays_for_the_work_a_start_delay_ahead() -> None:
    trace = one_off(40, at=40, duration=80, service_rate=0.1)  # 400 task-seconds at 40
    model = worker_model(concurrency=4)
    oracle = OraclePolicy(trace, pod_start_delay=10.0, workers=model)
    result = simulate(trace, oracle, pod_start_delay=10.0, workers=model)

    # The work of each second, rounded up: second 40 holds part of it (the messages come in
    # over that second), seconds 41 to 49 all of it (40 tasks, 4 per replica), 50 the rest.
    assert result.replicas[29] == 0
    assert 0 < result.replicas[30] < 10
    assert result.replicas[31:50] == (10,) * 19
    assert result.replicas[30] + result.replicas[50] in (10, 11)  # the two halves of a second
    assert result.replicas[51] == 0
    assert result.p95_wait <= 1.0  # a burst's second is met by its average: a second at most
    # At 50 it lets replicas go while their last tasks still run: they finish within the
    # second, paid for as they stop.
    assert 0 < result.grace_seconds <= 6.0
    assert result.replica_seconds == sum(result.replicas) + result.grace_seconds


def test_a_warm_up_is_replayed_but_not_counted() -> None:
    trace = steady(duration=200)
    whole = simulate(trace, FixedPolicy(12), workers=WorkerModel())
    measured = simulate(trace, FixedPolicy(12), workers=WorkerModel(), measure_from=100)
    fluid = simulate(trace, FixedPolicy(12), measure_from=100)

    assert measured.replica_seconds == 12 * 100
    assert whole.replica_seconds == 12 * 200
    assert fluid.replica_seconds == 12 * 100
    assert measured.served == whole.served


def test_new_traces_have_their_rates() -> None:
    trickle = low_rate(duration=3000, seed=1)
    metronome = keda_rate(duration=100)

    assert trickle.published / trickle.duration == pytest.approx(0.2, rel=0.2)
    assert 1 / trickle.service_rate == 8.0
    assert metronome.arrivals[:4] == (5, 0, 5, 0)
    assert metronome.service_rate == 1.0


def test_queuescaler_spares_busy_workers_as_its_protection_does() -> None:
    # protectBusyWorkers (the default): the pods holding the fewest messages go first (the
    # pod-deletion-cost it sets), and the pool never shrinks below the consumers the channel
    # listing shows busy (the message-level world tells it, as old as the statistics)
    blind_spec = queuescaler_spec(behavior={"scaleDown": {"protectBusyWorkers": False}})
    assert QueueScalerPolicy(queuescaler_spec()).removes_idle_first
    assert not QueueScalerPolicy(blind_spec).removes_idle_first
    idle = QueueSample(ready=0, unacked=0, consumers=6, taken_at=0.0)
    assert QueueScalerPolicy(queuescaler_spec()).desired(idle, 6, 0.0) == 0
    assert QueueScalerPolicy(queuescaler_spec()).desired(idle, 6, 0.0, busy_workers=3) == 3
    assert QueueScalerPolicy(blind_spec).desired(idle, 6, 0.0, busy_workers=3) == 0


def test_the_busy_consumers_are_recorded_each_second() -> None:
    trace = one_off(2, at=3, duration=30, service_rate=0.05)  # 20 s tasks
    world = MessageWorld(trace, worker_model(), pod_start_delay=0.0, initial_replicas=4)
    for now in range(10):
        world.advance(now)
        world.record()

    assert [world.busy_seen(t) for t in (0, 3, 4, 9, 50)] == [0, 0, 2, 2, 2]
    assert world.busy_seen(-5) == 0
