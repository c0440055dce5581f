"""Controlling the `faults` environment: the test kit's envctl, bound to that environment."""

from __future__ import annotations

from collections.abc import Callable

from queuescaler_testkit import envctl
from queuescaler_testkit.env import TestEnv
from queuescaler_testkit.operator_process import OperatorProcess

FAULTS = "faults"


def faultenv_sh(*args: str) -> None:
    """`QS_ENV=faults hack/testenv.sh ARGS`: only ever the faults environment."""
    envctl.testenv_sh(FAULTS, *args)


def kwokctl(env: TestEnv, *args: str) -> None:
    """kwokctl on the faults cluster (stop/start keep etcd's data, unlike `down cluster`)."""
    envctl.kwokctl(env, FAULTS, *args)


OperatorFactory = Callable[..., OperatorProcess]
