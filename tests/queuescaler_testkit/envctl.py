"""Controlling a separate environment (QS_ENV): components by testenv.sh, the cluster by kwokctl.

A separate environment (`QS_ENV=NAME`, ports offset by `QS_PORT_OFFSET`) is one that tests and
benchmarks may break on purpose: stop its broker, stop and start its control plane. The shared
environment is never touched from here.

    env = bring_up_separate("faults", port_offset=100)
    testenv_sh("faults", "down", "rabbitmq", port_offset=100)
    kwokctl(env, "faults", "stop", "cluster"); kwokctl(env, "faults", "start", "cluster")
    wait_cluster_restarted(env)
"""

from __future__ import annotations

import os
import subprocess
import time

from queuescaler_testkit.env import CACHE, REPO, TestEnv, read_testenv, wait_until


def _environ(instance: str, port_offset: int | None) -> dict[str, str]:
    if not instance:
        raise ValueError("only a separate environment (a QS_ENV name) is controlled here")
    env = {**os.environ, "QS_ENV": instance}
    if port_offset is not None:
        env["QS_PORT_OFFSET"] = str(port_offset)
    return env


def testenv_sh(instance: str, *args: str, port_offset: int | None = None,
               timeout: float = 300) -> None:
    """`QS_ENV=instance hack/testenv.sh ARGS`: only ever that separate environment.

    `port_offset` must be the one the environment was started with (testenv.sh's default
    for a separate environment is 100).
    """
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "testenv.sh"), *args],
        env=_environ(instance, port_offset), capture_output=True, text=True, timeout=timeout,
    )
    if result.returncode != 0:
        raise AssertionError(f"testenv.sh {' '.join(args)} failed: {result.stderr[-2000:]}")


def bring_up_separate(instance: str, *, port_offset: int | None = None) -> TestEnv:
    """Start the separate environment `instance` (or reuse it, if running) and read it."""
    testenv_sh(instance, "up", port_offset=port_offset, timeout=900)
    return read_testenv(instance)


def kwokctl(env: TestEnv, instance: str, *args: str) -> None:
    """kwokctl on the separate environment's cluster (stop/start keep etcd's data, unlike
    `delete cluster`)."""
    run = CACHE / f"run-{instance}"
    result = subprocess.run(
        [str(env.bin / "kwokctl"), "--name", f"queuescaler-{instance}",
         "-c", str(run / "kwokctl.yaml"), *args],
        env={**os.environ, "KWOK_WORKDIR": str(run / "kwok"),
             "PATH": f"{env.bin}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=180,
    )
    if result.returncode != 0:
        raise AssertionError(f"kwokctl {' '.join(args)} failed: {result.stderr[-2000:]}")


def wait_cluster_restarted(env: TestEnv, *, timeout: float = 120) -> float:
    """After `kwokctl start cluster`: wait (bounded) until the cluster answers and runs pods;
    returns when the apiserver answered (time.monotonic()).

    /readyz is not enough. The node Leases outlive the restart, held by the stopped kwok
    controller for their whole duration (kwokctl: 40 s x heartbeat factor 5 = 200 s), and the
    new controller runs no pod on a node whose Lease it does not hold: a pod created meanwhile
    stays Pending. Deleting the stale Leases lets the new controller take them at its next
    try, within a quarter of that duration.
    """
    wait_until(
        lambda: env.kubectl("get", "--raw", "/readyz", check=False).returncode == 0,
        timeout=timeout, what="the apiserver to be ready",
    )
    answered = time.monotonic()
    nodes = len(env.kubectl("get", "nodes", "-o", "name").stdout.split())
    env.kubectl("delete", "leases", "--all", "-n", "kube-node-lease", "--wait=false")
    wait_until(
        lambda: len(env.kubectl("get", "leases", "-n", "kube-node-lease", "-o", "name")
                    .stdout.split()) == nodes,
        timeout=timeout, what=f"the new kwok controller to hold the {nodes} node Leases",
    )
    return answered
