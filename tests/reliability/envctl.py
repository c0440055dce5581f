"""Controlling the `faults` environment: components by testenv.sh, the apiserver by kwokctl."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable

from queuescaler_testkit.env import CACHE, REPO, TestEnv
from queuescaler_testkit.operator_process import OperatorProcess

FAULTS = "faults"
KWOK_RUN = CACHE / f"run-{FAULTS}"
CLUSTER = f"queuescaler-{FAULTS}"


def faultenv_sh(*args: str) -> None:
    """`QS_ENV=faults hack/testenv.sh ARGS`: only ever the faults environment."""
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "testenv.sh"), *args],
        env={**os.environ, "QS_ENV": FAULTS},
        capture_output=True, text=True, timeout=300,
    )
    if result.returncode != 0:
        raise AssertionError(f"testenv.sh {' '.join(args)} failed: {result.stderr[-2000:]}")


def kwokctl(env: TestEnv, *args: str) -> None:
    """kwokctl on the faults cluster (stop/start keep etcd's data, unlike `down cluster`)."""
    result = subprocess.run(
        [str(env.bin / "kwokctl"), "--name", CLUSTER, "-c", str(KWOK_RUN / "kwokctl.yaml"), *args],
        env={**os.environ, "KWOK_WORKDIR": str(KWOK_RUN / "kwok"),
             "PATH": f"{env.bin}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=180,
    )
    if result.returncode != 0:
        raise AssertionError(f"kwokctl {' '.join(args)} failed: {result.stderr[-2000:]}")


OperatorFactory = Callable[..., OperatorProcess]
