"""The Metrics class on fake ticks: names, labels, values, forgetting, and no secrets in labels.

The ticks are built from the real pieces the engine passes (a Scaler from the registry, a
QueueSample, a Decision, conditions from `conditions_for`), without an engine or a server.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from queuescaler import __version__
from queuescaler.core.decision import Decision, Reason, ScalerState
from queuescaler.core.plan import Plan
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SourceError
from queuescaler.core.status import Condition, conditions_for
from queuescaler.endpoints import make_app
from queuescaler.fleet import Fleet, Scaler
from queuescaler.metrics import SAMPLE_ERROR_KINDS, SCALER, Metrics

pytestmark = pytest.mark.unit

NOW = 1_700_000_000.0
SECRET_URL = "amqp://admin:s3cret@rabbit.example:5672/prod"


def make_scaler(namespace: str = "media", name: str = "thumbnails", **spec: Any) -> Scaler:
    body = {
        "metadata": {"namespace": namespace, "name": name, "uid": f"uid-{name}", "generation": 1},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "w"},
            "minReplicas": 0,
            "maxReplicas": 20,
            "source": {"rabbitmq": {"queue": "thumbs", "connectionSecretRef": {"name": "rmq"}}},
            "target": {"messagesPerReplica": 10},
            **spec,
        },
    }
    scaler = Fleet().upsert(body, NOW)
    assert scaler.spec is not None, scaler.spec_error
    return scaler


def observe(
    metrics: Metrics,
    scaler: Scaler,
    sample: QueueSample | None,
    decision: Decision | None,
    current: int | None,
    conditions: list[Condition],
) -> None:
    """One tick as the engine records it: a plan that held at `current`."""
    memory = replace(scaler.memory, current_replicas=current)
    metrics.record(scaler, Plan(
        memory=memory, decision=decision, sample=sample, previous_replicas=current,
        conditions=conditions,
    ))


def make_sample(**overrides: Any) -> QueueSample:
    values: dict[str, Any] = {
        "ready": 120, "unacked": 8, "consumers": 2, "taken_at": NOW,
        "publish_rate": 30.0, "ack_rate": 12.5, "deliver_rate": 13.0,
        "consumer_utilisation": 0.75,
    }
    values.update(overrides)
    return QueueSample(**values)


def make_decision(replicas: int, reason: Reason = Reason.BACKLOG, **overrides: Any) -> Decision:
    values: dict[str, Any] = {
        "replicas": replicas, "reason": reason, "message": "because", "recommendation": replicas,
        "limited": False,
    }
    values.update(overrides)
    return Decision(**values)


def healthy(decision: Decision | None, current: int | None) -> list[Condition]:
    return conditions_for(
        paused=False, dry_run=False, broker_error=None, target_error=None, config_error=None,
        decision=decision, current_replicas=current,
    )


def unreachable(decision: Decision | None, current: int | None) -> list[Condition]:
    return conditions_for(
        paused=False, dry_run=False, broker_error=("Unreachable", f"{SECRET_URL} refused"),
        target_error=None, config_error=None, decision=decision, current_replicas=current,
    )


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def of(scaler: Scaler, **extra: str) -> dict[str, str]:
    return {"scaler_namespace": scaler.namespace, "scaler": scaler.name, **extra}


def all_samples(metrics: Metrics) -> Iterator[tuple[str, dict[str, str]]]:
    for family in metrics.registry.collect():
        for sample in family.samples:
            yield sample.name, dict(sample.labels)


@pytest.fixture
def metrics() -> Metrics:
    return Metrics(process=False)


@pytest.fixture
def ticked(metrics: Metrics) -> tuple[Metrics, Scaler]:
    """One healthy tick that scaled from 2 to 13 replicas."""
    scaler = make_scaler()
    scaler.memory = replace(scaler.memory, state=ScalerState(
        last_scale_time=NOW - 30, consecutive_failures=0, per_replica_rate=6.25))
    decision = make_decision(13, recommendation=15, limited=True)
    observe(metrics, scaler, make_sample(), decision, 2, healthy(decision, 2))
    metrics.scaled(scaler, "up")
    return metrics, scaler


@pytest.mark.parametrize(
    ("name", "extra", "expected"),
    [
        pytest.param("queuescaler_scaler_info", {"source": "rabbitmq"}, 1, id="source-kind"),
        pytest.param("queuescaler_backlog_messages", {"state": "ready"}, 120, id="backlog-ready"),
        pytest.param("queuescaler_backlog_messages", {"state": "unacked"}, 8,
                     id="backlog-unacked"),
        pytest.param("queuescaler_consumers", {}, 2, id="consumers"),
        pytest.param("queuescaler_publish_rate", {}, 30.0, id="publish-rate"),
        pytest.param("queuescaler_ack_rate", {}, 12.5, id="ack-rate"),
        pytest.param("queuescaler_deliver_rate", {}, 13.0, id="deliver-rate"),
        pytest.param("queuescaler_consumer_utilisation", {}, 0.75, id="consumer-utilisation"),
        pytest.param("queuescaler_last_sample_timestamp_seconds", {}, NOW, id="last-sample-time"),
        pytest.param("queuescaler_min_replicas", {}, 0, id="min-replicas"),
        pytest.param("queuescaler_max_replicas", {}, 20, id="max-replicas"),
        pytest.param("queuescaler_messages_per_replica", {}, 10, id="messages-per-replica"),
        pytest.param("queuescaler_paused", {}, 0, id="not-paused"),
        pytest.param("queuescaler_dry_run", {}, 0, id="not-dry-run"),
        pytest.param("queuescaler_desired_replicas", {}, 13, id="desired"),
        pytest.param("queuescaler_recommended_replicas", {}, 15, id="recommended"),
        pytest.param("queuescaler_current_replicas", {}, 2, id="current"),
        pytest.param("queuescaler_decisions_total", {"direction": "up", "reason": "backlog"}, 1,
                     id="decision-counted-by-direction-and-reason"),
        pytest.param("queuescaler_scale_events_total", {"direction": "up"}, 1,
                     id="scale-up-counted"),
        pytest.param("queuescaler_scale_events_total", {"direction": "down"}, 0,
                     id="scale-down-exists-at-zero"),
        pytest.param("queuescaler_last_scale_timestamp_seconds", {}, NOW - 30,
                     id="last-scale-time"),
        pytest.param("queuescaler_scaling_limited", {}, 1, id="limited"),
        pytest.param("queuescaler_fallback_active", {}, 0, id="no-fallback"),
        pytest.param("queuescaler_per_replica_rate", {}, 6.25, id="per-replica-rate"),
        pytest.param("queuescaler_consecutive_failures", {}, 0, id="no-failures"),
        pytest.param("queuescaler_condition", {"condition": "Ready"}, 1, id="ready-condition"),
        pytest.param("queuescaler_condition", {"condition": "BrokerReachable"}, 1,
                     id="broker-reachable-condition"),
        pytest.param("queuescaler_condition", {"condition": "Paused"}, 0,
                     id="paused-condition"),
        pytest.param("queuescaler_scaler_ticks_total", {}, 1, id="ticks-counted"),
        pytest.param("queuescaler_scaler_sample_failures_total", {}, 0,
                     id="sample-failures-exist-at-zero"),
    ],
)
def test_a_tick_sets_every_per_scaler_series(
    ticked: tuple[Metrics, Scaler], name: str, extra: dict[str, str], expected: float
) -> None:
    metrics, scaler = ticked
    assert value(metrics, name, **of(scaler, **extra)) == expected


@pytest.mark.parametrize(
    ("current", "desired", "direction"),
    [
        pytest.param(3, 5, "up", id="more-is-up"),
        pytest.param(5, 3, "down", id="fewer-is-down"),
        pytest.param(4, 4, "hold", id="same-is-hold"),
        pytest.param(None, 4, "hold", id="unknown-current-is-hold"),
    ],
)
def test_decisions_are_counted_by_direction(
    metrics: Metrics, current: int | None, desired: int, direction: str
) -> None:
    scaler = make_scaler()
    decision = make_decision(desired)
    observe(metrics, scaler, make_sample(), decision, current, healthy(decision, current))
    labels = of(scaler, direction=direction, reason="backlog")
    assert value(metrics, "queuescaler_decisions_total", **labels) == 1


def test_a_failed_sample_counts_a_failure_and_shows_the_fallback(metrics: Metrics) -> None:
    scaler = make_scaler(fallback={"afterFailures": 3, "replicas": 2})
    good = make_decision(4)
    observe(metrics, scaler, make_sample(), good, 4, healthy(good, 4))
    scaler.memory = replace(scaler.memory, state=ScalerState(consecutive_failures=3))
    fallback = make_decision(2, Reason.FALLBACK)
    observe(metrics, scaler, None, fallback, 4, unreachable(fallback, 4))

    assert value(metrics, "queuescaler_scaler_sample_failures_total", **of(scaler)) == 1
    assert value(metrics, "queuescaler_scaler_ticks_total", **of(scaler)) == 2
    assert value(metrics, "queuescaler_consecutive_failures", **of(scaler)) == 3
    assert value(metrics, "queuescaler_fallback_active", **of(scaler)) == 1
    assert value(metrics, "queuescaler_condition", **of(scaler, condition="BrokerReachable")) == 0
    # The last good sample's numbers stay, with its time: staleness is visible, not hidden.
    assert value(metrics, "queuescaler_last_sample_timestamp_seconds", **of(scaler)) == NOW


def test_rates_that_become_unknown_are_dropped_not_left_stale(metrics: Metrics) -> None:
    scaler = make_scaler()
    decision = make_decision(13)
    observe(metrics, scaler, make_sample(), decision, 13, healthy(decision, 13))
    without_rates = make_sample(publish_rate=None, ack_rate=None)
    observe(metrics, scaler, without_rates, decision, 13, healthy(decision, 13))
    assert value(metrics, "queuescaler_publish_rate", **of(scaler)) is None
    assert value(metrics, "queuescaler_ack_rate", **of(scaler)) is None
    assert value(metrics, "queuescaler_deliver_rate", **of(scaler)) == 13.0


def test_forget_removes_every_series_of_that_scaler_and_only_those(metrics: Metrics) -> None:
    kept, gone = make_scaler(name="kept"), make_scaler(name="gone")
    for scaler in (kept, gone):
        state = ScalerState(last_scale_time=NOW, per_replica_rate=1.0)
        scaler.memory = replace(scaler.memory, state=state)
        decision = make_decision(3)
        observe(metrics, scaler, make_sample(), decision, 1, healthy(decision, 1))
        metrics.scaled(scaler, "up")
    before = {labels.get("scaler") for _, labels in all_samples(metrics)}
    assert {"kept", "gone"} <= before

    metrics.forget(gone.namespace, gone.name)

    after = [(name, labels) for name, labels in all_samples(metrics)]
    assert not [s for s in after if s[1].get("scaler") == "gone"]
    assert [s for s in after if s[1].get("scaler") == "kept"]
    metrics.forget(gone.namespace, gone.name)  # twice is harmless


REDIS_SOURCE = {"redis": {"queue": "celery", "connectionSecretRef": {"name": "redis"}}}


def info_series(metrics: Metrics, scaler: Scaler) -> list[tuple[str, float]]:
    """The (source, value) of every scaler_info series of `scaler`."""
    return [
        (sample.labels["source"], sample.value)
        for family in metrics.registry.collect() if family.name == "queuescaler_scaler_info"
        for sample in family.samples if sample.labels["scaler"] == scaler.name
    ]


def test_the_info_series_names_each_scalers_source_kind(metrics: Metrics) -> None:
    on_rabbitmq, on_redis = make_scaler(name="amqp"), make_scaler(name="kv", source=REDIS_SOURCE)
    for scaler in (on_rabbitmq, on_redis):
        decision = make_decision(1)
        observe(metrics, scaler, make_sample(), decision, 1, healthy(decision, 1))
    assert info_series(metrics, on_rabbitmq) == [("rabbitmq", 1.0)]
    assert info_series(metrics, on_redis) == [("redis", 1.0)]
    # The other series keep their names and labels: no source label on them.
    labels = {"scaler_namespace": on_redis.namespace, "scaler": on_redis.name}
    assert value(metrics, "queuescaler_desired_replicas", **labels) == 1


def test_a_scaler_moved_to_another_broker_has_one_info_series(metrics: Metrics) -> None:
    scaler = make_scaler()
    decision = make_decision(1)
    observe(metrics, scaler, make_sample(), decision, 1, healthy(decision, 1))
    moved = make_scaler(source=REDIS_SOURCE)
    observe(metrics, moved, make_sample(), decision, 1, healthy(decision, 1))
    observe(metrics, moved, make_sample(), decision, 1, healthy(decision, 1))
    assert info_series(metrics, moved) == [("redis", 1.0)]
    metrics.forget(moved.namespace, moved.name)
    assert info_series(metrics, moved) == []


def test_a_forgotten_scaler_that_comes_back_starts_from_zero(metrics: Metrics) -> None:
    scaler = make_scaler()
    decision = make_decision(3)
    observe(metrics, scaler, make_sample(), decision, 1, healthy(decision, 1))
    metrics.forget(scaler.namespace, scaler.name)
    observe(metrics, scaler, make_sample(), decision, 1, healthy(decision, 1))
    assert value(metrics, "queuescaler_scaler_ticks_total", **of(scaler)) == 1
    assert value(metrics, "queuescaler_scale_events_total", **of(scaler, direction="down")) == 0


def test_every_series_is_prefixed_and_per_scaler_ones_carry_both_scaler_labels(
    ticked: tuple[Metrics, Scaler],
) -> None:
    metrics, _ = ticked
    operator_wide = {
        "queuescaler_build_info", "queuescaler_leader", "queuescaler_scalers",
        "queuescaler_sample_duration_seconds", "queuescaler_sample_errors",
        "queuescaler_tick_duration_seconds",
    }
    for family in metrics.registry.collect():
        assert family.name.startswith("queuescaler_"), family.name
        for sample in family.samples:
            assert "namespace" not in sample.labels, f"{sample.name} would be exported_namespace"
            if family.name not in operator_wide:
                assert set(SCALER) <= set(sample.labels), sample.name


def test_the_process_collectors_are_included_by_default() -> None:
    names = {family.name for family in Metrics().registry.collect()}
    assert {"process_resident_memory_bytes", "python_info"} <= names


def test_no_label_value_carries_a_url_or_a_user(metrics: Metrics) -> None:
    scaler = make_scaler()
    metrics.sampled(0.2, SourceError(ErrorKind.AUTH, f"{SECRET_URL}: access refused"))
    metrics.sampled(0.01, {QueueRef("/", "thumbs"): make_sample()})
    good = make_decision(5)
    observe(metrics, scaler, make_sample(), good, 2, healthy(good, 2))
    bad = make_decision(2, Reason.FALLBACK)
    observe(metrics, scaler, None, bad, 2, unreachable(bad, 2))
    metrics.sample_failed("secret")
    values = [v for _, labels in all_samples(metrics) for v in labels.values()]
    assert values
    for label_value in values:
        assert "://" not in label_value and "@" not in label_value, label_value
        assert "s3cret" not in label_value and "admin" not in label_value, label_value


def test_sample_errors_exist_at_zero_for_every_kind_and_count_by_kind(metrics: Metrics) -> None:
    for kind in SAMPLE_ERROR_KINDS:
        assert value(metrics, "queuescaler_sample_errors_total", kind=kind) == 0, kind
    metrics.sampled(5.0, SourceError(ErrorKind.TIMEOUT, "slow"))
    metrics.sampled(0.05, {})
    assert value(metrics, "queuescaler_sample_errors_total", kind="timeout") == 1
    assert value(metrics, "queuescaler_sample_duration_seconds_count") == 2
    assert value(metrics, "queuescaler_sample_duration_seconds_bucket", le="0.1") == 1


def test_operator_wide_series(metrics: Metrics) -> None:
    metrics.leader.set(1)
    metrics.scalers.set(3)
    metrics.ticked(0.02)
    assert value(metrics, "queuescaler_build_info", version=__version__) == 1
    assert value(metrics, "queuescaler_leader") == 1
    assert value(metrics, "queuescaler_scalers") == 3
    assert value(metrics, "queuescaler_tick_duration_seconds_count") == 1


def test_cardinality_is_bounded_per_scaler(metrics: Metrics) -> None:
    """Many ticks with every reason and direction: the series per QueueScaler stay few."""
    scaler = make_scaler()
    for i, reason in enumerate(Reason):
        for current in (0, 5, 10):
            state = replace(scaler.memory.state, consecutive_failures=i)
            scaler.memory = replace(scaler.memory, state=state)
            decision = make_decision(5, reason)
            observe(metrics, scaler, make_sample(ready=i), decision, current,
                            healthy(decision, current))
    decisions = len(Reason) * 3
    assert metrics.series_count() <= decisions + 40


@pytest.mark.parametrize(
    ("accept", "library"),
    [("", generate_latest), ("application/openmetrics-text; version=1.0.0", generate_openmetrics)],
    ids=["text", "openmetrics"],
)
def test_the_fast_exposition_is_what_prometheus_client_writes(
    metrics: Metrics, accept: str, library: Any
) -> None:
    """`render` writes per-QueueScaler lines itself; byte for byte the library's output."""
    for namespace, name in (("media", "thumbnails"), ("odd", 'quote"back\\slash')):
        scaler = make_scaler(namespace, name)
        state = ScalerState(last_scale_time=NOW - 30, per_replica_rate=6.25)
        scaler.memory = replace(scaler.memory, state=state)
        decision = make_decision(13, recommendation=15, limited=True)
        observe(metrics, scaler, make_sample(), decision, 2, healthy(decision, 2))
        metrics.scaled(scaler, "up")
    metrics.sample_failed("timeout")
    body, content_type = metrics.render(accept)
    assert body.decode() == library(metrics.registry).decode()
    assert content_type.startswith("application/openmetrics-text" if accept else "text/plain")


