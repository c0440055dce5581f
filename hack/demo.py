#!/usr/bin/env python3
"""`make demo`, the Python part: queuescaler sizing a Celery pool on the local cluster.

hack/demo.sh starts the environment and runs this with the virtualenv's Python. Steps:

1. the CRD and the Helm chart, installed with helm (`replicaCount=0`: the chart's own
   operator pod cannot run here, kwok's pods are fake);
2. the operator as a LOCAL process, under a token of the chart's ServiceAccount (its own
   kubeconfig in the cache), so it has exactly the RBAC the chart grants, no more;
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
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("QS_CACHE", Path.home() / ".cache" / "queuescaler"))
sys.path[:0] = [str(REPO / "tests"), str(REPO / "operator")]

from e2e.podrunner import PodRunner, celery_worker_command, celery_worker_env  # noqa: E402
from e2e.publisher import delete_queue, publish_is_prime_tasks  # noqa: E402

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


def read_env() -> dict[str, str]:
    lines = (CACHE / "run" / "env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


ENV = read_env()
KUBECTL = str(Path(ENV["QS_BIN"]) / "kubectl")
HELM = str(Path(ENV["QS_BIN"]) / "helm")
ADMIN = ENV["QS_KUBECONFIG"]


def run(*command: str, input: str | None = None, kubeconfig: str = ADMIN) -> str:
    result = subprocess.run(
        list(command), input=input, capture_output=True, text=True, timeout=180,
        env={**os.environ, "KUBECONFIG": kubeconfig}, check=False,
    )
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[:3])} ... failed:\n{result.stderr.strip()}")
    return result.stdout


def kubectl(*args: str, input: str | None = None) -> str:
    return run(KUBECTL, *args, input=input)


def apply(manifest: dict[str, Any], namespace: str) -> None:
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))


def wait_for(check: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
            if value:
                return value
        except Exception:  # still settling: try again until the deadline
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: gave up waiting {timeout:.0f}s for {what}")
        time.sleep(every)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def service_account_kubeconfig(
    kubectl_bin: str, admin_kubeconfig: str, namespace: str, account: str, out: Path,
    *, duration: str = "2h",
) -> Path:
    """A kubeconfig that authenticates as `account` with a fresh token (TokenRequest API).

    The cluster (server, CA) is taken from the admin kubeconfig; nothing else of it is kept.
    """
    env = {**os.environ, "KUBECONFIG": admin_kubeconfig}

    def call(*args: str) -> str:
        return subprocess.run(
            [kubectl_bin, *args], capture_output=True, text=True, timeout=60, env=env,
            check=True,
        ).stdout

    token = call("create", "token", account, "-n", namespace, "--duration", duration).strip()
    view = json.loads(call("config", "view", "--raw", "--minify", "-o", "json"))
    cluster = view["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "local", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token}}],
        "contexts": [{"name": account, "context": {"cluster": "local", "user": account,
                                                   "namespace": namespace}}],
        "current-context": account,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


# --- the steps --------------------------------------------------------------------------------


def install_chart() -> None:
    say("== installing the QueueScaler CRD and the chart (helm, replicaCount=0)")
    kubectl("apply", "--server-side", "--force-conflicts", "-f",
            str(REPO / "crds" / "queuescaler.yaml"))
    kubectl("wait", "--for=condition=Established", "--timeout=60s",
            "crd/queuescalers.queuescaler.io")
    # The chart's crds/ are installed by helm when missing; the apply above keeps ours current.
    run(HELM, "upgrade", "--install", RELEASE, str(REPO / "charts" / "queuescaler"),
        "--namespace", OPERATOR_NAMESPACE, "--create-namespace", "--set", "replicaCount=0",
        "--wait", "--timeout", "2m")
    say(f"   release {RELEASE} in {OPERATOR_NAMESPACE}: ServiceAccount {SERVICE_ACCOUNT}, "
        "cluster-wide RBAC, metrics Service (its operator Deployment is scaled to 0: kwok "
        "pods are fake, the operator runs here as a process instead)")


def start_operator(port: int) -> subprocess.Popen[bytes]:
    kubeconfig = service_account_kubeconfig(
        KUBECTL, ADMIN, OPERATOR_NAMESPACE, SERVICE_ACCOUNT, WORK_DIR / "operator.kubeconfig"
    )
    log_path = WORK_DIR / "operator.log"
    say(f"== starting the operator as system:serviceaccount:{OPERATOR_NAMESPACE}:"
        f"{SERVICE_ACCOUNT} (log: {log_path})")
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "queuescaler", "run", "--metrics-host", "127.0.0.1",
             "--metrics-port", str(port), "--log-format", "json",
             "--status-refresh-seconds", "2"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
            env={**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1",
                 "PYTHONPATH": str(REPO / "operator")},
        )

    def ready() -> bool:
        if process.poll() is not None:
            raise SystemExit(f"the operator exited ({process.returncode}):\n"
                             + log_path.read_text()[-2000:])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
            return bool(r.status == 200)

    wait_for(ready, 60, "the operator's /readyz")
    say(f"   ready: pid {process.pid}, metrics on http://127.0.0.1:{port}/metrics")
    return process


def register_prometheus_target(port: int) -> Path:
    target = Path(ENV["QS_PROMETHEUS_TARGETS"]) / "queuescaler-demo.json"
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
    delete_queue(ENV["QS_AMQP_URL"], QUEUE)
    for name in ("configmap.yaml", "deployment.yaml"):
        kubectl("apply", "-n", DEMO_NAMESPACE, "-f", str(EXAMPLE / name))
    kubectl("scale", "deployment", SCALER, "-n", DEMO_NAMESPACE, "--replicas", "1")
    # The example's Secret names cluster DNS; here RabbitMQ is a local process.
    secret = yaml.safe_load((EXAMPLE / "secret.yaml").read_text())
    secret["stringData"] = {"amqpUrl": ENV["QS_AMQP_URL"],
                            "managementUrl": ENV["QS_MANAGEMENT_URL"]}
    apply(secret, DEMO_NAMESPACE)
    scaler = yaml.safe_load((EXAMPLE / "queuescaler.yaml").read_text())
    scaler["spec"].update({k: v for k, v in DEMO_SPEC.items() if k != "behavior"})
    scaler["spec"]["source"]["rabbitmq"]["vhost"] = ENV["QS_RABBITMQ_VHOST"]
    behavior = scaler["spec"].setdefault("behavior", {})
    for direction, limits in DEMO_SPEC["behavior"].items():
        behavior.setdefault(direction, {}).update(limits)
    apply(scaler, DEMO_NAMESPACE)
    say(f"   QueueScaler {SCALER}: 1..{MAX_REPLICAS} replicas, 20 tasks per replica, "
        "drain within 30 s; short demo windows (scale-down after 15 s of calm)")


def status() -> dict[str, Any]:
    body = json.loads(kubectl("get", "qs", SCALER, "-n", DEMO_NAMESPACE, "-o", "json"))
    found: dict[str, Any] = body.get("status") or {}
    return found


def condition(found: dict[str, Any], kind: str) -> str | None:
    for entry in found.get("conditions") or ():
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return None


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
        found = status()
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
        [sys.executable, str(script), "--prometheus", ENV["QS_PROMETHEUS_URL"],
         "--namespace", DEMO_NAMESPACE, "--scaler", SCALER, "--minutes", f"{minutes:.1f}",
         "--out", str(OUT)],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if result.returncode != 0:
        say(f"(plotting failed: {result.stderr.strip()[-800:]})")
        return None
    return OUT


def stop_operator(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        say(f"== stopping the operator (pid {process.pid})")
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def main() -> int:
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    began = time.monotonic()
    install_chart()
    port = free_port()
    operator = start_operator(port)
    target: Path | None = None
    runner: PodRunner | None = None
    try:
        target = register_prometheus_target(port)
        apply_example()
        runner = PodRunner(
            Path(ADMIN), DEMO_NAMESPACE, f"app.kubernetes.io/name={SCALER}",
            celery_worker_command(QUEUE),
            celery_worker_env(ENV["QS_AMQP_URL"], WORK_DIR / "processed.log",
                              prefetch_multiplier=1, work_seconds=0.1),
            WORK_DIR / "workers",
        ).start()
        say("== one real Celery worker per Running pod (the pod runner); waiting for Ready")
        wait_for(lambda: len(runner.serving()) == 1 if runner else False, 60,
                 "the first Celery worker")
        wait_for(lambda: condition(status(), "Ready") == "True", 60,
                 "the QueueScaler to be Ready")
        say(f"== publishing {BURST} is_prime tasks to queue {QUEUE!r} (while the table runs)")
        started = time.monotonic()
        numbers = [random.randrange(10**9, 10**10) for _ in range(BURST)]
        publisher = threading.Thread(
            target=publish_is_prime_tasks, args=(ENV["QS_AMQP_URL"], QUEUE, numbers),
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
    sys.exit(main())
