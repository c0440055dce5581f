"""parse_spec: the defaults, the two queue forms, and every refusal naming its field."""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

import pytest
import yaml

from queuescaler.core.spec import QueueScalerSpec, ScaleTargetRef, SecretRef, SpecError
from queuescaler.sources.rabbitmq.spec import RabbitMQSourceSpec
from queuescaler.sources.registry import all_defaults, parse_spec

DEFAULTS = {
    path: value
    for path, value in all_defaults().items()
    if not path.startswith("source.") or path.startswith("source.rabbitmq.")
}
"""Every default a spec on RabbitMQ takes (the other brokers' blocks have tests of their own)."""

pytestmark = pytest.mark.unit

MINIMAL: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "thumbnail-worker"},
    "maxReplicas": 20,
    "source": {"rabbitmq": {"queue": "thumbnails", "connectionSecretRef": {"name": "creds"}}},
}

DESIGN_EXAMPLE = """
scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: thumbnail-worker}
minReplicas: 0
maxReplicas: 20
pollingIntervalSeconds: 15
source:
  rabbitmq:
    queue: thumbnails
    vhost: /
    connectionSecretRef: {name: rabbitmq-credentials}
    includeUnacked: true
target:
  messagesPerReplica: 10
  drainSeconds: 60
activation: {messages: 1}
behavior:
  tolerance: 0.1
  scaleUp:   {cooldownSeconds: 15,  maxStepReplicas: 4, maxStepPercent: 100}
  scaleDown: {cooldownSeconds: 300, stabilizationSeconds: 300, maxStepPercent: 50,
              protectBusyWorkers: true}
fallback: {afterFailures: 3, replicas: 2}
paused: false
dryRun: false
"""