def test_the_exposition_passes_promtool_check_metrics(ticked: tuple[Metrics, Scaler]) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not installed (Debian: apt-get install prometheus)"
    metrics, _ = ticked
    result = subprocess.run(
        [promtool, "check", "metrics"], input=generate_latest(metrics.registry),
        capture_output=True, timeout=30,
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
    assert not (result.stdout + result.stderr).strip(), (result.stdout + result.stderr).decode()


async def test_endpoints_serve_metrics_and_probes(ticked: tuple[Metrics, Scaler]) -> None:
    metrics, _ = ticked
    state = {"ready": False, "alive": True}
    app = make_app(metrics.exposition, lambda: state["ready"], lambda: state["alive"])
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/metrics")
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        # Streamed in chunks, it is the same exposition (from the per-QueueScaler part on:
        # the process collectors' numbers move between two scrapes).
        streamed, whole = (await response.text(), metrics.render("")[0].decode())
        first = "# HELP queuescaler_backlog_messages "
        assert first in streamed and streamed[streamed.index(first):] == whole[whole.index(first):]
        openmetrics = await client.get(
            "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
        )
        assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
        assert (await openmetrics.text()).endswith("# EOF\n")
        assert (await client.get("/healthz")).status == 200
        assert (await client.get("/readyz")).status == 503
        state["ready"] = True
        assert (await client.get("/readyz")).status == 200
        state["alive"] = False
        assert (await client.get("/healthz")).status == 503
