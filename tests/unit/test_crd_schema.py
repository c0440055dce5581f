"""The QueueScaler CRD read as data: structural, documented, bounded, and defaulted like the code.

The apiserver checks the same file for real in tests/integration/test_crd.py; these checks run
without a cluster and name the offending schema path when they fail.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.unit

CRD_PATH = Path(__file__).resolve().parents[2] / "crds" / "queuescaler.yaml"

Schema = dict[str, Any]

SCALAR_TYPES = {"string", "integer", "number", "boolean"}
JUNCTORS = ("allOf", "anyOf", "oneOf", "not")


def load_crd() -> dict[str, Any]:
    with CRD_PATH.open(encoding="utf-8") as stream:
        documents = [doc for doc in yaml.safe_load_all(stream) if doc]
    assert len(documents) == 1, f"{CRD_PATH} must hold exactly one document"
    crd: dict[str, Any] = documents[0]
    return crd


CRD = load_crd()
VERSION: dict[str, Any] = CRD["spec"]["versions"][0]
ROOT: Schema = VERSION["schema"]["openAPIV3Schema"]


def walk(node: Schema, path: str = "") -> Iterator[tuple[str, Schema]]:
    """Every schema node below `node` with its dotted path; list items are written `name[]`."""
    for name, child in node.get("properties", {}).items():
        child_path = f"{path}.{name}" if path else name
        yield child_path, child
        yield from walk(child, child_path)
    if "items" in node:
        item_path = f"{path}[]"
        yield item_path, node["items"]
        yield from walk(node["items"], item_path)


def node_at(dotted: str) -> Schema:
    node = ROOT
    for name in dotted.split("."):
        node = node["properties"][name]
    return node


def structural_violations(root: Schema) -> list[str]:
    """The rules of a structural schema (apiextensions.k8s.io/v1), as far as this CRD uses them."""
    problems: list[str] = []
    if root.get("type") != "object":
        problems.append("<root>: the root must be of type object")
    nodes = [("<root>", root), *walk(root)]
    for path, node in nodes:
        kind = node.get("type")
        if kind not in SCALAR_TYPES | {"object", "array"}:
            problems.append(f"{path}: needs a type, has {kind!r}")
        for word in (*JUNCTORS, "$ref", "x-kubernetes-preserve-unknown-fields"):
            if word in node:
                problems.append(f"{path}: uses {word}, which this schema keeps out")
        if "properties" in node and "additionalProperties" in node:
            problems.append(f"{path}: properties and additionalProperties exclude each other")
        if kind == "array" and "items" not in node:
            problems.append(f"{path}: an array needs items")
        if kind != "array" and "items" in node:
            problems.append(f"{path}: items on a non-array")
        if kind != "object" and "properties" in node:
            problems.append(f"{path}: properties on a non-object")
        for name in node.get("required", []):
            if name not in node.get("properties", {}):
                problems.append(f"{path}: requires {name!r}, which it does not define")
    metadata = root.get("properties", {}).get("metadata")
    if metadata is not None and set(metadata) != {"type"}:
        # The apiserver defines ObjectMeta itself and refuses even a description here.
        problems.append("metadata: only its type may be given")
    return problems


@pytest.mark.parametrize(
    ("schema", "expected"),
    [
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string"}}}, "", id="well-formed"
        ),
        pytest.param({"properties": {}}, "needs a type", id="root-without-type"),
        pytest.param(
            {"type": "object", "properties": {"a": {"description": "x"}}},
            "a: needs a type",
            id="field-without-type",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "array"}}},
            "a: an array needs items",
            id="array-without-items",
        ),
        pytest.param(
            {"type": "object", "properties": {"a": {"type": "string", "anyOf": []}}},
            "a: uses anyOf",
            id="junctor",
        ),
        pytest.param(
            {"type": "object", "required": ["b"], "properties": {"a": {"type": "string"}}},
            "requires 'b'",
            id="required-undefined",
        ),
        pytest.param(
            {"type": "object", "properties": {"metadata": {"type": "object", "description": "x"}}},
            "metadata: only its type",
            id="metadata-restricted",
        ),
    ],
)
def test_the_structural_checker_finds_what_it_should(schema: Schema, expected: str) -> None:
    problems = structural_violations(schema)
    if expected:
        assert any(expected in problem for problem in problems), problems
    else:
        assert problems == []


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        pytest.param(lambda crd: crd["apiVersion"], "apiextensions.k8s.io/v1", id="crd-api"),
        pytest.param(lambda crd: crd["metadata"]["name"], "queuescalers.queuescaler.io", id="name"),
        pytest.param(lambda crd: crd["spec"]["group"], "queuescaler.io", id="group"),
        pytest.param(lambda crd: crd["spec"]["scope"], "Namespaced", id="namespaced"),
        pytest.param(lambda crd: crd["spec"]["names"]["kind"], "QueueScaler", id="kind"),
        pytest.param(lambda crd: crd["spec"]["names"]["plural"], "queuescalers", id="plural"),
        pytest.param(lambda crd: crd["spec"]["names"]["shortNames"], ["qs"], id="short-name"),
        pytest.param(
            lambda crd: [(v["name"], v["served"], v["storage"]) for v in crd["spec"]["versions"]],
            [("v1alpha1", True, True)],
            id="one-version-served-and-stored",
        ),
        pytest.param(
            lambda crd: crd["spec"]["versions"][0]["subresources"],
            {"status": {}},
            id="status-subresource-only",
        ),
    ],
)
def test_identity(field: Any, expected: Any) -> None:
    assert field(CRD) == expected


def test_the_schema_is_structural() -> None:
    assert structural_violations(ROOT) == []


def test_every_property_at_every_depth_has_a_description() -> None:
    undocumented = [
        path for path, node in walk(ROOT) if not str(node.get("description", "")).strip()
    ]
    assert undocumented == []


def test_the_top_level_descriptions_exist() -> None:
    for path in ("<root>", "spec", "status"):
        node = ROOT if path == "<root>" else node_at(path)
        assert str(node.get("description", "")).strip(), path


def test_printer_columns_are_the_designed_ones_in_order() -> None:
    names = [column["name"] for column in VERSION["additionalPrinterColumns"]]
    assert names == [
        "TARGET", "MIN", "MAX", "BACKLOG", "ACK/S", "DESIRED", "CURRENT", "SAMPLED", "AGE",
    ]


@pytest.mark.parametrize(
    ("name", "json_path", "kind"),
    [
        pytest.param("TARGET", ".spec.scaleTargetRef.name", "string", id="target"),
        pytest.param("MIN", ".spec.minReplicas", "integer", id="min"),
        pytest.param("MAX", ".spec.maxReplicas", "integer", id="max"),
        pytest.param("BACKLOG", ".status.backlog.total", "integer", id="backlog"),
        pytest.param("ACK/S", ".status.rates.ack", "number", id="ack-rate"),
        pytest.param("DESIRED", ".status.desiredReplicas", "integer", id="desired"),
        pytest.param("CURRENT", ".status.currentReplicas", "integer", id="current"),
        pytest.param("SAMPLED", ".status.lastSampleTime", "date", id="sampled"),
        pytest.param("AGE", ".metadata.creationTimestamp", "date", id="age"),
    ],
)
def test_a_printer_column_reads_a_field_of_its_type(name: str, json_path: str, kind: str) -> None:
    (column,) = [c for c in VERSION["additionalPrinterColumns"] if c["name"] == name]
    assert (column["jsonPath"], column["type"]) == (json_path, kind)
    if not json_path.startswith(".metadata."):
        node = node_at(json_path.lstrip("."))
        if kind == "date":  # a date column shows the age of an RFC 3339 string
            assert (node["type"], node.get("format")) == ("string", "date-time")
        else:
            assert node["type"] == kind


def test_status_staleness_and_unmatched_workers_are_reported() -> None:
    assert node_at("status.lastSampleTime") | {"description": ""} == {
        "type": "string", "format": "date-time", "description": "",
    }
    unmatched = node_at("status.workers.unmatched")
    assert (unmatched["type"], unmatched["minimum"]) == ("integer", 0)


def test_every_status_number_is_non_negative() -> None:
    negative = [
        path
        for path, node in walk(node_at("status"), "status")
        if node["type"] in {"integer", "number"} and node.get("minimum") != 0
    ]
    assert negative == []


def test_source_names_its_brokers_in_one_cel_rule_not_in_required() -> None:
    """Adding a broker is additive: a sibling block and one has() in the exactly-one rule."""
    source = node_at("spec.source")
    assert "required" not in source
    (rule,) = source["x-kubernetes-validations"]
    for broker in source["properties"]:
        assert f"has(self.{broker})" in rule["rule"], broker
        assert broker in rule["message"], broker
    assert ".exists_one(" in rule["rule"]


def crd_spec_defaults() -> dict[str, Any]:
    """Every `default:` of a scalar leaf under spec, keyed by its dotted path below spec."""
    return {
        path.removeprefix("spec."): node["default"]
        for path, node in walk(node_at("spec"), "spec")
        if "default" in node and node.get("type") in SCALAR_TYPES
    }


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def typed(defaults: Mapping[str, Any]) -> dict[str, tuple[bool, Any]]:
    """Tell booleans from numbers, which Python compares equal (False == 0)."""
    return {path: (isinstance(value, bool), value) for path, value in defaults.items()}


def test_the_designed_defaults_are_in_the_crd() -> None:
    assert crd_spec_defaults() == {
        "minReplicas": 1,
        "pollingIntervalSeconds": 15,
        "source.rabbitmq.vhost": "/",
        "source.rabbitmq.includeUnacked": True,
        "source.redis.includeUnacked": True,
        "source.kafka.offsetResetPolicy": "latest",
        "source.kafka.allowIdleConsumers": False,
        "source.kafka.limitToPartitionsWithLag": True,
        "source.activemq.includeUnacked": True,
        "target.messagesPerReplica": 10,
        "activation.messages": 1,
        "behavior.tolerance": 0.1,
        "behavior.scaleUp.cooldownSeconds": 15,
        "behavior.scaleUp.maxStepReplicas": 100,
        "behavior.scaleUp.maxStepPercent": 100,
        "behavior.scaleUp.stabilizationSeconds": 0,
        "behavior.scaleDown.cooldownSeconds": 45,
        "behavior.scaleDown.stabilizationSeconds": 300,
        "behavior.scaleDown.maxStepPercent": 100,
        "behavior.scaleDown.maxStepReplicas": 1,
        "behavior.scaleDown.protectBusyWorkers": True,
        "fallback.afterFailures": 3,
        "paused": False,
        "dryRun": False,
    }


def test_the_crd_defaults_equal_the_code_defaults() -> None:
    from queuescaler.sources.registry import all_defaults

    assert typed(crd_spec_defaults()) == typed(flatten(all_defaults()))


def test_nested_defaults_apply_when_their_parents_are_omitted() -> None:
    """A defaulted leaf only gets its default if every optional ancestor defaults to {}.

    A broker block under source is optional in the schema but always present when it is the
    one broker the QueueScaler names (the exactly-one CEL rule), so its defaults apply.
    """
    brokers = set(node_at("spec.source")["properties"])
    unreachable = []
    for path in crd_spec_defaults():
        parent, *names = ["spec", *path.split(".")]
        node = node_at(parent)
        for name in names[:-1]:
            child = node["properties"][name]
            present = name in node.get("required", []) or (
                node is node_at("spec.source") and name in brokers
            )
            if not present and child.get("default") != {}:
                unreachable.append(f"{path}: {name} is optional and has no default {{}}")
            node = child
    assert unreachable == []


def test_every_default_satisfies_its_own_field() -> None:
    problems = []
    for path, node in walk(node_at("spec"), "spec"):
        if "default" not in node or node["type"] not in SCALAR_TYPES:
            continue
        value = node["default"]
        python_type = {"string": str, "integer": int, "number": (int, float), "boolean": bool}
        if not isinstance(value, python_type[node["type"]]) or (
            node["type"] != "boolean" and isinstance(value, bool)
        ):
            problems.append(f"{path}: default {value!r} is not a {node['type']}")
            continue
        if "minimum" in node and value < node["minimum"]:
            problems.append(f"{path}: default {value!r} is below {node['minimum']}")
        if "maximum" in node and (
            value >= node["maximum"] if node.get("exclusiveMaximum") else value > node["maximum"]
        ):
            problems.append(f"{path}: default {value!r} is above {node['maximum']}")
        if "minLength" in node and len(value) < node["minLength"]:
            problems.append(f"{path}: default {value!r} is too short")
    assert problems == []


def test_the_status_has_no_defaults() -> None:
    assert [path for path, node in walk(node_at("status"), "status") if "default" in node] == []


def test_every_list_and_spec_string_is_bounded_for_cel_cost() -> None:
    unbounded = [
        f"{path}: list without maxItems"
        for path, node in walk(ROOT)
        if node["type"] == "array" and "maxItems" not in node
    ]
    unbounded += [
        f"{path}: string without maxLength"
        for path, node in walk(node_at("spec"), "spec")
        if node["type"] == "string" and "maxLength" not in node and "enum" not in node
    ]
    assert unbounded == []


def test_every_cel_rule_explains_itself() -> None:
    silent = [
        f"{path}: {rule['rule']}"
        for path, node in [("<root>", ROOT), *walk(ROOT)]
        for rule in node.get("x-kubernetes-validations", [])
        if not str(rule.get("message", "")).strip()
    ]
    assert silent == []


def test_conditions_are_a_map_keyed_by_type() -> None:
    conditions = node_at("status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["properties"]) == {
        "type",
        "status",
        "reason",
        "message",
        "lastTransitionTime",
        "observedGeneration",
    }


def numeric_bounds() -> Iterator[Any]:
    """Each minimum and maximum the CRD allows for a number under spec, as a table row."""
    for path, node in walk(node_at("spec"), "spec"):
        if node["type"] not in {"integer", "number"}:
            continue
        dotted = path.removeprefix("spec.")
        if "minimum" in node:
            yield pytest.param(dotted, node["minimum"], id=f"{dotted}-at-minimum")
        if "maximum" in node:
            top = node["maximum"]
            if node.get("exclusiveMaximum"):
                top = top - 0.01 if node["type"] == "number" else top - 1
            yield pytest.param(dotted, top, id=f"{dotted}-at-maximum")


def widest_valid_spec() -> dict[str, Any]:
    """A valid spec whose replica bounds are as wide as the CRD allows."""
    return {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
        "minReplicas": 0,
        "maxReplicas": node_at("spec.maxReplicas")["maximum"],
        "source": {"rabbitmq": {"queue": "work", "connectionSecretRef": {"name": "rabbitmq"}}},
    }


@pytest.mark.parametrize(("dotted", "value"), list(numeric_bounds()))
def test_the_code_accepts_every_bound_the_crd_accepts(dotted: str, value: Any) -> None:
    """Whatever the apiserver lets through, the operator's parser takes too."""
    from queuescaler.sources.registry import parse_spec

    spec = widest_valid_spec()
    *parents, leaf = dotted.split(".")
    node = spec
    for name in parents:
        node = node.setdefault(name, {})
    node[leaf] = value
    parse_spec(spec)
