"""What tests/unit shares, imported by this name: REPO and CACHE (everything else imports
queuescaler_testkit.env, where they are defined), and the spec the decide() tables start from."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from queuescaler.core.spec import QueueScalerSpec
from queuescaler.sources.registry import parse_spec
from queuescaler_testkit.env import CACHE, REPO

__all__ = ["CACHE", "LOOSE", "MINIMAL", "NOW", "REPO", "make_spec"]

NOW = 10_000.0
"""The decide() tables' clock."""

MINIMAL: dict[str, Any] = {
    "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "worker"},
    "maxReplicas": 100,
    "source": {"rabbitmq": {"queue": "jobs", "connectionSecretRef": {"name": "creds"}}},
}

LOOSE: dict[str, Any] = {
    "minReplicas": 0,
    "behavior.tolerance": 0,
    "behavior.scaleUp.cooldownSeconds": 0,
    "behavior.scaleUp.maxStepReplicas": 1000,
    "behavior.scaleDown.cooldownSeconds": 0,
    "behavior.scaleDown.stabilizationSeconds": 0,
    "behavior.scaleDown.maxStepReplicas": 1000,
}
"""Settings that switch the damping off, so that a table's row shows one rule at work."""


def make_spec(settings: Mapping[str, Any]) -> QueueScalerSpec:
    """MINIMAL with dotted camelCase paths set, through the real parser."""
    raw = copy.deepcopy(MINIMAL)
    for path, value in settings.items():
        node = raw
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return parse_spec(raw)
