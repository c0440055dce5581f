"""`kubectl queuescaler simulate` and `recommend` against the real thing: the QueueScaler read
from the real apiserver, the traffic from the series a real Prometheus scraped off the real
operator while real pika workers drained real messages.

The run (once per module): a pool at zero, three batches of 200 messages 15 s apart, the pool
woken, scaled and back at zero; Prometheus scrapes the operator all along (a file_sd target,
as tests/integration/test_observability.py does). The commands run as users run them: the
`kubectl-queuescaler` executable through kubectl's plugin lookup, with the test cluster's
kubeconfig.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from queuescaler_testkit.env import CACHE, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory, pika_worker_command, pika_worker_env
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.publisher import publish_messages, read_processed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

JOB = "queuescaler"
BATCHES = 3
BATCH = 200
WORK_SECONDS = 0.2
PLUGIN = Path(sys.executable).parent / "kubectl-queuescaler"
"""The console script pip installs beside the interpreter running the tests."""


@dataclass(frozen=True)
class RecordedRun:
    namespace: str
    name: str
    started: float


def scraped(testenv: TestEnv, promql: str) -> float | None:
    query = urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(f"{testenv.prometheus_url}/api/v1/query?{query}",
                                timeout=30) as response:
        result = json.load(response)["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def recorded(
    testenv: TestEnv, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RecordedRun]:
    instance = f"127.0.0.1:{operator.port}"
    target = testenv.prometheus_targets / f"test-tune-{operator.port}.json"
    target.write_text(json.dumps([{"targets": [instance], "labels": {}}]))
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", namespace)
    tmp = tmp_path_factory.mktemp("tune")
    runners = PodRunnerFactory(testenv.kubeconfig, tmp / "workers")
    pool = Pool(testenv, namespace)
    processed = tmp / "processed.log"
    try:
        up = f'up{{job="{JOB}", instance="{instance}"}}'
        wait_until(lambda: scraped(testenv, up) == 1, timeout=60,
                   what=f"Prometheus to scrape the operator ({up} == 1)")
        pool.create()
        runners(namespace, f"app={pool.name}", pika_worker_command,
                pika_worker_env(testenv.amqp_url, pool.queue, processed,
                                work_seconds=WORK_SECONDS))
        pool.apply_scaler(minReplicas=0, maxReplicas=5, target={"messagesPerReplica": 50})
        pool.wait_condition("Ready", "True")
        current = (f'queuescaler_current_replicas{{job="{JOB}", '
                   f'scaler_namespace="{namespace}", scaler="{pool.name}"}}')
        wait_until(lambda: scraped(testenv, current) == 0, timeout=60,
                   what="Prometheus to hold the idle pool's series")
        started = time.time()
        ids: list[str] = []
        for batch in range(BATCHES):
            if batch:
                time.sleep(15)  # traffic over time: the publish rate is a recorded series
            ids += publish_messages(testenv.amqp_url, pool.queue, BATCH, prefix=f"b{batch}-")
        wait_until(lambda: all(read_processed(processed).get(i) for i in ids), timeout=180,
                   what="every message to be processed")
        wait_until(lambda: pool.replicas() == 0, timeout=120, what="the pool back at zero")
        wait_until(lambda: scraped(testenv, current) == 0, timeout=30,
                   what="Prometheus to see the pool back at zero")
        yield RecordedRun(namespace, pool.name, started)
    finally:
        runners.stop_all()
        pool.delete_queue()
        testenv.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        target.unlink(missing_ok=True)


def kubectl_plugin(testenv: TestEnv, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`kubectl queuescaler ...`, found by kubectl's plugin lookup on PATH."""
    assert PLUGIN.exists(), f"{PLUGIN} is not installed (pip install -e . installs it)"
    env = {**os.environ, "KUBECONFIG": str(testenv.kubeconfig),
           "PATH": os.pathsep.join([str(PLUGIN.parent), str(testenv.bin), os.environ["PATH"]])}
    return subprocess.run([str(testenv.bin / "kubectl"), "queuescaler", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_plugin_reads_the_queuescaler_from_the_cluster(
    testenv: TestEnv, recorded: RecordedRun, tmp_path: Path
) -> None:
    key = f"{recorded.namespace}/{recorded.name}"
    result = kubectl_plugin(testenv, tmp_path, "simulate", "--queuescaler", key,
                            "--trace", "keda-rate", "--no-png")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"QueueScaler {key} from the cluster ({key})" in result.stdout

    missing = kubectl_plugin(testenv, tmp_path, "simulate", "--queuescaler",
                             f"{recorded.namespace}/nobody", "--trace", "keda-rate")
    assert missing.returncode == 1
    assert f"QueueScaler {recorded.namespace}/nobody not found in the cluster" in missing.stderr


def test_simulate_replays_the_series_prometheus_recorded(
    testenv: TestEnv, recorded: RecordedRun, tmp_path: Path
) -> None:
    key = f"{recorded.namespace}/{recorded.name}"
    seconds = int(time.time() - recorded.started) + 30
    png = tmp_path / "simulate.png"
    result = kubectl_plugin(
        testenv, tmp_path, "simulate", "--queuescaler", key, "--prometheus",
        testenv.prometheus_url, "--range", f"{seconds}s", "--step", "2s", "--compare",
        "--png", str(png),
    )
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    print(out)
    assert f"the operator's series of {key} over {seconds} s" in out
    assert "... fetching publish_rate of" in result.stderr
    service = re.search(r"service time +([\d.]+) s +(.*)", out)
    assert service, out
    # the pika workers take 0.2 s a message; the operator's per-replica rate is at most that
    # fast, and a lower bound until it saw the pool saturated
    assert service.group(2).startswith("estimated: concurrency 1 / per-replica rate")
    assert 0.15 <= float(service.group(1)) <= 2.0
    replayed = re.search(r"replayed: ([\d,]+) s, ([\d,]+) messages", out)
    assert replayed, out
    published = int(replayed.group(2).replace(",", ""))
    assert BATCH <= published <= 3 * BATCHES * BATCH, "the recorded rate is not the traffic"
    for row in ("| queuescaler ", "| keda-queue-length ", "| oracle ", "| recorded "):
        assert row in out
    # The replay of this run's traffic with the spec that ran it follows the real replica
    # curve, as far as the recording tells: at least 45% of the seconds within one replica of
    # the recorded count once the replay is taken up to 5 s earlier (one lag for the whole
    # run), the same peak give or take one, replica-hours within 30% plus one replica over the
    # replayed seconds (on a recording this short, a replica held 20 s longer is a fifth of the
    # cost). A loose guard: it fails a replay that does not follow the traffic, not one 20 s
    # late or with twice the messages (a review built both and they passed). Not closer:
    # RabbitMQ's publish rate is late and overshoots (a batch of 200 read 40/s for 6 s, 6 to
    # 12 s after the backlog grew; simulate moves such rises back to the growth), the recorded
    # backlog holds stale counts between statistics (28 ready for 6 s beside 4 busy consumers,
    # the worst run below), and every replayed pod takes the one estimated start delay.
    # Measured on 23 recordings on 2026-12-03, with the move: 45% to 89% second by second,
    # 52% to 90% at the best lag (before it, second by second: 38% to 87%; a CI run read 38%
    # against the 60% asked then).
    like = re.search(r"recorded pool: (\d+)% of the seconds within one replica \((\d+)% taken "
                     r"\d s earlier, the best of 0 to 5 s\), [\d.]+ replicas apart on "
                     r"average, peak (\d+) replayed against (\d+) recorded", out)
    assert like, out
    assert int(like.group(2)) >= 45
    assert abs(int(like.group(3)) - int(like.group(4))) <= 1
    hours = {}
    for row in ("queuescaler", "recorded"):
        found = re.search(rf"\| {row} +\|[^|]*\|[^|]*\| +([\d.]+) \|", out)
        assert found, out
        hours[row] = float(found.group(1))
    one_replica = int(replayed.group(1).replace(",", "")) / 3600  # replica-hours
    assert abs(hours["queuescaler"] - hours["recorded"]) <= 0.3 * hours["recorded"] + one_replica
    assert re.search(r"pod start delay +[\d.]+ s +estimated: median of \d+ scale-up", out), out
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    kept = CACHE / "out" / "tune-simulate.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(png.read_bytes())


def test_recommend_on_the_recorded_series_prints_a_patch_the_apiserver_accepts(
    testenv: TestEnv, recorded: RecordedRun, tmp_path: Path
) -> None:
    key = f"{recorded.namespace}/{recorded.name}"
    seconds = int(time.time() - recorded.started) + 30
    result = kubectl_plugin(
        testenv, tmp_path, "recommend", "--queuescaler", key, "--prometheus",
        testenv.prometheus_url, "--range", f"{seconds}s", "--step", "2s", "--p95-wait", "2m",
    )
    out = result.stdout
    print(out)
    assert result.returncode in (0, 1), out + result.stderr
    assert "| 1 (as given) " in out
    if "--patch-file PATCH.yaml):" not in out:
        return  # as given is the cheapest, or none meets the goal: nothing to apply
    patch = yaml.safe_load(out.split("--patch-file PATCH.yaml):", 1)[1])
    patch_file = tmp_path / "patch.yaml"
    patch_file.write_text(yaml.safe_dump(patch))
    testenv.kubectl("patch", "queuescaler", recorded.name, "-n", recorded.namespace,
                    "--type", "merge", "--patch-file", str(patch_file), "--dry-run=server")
