#!/usr/bin/env python3
"""`make demo`, the Python part: queuescaler sizing a Celery pool on the local cluster.

hack/demo.sh starts the environment and runs this with the virtualenv's Python. Steps:

1. the CRD and the Helm chart, installed with helm (`replicaCount=0`: the chart's own
   operator pod cannot run here, kwok's pods are fake);
2. the operator from its image (hack/image.sh), run as the chart runs it: read-only root,
   the chart's user, no capabilities, the default seccomp profile, and a token of the
   chart's ServiceAccount where the kubelet would mount it, so it has exactly the RBAC the
   chart grants, no more (a local process under that token where containers cannot run);
3. the Celery example (examples/celery-is-prime) with its Secret pointed at the local
   RabbitMQ and a QueueScaler with short windows, and one real Celery worker per Running pod
   (the e2e pod runner plays kubelet);
4. a burst of is_prime tasks, and a live table while the pool scales up and back down;
5. a PNG of the run drawn from Prometheus (hack/plot_timeline.py).

It stops what it started (the operator and the workers, by PID) and leaves the environment
running. No prompts; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from queuescaler_testkit.env import CACHE, REPO, read_testenv, wait_until
from queuescaler_testkit.image import (
    CHART_USER,
    TOKEN_DIR,
    ImageOperatorProcess,
    ImageUnavailable,
    build_image,
    containers_can_run,
    service_account_mount,
)
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunner, celery_worker_command, celery_worker_env
from queuescaler_testkit.publisher import delete_queue, publish_is_prime_tasks
from queuescaler_testkit.status import condition_of, get_scaler, status_of

RELEASE = "queuescaler"
OPERATOR_NAMESPACE = "queuescaler-system"
SERVICE_ACCOUNT = "queuescaler"  # the chart's full name for release "queuescaler"
DEMO_NAMESPACE = "queuescaler-demo"
EXAMPLE = REPO / "examples" / "celery-is-prime"
SCALER = "celery-is-prime"
QUEUE = "is_prime"
BURST = 1200
MAX_REPLICAS = 8
WORK_DIR = CACHE / "run" / "demo"
TOKEN_MOUNT = WORK_DIR / "operator-token"
"""Where the operator's ServiceAccount token is kept for its container (only its owner may
enter), and removed when the demo stops the operator."""
OUT = CACHE / "out" / "demo-timeline.png"

# Short windows, so a whole cycle takes a couple of minutes (the example's defaults are for
# production: five-minute scale-down windows).
DEMO_SPEC: dict[str, Any] = {
    "minReplicas": 1,
    "maxReplicas": MAX_REPLICAS,
    "pollingIntervalSeconds": 2,
    "target": {"messagesPerReplica": 20, "drainSeconds": 30},
    "behavior": {
        "scaleUp": {"cooldownSeconds": 2, "maxStepReplicas": 4},
        "scaleDown": {"cooldownSeconds": 10, "stabilizationSeconds": 15, "maxStepPercent": 50},
    },
}


def say(text: str) -> None:
    print(text, flush=True)


ENV = read_testenv()  # hack/demo.sh started it
HELM = str(ENV.bin / "helm")
ADMIN = str(ENV.kubeconfig)


def run(*command: str, input: str | None = None, kubeconfig: str = ADMIN) -> str:
    result = subprocess.run(
        list(command), input=input, capture_output=True, text=True, timeout=180,
        env={**os.environ, "KUBECONFIG": kubeconfig}, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{result.stderr.strip()}")
    return result.stdout


def kubectl(*args: str, input: str | None = None) -> str:
    return ENV.kubectl(*args, input=input).stdout


def apply(manifest: dict[str, Any], namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


# --- the steps --------------------------------------------------------------------------------


def install_chart() -> None:
    say("== installing the QueueScaler CRD and the chart (helm, replicaCount=0)")
    ENV.apply_crd()
    # The chart's crds/ are installed by helm when missing; the apply above keeps ours current.
    run(HELM, "upgrade", "--install", RELEASE, str(REPO / "charts" / "queuescaler"),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--set", "replicaCount=0",
        "--wait", "--timeout", "2m")
    say(f"   release {RELEASE} in {OPERATOR_NAMESPACE}: ServiceAccount {SERVICE_ACCOUNT}, "
        "cluster-wide RBAC, metrics Service (its operator Deployment is scaled to 0: kwok "
        "pods are fake, the operator runs beside the cluster instead)")


def start_operator() -> OperatorProcess:
    """The operator under a fresh token of the chart's ServiceAccount: from its image, run as
    the chart runs it (hack/image.sh), or as a local process where containers cannot run."""
    kubeconfig = ENV.service_account_kubeconfig(
        SERVICE_ACCOUNT, OPERATOR_NAMESPACE, WORK_DIR / "operator.kubeconfig",
        duration="2h", default_namespace=OPERATOR_NAMESPACE,
    )
    log_path = WORK_DIR / "operator.log"
    log_path.unlink(missing_ok=True)  # this run's log only
    account = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
    args = ("--status-refresh-seconds", "2")
    operator: OperatorProcess
    image = operator_image()
    if image is not None:
        token_dir = service_account_mount(ENV, kubeconfig, TOKEN_MOUNT)
        say(f"== starting the operator from {image} as {account}: read-only root, user "
            f"{CHART_USER}, no capabilities, no privilege escalation, default seccomp, the "
            f"token mounted at {TOKEN_DIR} (log: {log_path})")
        operator = ImageOperatorProcess(ENV, image, token_dir, log_path, *args)
    else:
        say(f"== starting the operator as a local process, as {account} (log: {log_path})")
        operator = OperatorProcess(replace(ENV, kubeconfig=kubeconfig), log_path, *args)
    operator.start()
    assert operator.process is not None
    say(f"   ready: pid {operator.process.pid}, metrics on {operator.metrics_url}")
    return operator


def operator_image() -> str | None:
    """The image, built (or reused); None, said aloud, when this machine cannot run it."""
    say("== building the operator image (hack/image.sh: podman, a Debian 12 base made here)")
    started = time.monotonic()
    try:
        image = build_image()
    except ImageUnavailable as error:
        say(f"   the image did not build (a machine that cannot run containers cannot build"
            f" one either), so the operator runs as a local process:\n{error}")
        return None
    if not containers_can_run():
        say("   this machine cannot run containers (no namespaces, or no runtime that"
            " starts): the operator runs as a local process instead")
        return None
    say(f"   {image} ready in {time.monotonic() - started:.0f}s")
    return image


def register_prometheus_target(port: int) -> Path:
    target = ENV.prometheus_targets / "queuescaler-demo.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps([{"targets": [f"127.0.0.1:{port}"],
                                   "labels": {"instance": "demo-operator"}}]))
    return target


def apply_example() -> None:
    say(f"== applying examples/celery-is-prime in namespace {DEMO_NAMESPACE}")
    if DEMO_NAMESPACE not in kubectl("get", "namespaces", "-o", "name"):
        kubectl("create", "namespace", DEMO_NAMESPACE)
    # A fresh start: no leftover QueueScaler status (cooldowns) and an empty queue.
    kubectl("delete", "qs", SCALER, "-n", DEMO_NAMESPACE, "--ignore-not-found")
    delete_queue(ENV.amqp_url, QUEUE)
    for name in ("configmap.yaml", "deployment.yaml"):
        kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(EXAMPLE / name))
    kubectl("scale", "deployment", SCALER, "-n", DEMO_NAMESPACE, "--replicas", "1")
    # The example's Secret names cluster DNS; here RabbitMQ is a local process.
    secret = yaml.safe_load((EXAMPLE / "secret.yaml").read_text())
    secret["stringData"] = {"amqpUrl": ENV.amqp_url, "managementUrl": ENV.management_url}
    apply(secret, DEMO_NAMESPACE)
    scaler = yaml.safe_load((EXAMPLE / "queuescaler.yaml").read_text())
    scaler["spec"].update({k: v for k, v in DEMO_SPEC.items() if k != "behavior"})
    scaler["spec"]["source"]["rabbitmq"]["vhost"] = ENV.vhost
    behavior = scaler["spec"].setdefault("behavior", {})
    for direction, limits in DEMO_SPEC["behavior"].items():
        behavior.setdefault(direction, {}).update(limits)
    apply(scaler, DEMO_NAMESPACE)
    say(f"   QueueScaler {SCALER}: 1..{MAX_REPLICAS} replicas, 20 tasks per replica, "
        "drain within 30 s; short demo windows (scale-down after 15 s of calm)")


def scaler() -> dict[str, Any]:
    return get_scaler(ENV, DEMO_NAMESPACE, SCALER)


def ready() -> bool:
    return (condition_of(scaler(), "Ready") or {}).get("status") == "True"


def deployment_replicas() -> int:
    out = kubectl("get", "deployment", SCALER, "-n", DEMO_NAMESPACE,
                  "-o", "jsonpath={.spec.replicas}")
    return int(out or 0)


def live_table(runner: PodRunner, started: float, timeout: float) -> None:
    """One line whenever something changes (and every 10 s), until the pool is back at 1."""
    say("")
    say("  time  backlog  desired  current  workers  reason")
    last: tuple[Any, ...] | None = None
    last_print = 0.0
    peak = 0
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = status_of(scaler())
        backlog = (found.get("backlog") or {}).get("total", 0)
        desired = found.get("desiredReplicas", "-")
        current = deployment_replicas()
        workers = len(runner.serving())
        reason = (found.get("lastDecision") or {}).get("reason", "-")
        peak = max(peak, current)
        row = (backlog, desired, current, workers, reason)
        now = time.monotonic()
        if row != last or now - last_print >= 10:
            elapsed = int(now - started)
            say(f"  {elapsed // 60:>2}:{elapsed % 60:02d}  {backlog:>7}  {desired!s:>7}  "
                f"{current:>7}  {workers:>7}  {reason}")
            last, last_print = row, now
        if peak > 1 and backlog == 0 and current == 1 and workers == 1:
            say("")
            say(f"The pool went from 1 to {peak} workers and back to 1: every task is done.")
            return
        time.sleep(1)
    say(f"(the cycle did not finish within {timeout:.0f}s: stopping the demo here)")


def plot(minutes: float) -> Path | None:
    script = REPO / "hack" / "plot_timeline.py"
    if not script.exists():
        say("(hack/plot_timeline.py is not there yet: no picture)")
        return None
    OUT.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [sys.executable, str(script), "--prometheus", ENV.prometheus_url,
         "--namespace", DEMO_NAMESPACE, "--scaler", SCALER, "--minutes", f"{minutes:.1f}",
         "--out", str(OUT)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        say(f"(plotting failed: {result.stderr.strip()[-800:]})")
        return None
    return OUT


def stop_operator(operator: OperatorProcess) -> None:
    if operator.process is not None and operator.process.poll() is None:
        say(f"== stopping the operator (pid {operator.process.pid})")
    operator.stop()  # an image's container is removed even when it already exited
    shutil.rmtree(TOKEN_MOUNT, ignore_errors=True)  # its 2-hour token


def main() -> int:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    install_chart()
    operator = start_operator()
    target: Path | None = None
    runner: PodRunner | None = None
    try:
        target = register_prometheus_target(operator.port)
        apply_example()
        runner = PodRunner(
            Path(ADMIN), DEMO_NAMESPACE, f"app.kubernetes.io/name={SCALER}",
            celery_worker_command(QUEUE),
            celery_worker_env(ENV.amqp_url, WORK_DIR / "processed.log",
                              prefetch_multiplier=1, work_seconds=0.1),
            WORK_DIR / "workers",
        ).start()
        say("== one real Celery worker per Running pod (the pod runner); waiting for Ready")
        wait_until(lambda: len(runner.serving()) == 1 if runner else False, timeout=60,
                   what="the first Celery worker")
        wait_until(ready, timeout=60, what="the QueueScaler to be Ready")
        say(f"== publishing {BURST} is_prime tasks to queue {QUEUE!r} (while the table runs)")
        started = time.monotonic()
        numbers = [random.randrange(10**9, 10**10) for _ in range(BURST)]
        publisher = threading.Thread(
            target=publish_is_prime_tasks, args=(ENV.amqp_url, QUEUE, numbers),
            name="publisher", daemon=True,
        )
        publisher.start()
        live_table(runner, started, timeout=300)
        publisher.join(timeout=30)
        # Let Prometheus scrape the last point (it scrapes every 2 s) before drawing.
        time.sleep(4)
        picture = plot((time.monotonic() - started) / 60 + 1)
    finally:
        if runner is not None:
            say("== stopping the Celery workers (pod runner)")
            runner.stop()
        stop_operator(operator)
        if target is not None:
            target.unlink(missing_ok=True)
    uid = kubectl("get", "qs", SCALER, "-n", DEMO_NAMESPACE, "-o", "jsonpath={.metadata.uid}")
    events = kubectl("get", "events", "-n", DEMO_NAMESPACE, "--field-selector",
                     f"involvedObject.kind=QueueScaler,involvedObject.uid={uid}",
                     "--sort-by", ".lastTimestamp", "-o",
                     "custom-columns=REASON:.reason,MESSAGE:.message", "--no-headers")
    scaled = [line for line in events.splitlines() if line.startswith("Scaled")]
    say("")
    say("== the QueueScaler's scale Events (kubectl describe qs shows them too)")
    for line in scaled[-8:]:
        say("   " + " ".join(line.split()))
    say("")
    if picture is not None:
        say(f"The timeline (backlog, desired and current replicas, from Prometheus): {picture}")
    say(f"Demo done in {time.monotonic() - began:.0f}s. The environment keeps running "
        f"(kubectl --kubeconfig {ADMIN} get qs -A); stop it with: make testenv-down")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except AssertionError as error:  # a bounded wait of the test kit gave up
        sys.exit(f"demo: {error}")
