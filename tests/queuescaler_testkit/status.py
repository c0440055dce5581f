"""Reading a QueueScaler as the operator left it: its status and its conditions.

Takes the object as `kubectl get -o json` or the Kubernetes client returns it (a dict).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from queuescaler_testkit.env import TestEnv


def get_scaler(env: TestEnv, namespace: str, name: str) -> dict[str, Any]:
    """The QueueScaler `namespace/name` as the apiserver has it now."""
    out = env.kubectl("get", "qs", name, "-n", namespace, "-o", "json")
    body: dict[str, Any] = json.loads(out.stdout)
    return body


def status_of(scaler: Mapping[str, Any]) -> dict[str, Any]:
    """The object's status; empty until the operator first writes one."""
    status: dict[str, Any] = scaler.get("status") or {}
    return status


def condition_of(scaler: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    """The condition of type `kind` (Ready, Active, ...), or None while it has none."""
    for condition in status_of(scaler).get("conditions") or ():
        if condition.get("type") == kind:
            found: dict[str, Any] = condition
            return found
    return None