def _snake(camel: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", camel).lower()


def _attribute(spec: QueueScalerSpec, dotted_camel_path: str) -> Any:
    value: Any = spec
    for part in dotted_camel_path.split("."):
        if value is spec.source and part == spec.source.broker:
            continue  # `spec.source` is the broker's block itself
        value = getattr(value, _snake(part))
    return value


def _with(path: str, value: Any, base: Mapping[str, Any] = MINIMAL) -> dict[str, Any]:
    """A copy of `base` with the dotted camelCase `path` set (or removed, for ...)."""
    raw = copy.deepcopy(dict(base))
    node = raw
    *parents, leaf = path.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    if value is ...:
        del node[leaf]
    else:
        node[leaf] = value
    return raw


def test_minimal_spec_takes_every_default() -> None:
    spec = parse_spec(MINIMAL)

    for path, default in DEFAULTS.items():
        assert _attribute(spec, path) == default, path
    assert spec.target.drain_seconds is None
    assert spec.fallback.replicas is None
    assert spec.behavior.scale_down.min_stabilization_seconds == 0  # no CRD default: rollback
    assert spec.scale_target_ref == ScaleTargetRef("apps/v1", "Deployment", "thumbnail-worker")
    assert spec.max_replicas == 20


def test_defaults_name_only_existing_fields_with_matching_types() -> None:
    spec = parse_spec(MINIMAL)

    for path, default in DEFAULTS.items():
        assert type(_attribute(spec, path)) is type(default), path


def test_design_example_parses() -> None:
    spec = parse_spec(yaml.safe_load(DESIGN_EXAMPLE))

    assert spec.min_replicas == 0
    assert spec.target.drain_seconds == 60
    assert spec.fallback.replicas == 2
    assert spec.source == RabbitMQSourceSpec(
        queue_names=("thumbnails",),
        connection_secret_ref=SecretRef("rabbitmq-credentials"),
        vhost="/",
        include_unacked=True,
    )


@pytest.mark.parametrize(
    ("raw", "queue_names"),
    [
        pytest.param(MINIMAL, ("thumbnails",), id="single-queue"),
        pytest.param(
            _with("source.rabbitmq.queues", ["a", "b"], _with("source.rabbitmq.queue", ...)),
            ("a", "b"),
            id="queue-list-keeps-order",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", None),
            ("thumbnails",),
            id="null-queues-counts-as-absent",
        ),
    ],
)
def test_queue_forms(raw: Mapping[str, Any], queue_names: tuple[str, ...]) -> None:
    assert parse_spec(raw).source.queue_names == queue_names


@pytest.mark.parametrize(
    ("path", "value", "parsed"),
    [
        pytest.param("behavior.tolerance", 0, 0.0, id="integer-tolerance-is-a-float"),
        pytest.param("maxReplicas", 20.0, 20, id="integral-float-is-an-integer"),
        pytest.param("minReplicas", 20, 20, id="min-equal-to-max"),
        pytest.param("fallback.replicas", 0, 0, id="fallback-to-zero-with-min-zero"),
        pytest.param("behavior.scaleDown.minStabilizationSeconds", 0, 0, id="shortest-window-0"),
    ],
)
def test_accepted_edges(path: str, value: Any, parsed: Any) -> None:
    raw = _with(path, value)
    if path == "fallback.replicas":
        raw = _with("minReplicas", 0, raw)

    spec = parse_spec(raw)

    assert _attribute(spec, path) == parsed
    assert type(_attribute(spec, path)) is type(parsed)


_NO_QUEUE = _with("source.rabbitmq.queue", ...)


@pytest.mark.parametrize(
    ("raw", "field_path", "message"),
    [
        pytest.param(
            _with("scaleTargetRef", ...), "spec.scaleTargetRef", "is required", id="no-target-ref"
        ),
        pytest.param(
            _with("scaleTargetRef.name", ...),
            "spec.scaleTargetRef.name",
            "is required",
            id="no-target-name",
        ),
        pytest.param(
            _with("scaleTargetRef.kind", ""),
            "spec.scaleTargetRef.kind",
            "must be a non-empty string",
            id="empty-target-kind",
        ),
        pytest.param(
            _with("scaleTargetRef.apiVersion", 1),
            "spec.scaleTargetRef.apiVersion",
            "must be a non-empty string",
            id="target-api-version-not-a-string",
        ),
        pytest.param(
            _with("scaleTargetRef", "worker"),
            "spec.scaleTargetRef",
            "must be an object",
            id="target-ref-not-an-object",
        ),
        pytest.param(_with("maxReplicas", ...), "spec.maxReplicas", "is required", id="no-max"),
        pytest.param(_with("maxReplicas", 0), "spec.maxReplicas", "must be >= 1", id="max-zero"),
        pytest.param(
            _with("maxReplicas", 2.5), "spec.maxReplicas", "must be an integer", id="max-fraction"
        ),
        pytest.param(
            _with("maxReplicas", True), "spec.maxReplicas", "must be an integer", id="max-boolean"
        ),
        pytest.param(
            _with("minReplicas", -1), "spec.minReplicas", "must be >= 0", id="min-negative"
        ),
        pytest.param(
            _with("minReplicas", 21),
            "spec.maxReplicas",
            "must be >= minReplicas (21)",
            id="max-below-min",
        ),
        pytest.param(
            _with("pollingIntervalSeconds", 0),
            "spec.pollingIntervalSeconds",
            "must be >= 1",
            id="polling-zero",
        ),
        pytest.param(_with("source", ...), "spec.source", "is required", id="no-source"),
        pytest.param(
            _with("source.rabbitmq", ...),
            "spec.source",
            "set exactly one of activemq or kafka or rabbitmq or redis",
            id="no-broker",
        ),
        pytest.param(
            _NO_QUEUE,
            "spec.source.rabbitmq.queue",
            "set exactly one of queue or queues",
            id="neither-queue-nor-queues",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", ["a"]),
            "spec.source.rabbitmq.queue",
            "set exactly one of queue or queues",
            id="both-queue-and-queues",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", [], _NO_QUEUE),
            "spec.source.rabbitmq.queues",
            "must be a non-empty list of queue names",
            id="empty-queue-list",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", "a", _NO_QUEUE),
            "spec.source.rabbitmq.queues",
            "must be a non-empty list of queue names",
            id="queues-not-a-list",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", ["a", ""], _NO_QUEUE),
            "spec.source.rabbitmq.queues[1]",
            "must be a non-empty string",
            id="empty-name-in-queue-list",
        ),
        pytest.param(
            _with("source.rabbitmq.queues", ["a", "a"], _NO_QUEUE),
            "spec.source.rabbitmq.queues",
            "must not name a queue twice",
            id="queue-listed-twice",
        ),
        pytest.param(
            _with("source.rabbitmq.queue", ""),
            "spec.source.rabbitmq.queue",
            "must be a non-empty string",
            id="empty-queue-name",
        ),
        pytest.param(
            _with("source.rabbitmq.connectionSecretRef", ...),
            "spec.source.rabbitmq.connectionSecretRef",
            "is required",
            id="no-secret-ref",
        ),
        pytest.param(
            _with("source.rabbitmq.connectionSecretRef.name", ...),
            "spec.source.rabbitmq.connectionSecretRef.name",
            "is required",
            id="no-secret-name",
        ),
        pytest.param(
            _with("source.rabbitmq.vhost", ""),
            "spec.source.rabbitmq.vhost",
            "must be a non-empty string",
            id="empty-vhost",
        ),
        pytest.param(
            _with("source.rabbitmq.includeUnacked", "yes"),
            "spec.source.rabbitmq.includeUnacked",
            "must be true or false",
            id="include-unacked-not-boolean",
        ),
        pytest.param(
            _with("target.messagesPerReplica", 0),
            "spec.target.messagesPerReplica",
            "must be >= 1",
            id="messages-per-replica-zero",
        ),
        pytest.param(
            _with("target.drainSeconds", 0),
            "spec.target.drainSeconds",
            "must be >= 1",
            id="drain-zero",
        ),
        pytest.param(
            _with("activation.messages", 0),
            "spec.activation.messages",
            "must be >= 1",
            id="activation-zero",
        ),
        pytest.param(
            _with("behavior.tolerance", -0.1),
            "spec.behavior.tolerance",
            "must be >= 0.0 and < 1.0",
            id="tolerance-negative",
        ),
        pytest.param(
            _with("behavior.tolerance", 1),
            "spec.behavior.tolerance",
            "must be >= 0.0 and < 1.0",
            id="tolerance-one",
        ),
        pytest.param(
            _with("behavior.tolerance", "10%"),
            "spec.behavior.tolerance",
            "must be a number",
            id="tolerance-not-a-number",
        ),
        pytest.param(
            _with("behavior.scaleUp.cooldownSeconds", -1),
            "spec.behavior.scaleUp.cooldownSeconds",
            "must be >= 0",
            id="scale-up-cooldown-negative",
        ),
        pytest.param(
            _with("behavior.scaleUp.maxStepReplicas", 0),
            "spec.behavior.scaleUp.maxStepReplicas",
            "must be >= 1",
            id="scale-up-step-zero",
        ),
        pytest.param(
            _with("behavior.scaleUp.maxStepPercent", 0),
            "spec.behavior.scaleUp.maxStepPercent",
            "must be >= 1",
            id="scale-up-percent-zero",
        ),
        pytest.param(
            _with("behavior.scaleUp.stabilizationSeconds", 3601),
            "spec.behavior.scaleUp.stabilizationSeconds",
            "must be <= 3600",
            id="scale-up-stabilization-over-an-hour",
        ),
        pytest.param(
            _with("behavior.scaleDown.cooldownSeconds", -5),
            "spec.behavior.scaleDown.cooldownSeconds",
            "must be >= 0",
            id="scale-down-cooldown-negative",
        ),
        pytest.param(
            _with("behavior.scaleDown.stabilizationSeconds", -1),
            "spec.behavior.scaleDown.stabilizationSeconds",
            "must be >= 0",
            id="scale-down-stabilization-negative",
        ),
        pytest.param(
            _with("behavior.scaleDown.minStabilizationSeconds", 3601),
            "spec.behavior.scaleDown.minStabilizationSeconds",
            "must be <= 3600",
            id="scale-down-min-stabilization-over-an-hour",
        ),
        pytest.param(
            _with("behavior.scaleDown.minStabilizationSeconds", -1),
            "spec.behavior.scaleDown.minStabilizationSeconds",
            "must be >= 0",
            id="scale-down-min-stabilization-negative",
        ),
        pytest.param(
            _with("behavior.scaleDown.maxStepPercent", 101),
            "spec.behavior.scaleDown.maxStepPercent",
            "must be <= 100",
            id="scale-down-percent-over-100",
        ),
        pytest.param(
            _with("behavior.scaleDown.maxStepReplicas", 0),
            "spec.behavior.scaleDown.maxStepReplicas",
            "must be >= 1",
            id="scale-down-step-zero",
        ),
        pytest.param(
            _with("behavior.scaleDown.protectBusyWorkers", 1),
            "spec.behavior.scaleDown.protectBusyWorkers",
            "must be true or false",
            id="protect-busy-workers-not-boolean",
        ),
        pytest.param(
            _with("fallback.afterFailures", 0),
            "spec.fallback.afterFailures",
            "must be >= 1",
            id="fallback-after-zero-failures",
        ),
        pytest.param(
            _with("fallback.replicas", 21),
            "spec.fallback.replicas",
            "must be within minReplicas (1) and maxReplicas (20)",
            id="fallback-above-max",
        ),
        pytest.param(
            _with("fallback.replicas", 0),
            "spec.fallback.replicas",
            "must be within minReplicas (1) and maxReplicas (20)",
            id="fallback-below-min",
        ),
        pytest.param(
            _with("paused", "no"), "spec.paused", "must be true or false", id="paused-not-boolean"
        ),
        pytest.param(
            _with("dryRun", 0), "spec.dryRun", "must be true or false", id="dry-run-not-boolean"
        ),
        pytest.param(
            _with("maxReplica", 5), "spec.maxReplica", "unknown field", id="unknown-top-field"
        ),
        pytest.param(
            _with("behavior.scaleDown.stabilizationWindowSeconds", 60),
            "spec.behavior.scaleDown.stabilizationWindowSeconds",
            "unknown field",
            id="hpa-field-name-is-unknown",
        ),
        pytest.param(
            _with("source.rabbitmq.connectionSecretRef.namespace", "other"),
            "spec.source.rabbitmq.connectionSecretRef.namespace",
            "unknown field",
            id="secret-in-another-namespace-is-unknown",
        ),
        pytest.param(
            _with("behavior", {1: 2}),
            "spec.behavior",
            "field names must be strings",
            id="non-string-field-name",
        ),
    ],
)
def test_refusals_name_their_field(raw: Mapping[str, Any], field_path: str, message: str) -> None:
    with pytest.raises(SpecError) as refused:
        parse_spec(raw)

    assert refused.value.field_path == field_path
    assert refused.value.message.startswith(message)
    assert str(refused.value).startswith(f"{field_path}: {message}")


def test_spec_error_is_a_value_error() -> None:
    assert issubclass(SpecError, ValueError)


def test_spec_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(SpecError, match=r"^spec: must be an object$"):
        parse_spec([])  # type: ignore[arg-type]
