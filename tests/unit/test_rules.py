"""The alert rules: promtool checks and unit-tests them, and each alert is complete and tested.

promtool is a local binary (Debian's `prometheus` package), no server: these are unit tests.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from queuescaler_testkit.env import REPO

pytestmark = pytest.mark.unit

RULES = REPO / "charts" / "queuescaler" / "rules" / "queuescaler.rules.yaml"
RULE_TESTS = REPO / "tests" / "rules" / "queuescaler.rules.test.yaml"
SEVERITIES = {"critical", "warning", "info"}
OPERATOR_WIDE = {"QueueScalerOperatorDown"}
"""Alerts about the operator itself: no QueueScaler to name."""


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, (
        "promtool is not on PATH: it comes with Debian's prometheus package "
        "(apt-get install prometheus)"
    )
    return subprocess.run(
        [binary, *map(str, args)], capture_output=True, text=True, timeout=120
    )


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def alert_names() -> list[str]:
    return [rule["alert"] for rule in alerts()]


def test_promtool_check_rules_passes() -> None:
    result = promtool("check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rule_unit_tests_pass() -> None:
    result = promtool("test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_the_rules_cover_what_the_design_asks_for() -> None:
    assert set(alert_names()) == {
        "QueueScalerOperatorDown",
        "QueueScalerBrokerUnreachable",
        "QueueScalerSamplingErrors",
        "QueueScalerAtMaxReplicasWithGrowingBacklog",
        "QueueScalerReplicasNotConverging",
    }


@pytest.mark.parametrize("name", alert_names())
def test_each_alert_has_a_severity_a_summary_and_a_description(name: str) -> None:
    rule = next(r for r in alerts() if r["alert"] == name)
    assert rule["labels"]["severity"] in SEVERITIES
    assert rule.get("for"), "an alert without `for` pages on a single bad scrape"
    annotations = rule["annotations"]
    assert annotations["summary"].strip() and annotations["description"].strip()
    if name not in OPERATOR_WIDE:
        for field in ("summary", "description"):
            text = annotations[field]
            assert "$labels.scaler_namespace" in text and "$labels.scaler " in text, (
                f"{name}'s {field} must name the QueueScaler"
            )
        assert "by (scaler_namespace, scaler)" in rule["expr"]


@pytest.mark.parametrize("name", alert_names())
def test_each_alert_is_unit_tested_firing_and_not_firing(name: str) -> None:
    cases = [
        case
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test") or ()
        if case["alertname"] == name
    ]
    assert any(case.get("exp_alerts") for case in cases), f"{name} is never shown firing"
    assert any(not case.get("exp_alerts") for case in cases), f"{name} is never shown quiet"
