"""Observability against the real thing: a real Prometheus scrapes the real operator during a
real scaling run, and every query the dashboard and the alerts ship is run against it.

The run (once per module): a pool at zero with real pika consumers, a burst of 500 messages, the
pool woken and scaled up, every message processed, the pool back at zero. Prometheus scrapes the
operator all along (a file_sd target dropped in `testenv.prometheus_targets`). Then:
- each dashboard expression, its variables replaced by the run's values, returns data;
- each alert expression parses, and returns data or (nothing being wrong) its selectors do;
- `promtool check metrics` is clean on a real scrape, and no label carries a URL or a user;
- /healthz and /readyz answer;
- hack/plot_timeline.py draws the run from Prometheus's answers into a PNG.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client import parser

from queuescaler_testkit.env import CACHE, REPO, TestEnv, wait_until
from queuescaler_testkit.operator_process import OperatorProcess
from queuescaler_testkit.podrunner import PodRunnerFactory, pika_worker_command, pika_worker_env
from queuescaler_testkit.pool import Pool
from queuescaler_testkit.publisher import publish_messages, read_processed

pytestmark = [pytest.mark.integration, pytest.mark.timeout(420)]

DASHBOARD = REPO / "charts" / "queuescaler" / "dashboards" / "queuescaler.json"
RULES = REPO / "charts" / "queuescaler" / "rules" / "queuescaler.rules.yaml"
PLOT = REPO / "hack" / "plot_timeline.py"
JOB = "queuescaler"
"""The scrape job the test environment's Prometheus gives file_sd targets."""
BURST = 500

VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
SELECTOR = re.compile(r'(?<![\w"])(queuescaler_\w+|process_\w+|up)(?![\w"])(\{[^}]*\})?')
"""Vector selectors of our metrics (and `up`) inside a PromQL expression."""
LABEL_VALUES = re.compile(r"^label_values\((?:(?P<selector>.+),\s*)?(?P<label>\w+)\)$")


# --- what the dashboard and the rules contain (read at collection: one test per query) ---


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(container: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in container.get("panels") or ():
        yield panel
        yield from panels(panel)  # collapsed rows keep their panels inside


def dashboard_queries() -> list[Any]:
    return [
        pytest.param(target["expr"], id=f"{panel['title']}/{target['refId']}")
        for panel in panels(dashboard())
        for target in panel.get("targets") or ()
    ]


def dashboard_variables() -> list[Any]:
    return [
        pytest.param(variable["name"], variable["query"]["query"], id=variable["name"])
        for variable in dashboard()["templating"]["list"]
        if variable["type"] == "query"
    ]


def alert_rules() -> list[Any]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [
        pytest.param(rule["expr"], id=rule["alert"])
        for group in groups
        for rule in group["rules"]
        if "alert" in rule
    ]


def substitute(expr: str, values: dict[str, str]) -> str:
    """Grafana's variables replaced the way Grafana would; an unknown one fails the test."""

    def one(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        assert name in values, f"the dashboard uses ${name}, which the test does not know"
        return values[name]

    return VARIABLE.sub(one, expr)


def selectors(expr: str) -> list[str]:
    return [name + (matchers or "") for name, matchers in SELECTOR.findall(expr)]


# --- talking to Prometheus ---


def prometheus_api(testenv: TestEnv, path: str, params: dict[str, str]) -> Any:
    """GET (as form POST) an API path; fail with Prometheus's own error message."""
    url = f"{testenv.prometheus_url}/api/v1/{path}"
    data = urllib.parse.urlencode(params).encode()
    try:
        with urllib.request.urlopen(url, data=data, timeout=30) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        raise AssertionError(f"Prometheus answered {error.code} to {params}: {detail}") from error
    assert body["status"] == "success", body
    return body["data"]


def query(testenv: TestEnv, promql: str) -> list[dict[str, Any]]:
    data = prometheus_api(testenv, "query", {"query": promql})
    result: list[dict[str, Any]] = data["result"]
    return result


def scalar_value(testenv: TestEnv, promql: str) -> float | None:
    result = query(testenv, promql)
    return float(result[0]["value"][1]) if result else None


# --- the scaling run ---


@dataclass(frozen=True)
class ScalingRun:
    namespace: str
    scaler: str
    instance: str
    started: float
    ended: float

    def matchers(self) -> str:
        return f'scaler_namespace="{self.namespace}", scaler="{self.scaler}"'


@pytest.fixture(scope="module")
def run(
    testenv: TestEnv, operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ScalingRun]:
    """Prometheus scrapes the operator during one burst: wake, scale up, drain, back to zero."""
    instance = f"127.0.0.1:{operator.port}"
    target = testenv.prometheus_targets / f"test-observability-{operator.port}.json"
    target.write_text(json.dumps([{"targets": [instance], "labels": {}}]))
    namespace = f"t-{uuid.uuid4().hex[:8]}"
    testenv.kubectl("create", "namespace", namespace)
    tmp = tmp_path_factory.mktemp("observability")
    runners = PodRunnerFactory(testenv.kubeconfig, tmp / "workers")
    pool = Pool(testenv, namespace)
    processed = tmp / "processed.log"
    try:
        up = f'up{{job="{JOB}", instance="{instance}"}}'
        wait_until(lambda: scalar_value(testenv, up) == 1, timeout=60,
                   what=f"Prometheus to scrape the operator ({up} == 1)")
        pool.create()
        runners(namespace, f"app={pool.name}", pika_worker_command,
                pika_worker_env(testenv.amqp_url, pool.queue, processed, work_seconds=0.2))
        pool.apply_scaler(minReplicas=0, maxReplicas=5, target={"messagesPerReplica": 100})
        pool.wait_condition("Ready", "True")
        scraped = (f'queuescaler_current_replicas{{job="{JOB}", '
                   f'scaler_namespace="{namespace}", scaler="{pool.name}"}}')
        wait_until(lambda: scalar_value(testenv, scraped) == 0, timeout=60,
                   what="Prometheus to hold the idle pool's series")
        started = time.time()

        ids = publish_messages(testenv.amqp_url, pool.queue, BURST)
        wait_until(lambda: pool.replicas() >= 3, timeout=60, what="the pool to scale up")
        wait_until(lambda: all(read_processed(processed).get(i) for i in ids), timeout=180,
                   what="every message to be processed")
        wait_until(lambda: pool.replicas() == 0, timeout=120, what="the pool back at zero")
        wait_until(lambda: scalar_value(testenv, scraped) == 0, timeout=30,
                   what="Prometheus to see the pool back at zero")
        yield ScalingRun(namespace, pool.name, instance, started, time.time())
    finally:
        runners.stop_all()
        pool.delete_queue()
        testenv.kubectl("delete", "namespace", namespace, "--wait=false", check=False)
        target.unlink(missing_ok=True)


def variable_values(run: ScalingRun) -> dict[str, str]:
    seconds = int(time.time() - run.started) + 30
    return {
        "job": JOB,
        "namespace": run.namespace,
        "scaler": run.scaler,
        "source": "rabbitmq",  # the run's QueueScaler reads RabbitMQ
        "__rate_interval": "1m",
        "__interval": "10s",
        "__range": f"{seconds}s",
    }


# --- the tests ---


def test_the_dashboard_has_the_variables_and_panels_users_need() -> None:
    model = dashboard()
    variables = {v["name"]: v for v in model["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in ("namespace", "source", "scaler"):
        assert variables[name]["query"]["query"].startswith("label_values(")
    # The source kind (rabbitmq, redis) narrows the QueueScalers offered, and the main
    # panel's legend names it.
    assert "queuescaler_scaler_info" in variables["source"]["query"]["query"]
    assert 'source=~"$source"' in variables["scaler"]["query"]["query"]
    main = next(p for p in panels(model)
                if p["title"] == "Backlog against desired and current replicas")
    assert all("{{source}}" in t["legendFormat"] for t in main["targets"]), main["targets"]
    titles = {panel["title"] for panel in panels(model)}
    for needed in ("Backlog against desired and current replicas", "Publish and ack rates",
                   "Decisions by reason", "Scale events", "Sampling latency",
                   "Sampling errors", "Conditions", "Fallback, limits and failures"):
        assert needed in titles
    exprs = [t["expr"] for p in panels(model) for t in p.get("targets") or ()]
    assert any("histogram_quantile(" in e for e in exprs)
    for panel in panels(model):
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel.get("targets"), panel["title"]
    ids = [panel["id"] for panel in panels(model)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"


def test_prometheus_scrapes_the_operator(testenv: TestEnv, run: ScalingRun) -> None:
    assert scalar_value(testenv, f'up{{job="{JOB}", instance="{run.instance}"}}') == 1
    peak = scalar_value(
        testenv,
        f"max_over_time(sum(queuescaler_backlog_messages{{{run.matchers()}}})"
        f"[{int(time.time() - run.started) + 10}s:2s])",
    )
    assert peak is not None and peak > 0, "the burst never showed in the scraped backlog"


@pytest.mark.parametrize(("name", "definition"), dashboard_variables())
def test_dashboard_variable_lists_the_run(
    testenv: TestEnv, run: ScalingRun, name: str, definition: str
) -> None:
    values = variable_values(run)
    parsed = LABEL_VALUES.match(substitute(definition, values))
    assert parsed, f"${name} is not a label_values() query: {definition}"
    params = {"match[]": parsed["selector"]} if parsed["selector"] else {}
    url = (f"{testenv.prometheus_url}/api/v1/label/{parsed['label']}/values?"
           + urllib.parse.urlencode(params))
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    assert values[name] in body["data"], f"${name} offers {body['data']}"


@pytest.mark.parametrize("expr", dashboard_queries())
def test_dashboard_query_returns_data(testenv: TestEnv, run: ScalingRun, expr: str) -> None:
    """Over the run, as the panel asks Grafana's range (an instant query at the end asked
    whether an idle pool's rate was still being reported at that very second: the full
    suite failed it once on a loaded machine for both publish-rate panels)."""
    promql = substitute(expr, variable_values(run))
    data = prometheus_api(testenv, "query_range", {
        "query": promql, "start": f"{run.started:.0f}", "end": f"{time.time():.0f}",
        "step": "5",
    })
    assert any(series["values"] for series in data["result"]), f"no data for {promql}"


def narrowed(selector: str, run: ScalingRun) -> str:
    """The selector limited to this run's series (so that other tests' leftovers do not count)."""
    name, _, matchers = selector.partition("{")
    extra = f'instance="{run.instance}"' if name == "up" else run.matchers()
    inside = matchers.rstrip("}")
    return f"{name}{{{inside}, {extra}}}" if inside else f"{name}{{{extra}}}"


@pytest.mark.parametrize("expr", alert_rules())
def test_alert_expression_parses_and_its_selectors_find_the_run(
    testenv: TestEnv, run: ScalingRun, expr: str
) -> None:
    alerting = query(testenv, expr)  # an alert's condition is empty when all is well
    about_run = [r for r in alerting if r["metric"].get("scaler_namespace") == run.namespace]
    assert not about_run, f"the healthy run trips {expr}: {about_run}"
    found = selectors(expr)
    assert found, f"no selector recognised in {expr}"
    for selector in found:
        mine = narrowed(selector, run)
        assert query(testenv, mine), f"{mine} has no series in Prometheus"


def test_promtool_check_metrics_is_clean_on_a_real_scrape(
    run: ScalingRun, operator: OperatorProcess
) -> None:
    promtool = shutil.which("promtool")
    assert promtool, "promtool is not on PATH (Debian: apt-get install prometheus)"
    text = operator.metrics()
    assert f'scaler_namespace="{run.namespace}"' in text
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                            text=True, timeout=60)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, output


def test_no_label_of_a_real_scrape_carries_a_url_or_a_user(
    testenv: TestEnv, run: ScalingRun, operator: OperatorProcess
) -> None:
    text = operator.metrics()
    credentials = testenv.amqp_url.split("//", 1)[1].split("@", 1)[0]
    user, _, password = credentials.partition(":")
    assert password and password not in text
    for family in parser.text_string_to_metric_families(text):
        for sample in family.samples:
            for value in sample.labels.values():
                assert "://" not in value and "@" not in value, (sample.name, value)
                assert value != user, (sample.name, value)


def test_health_and_readiness_endpoints_answer(run: ScalingRun, operator: OperatorProcess) -> None:
    for path, body in (("/healthz", "ok"), ("/readyz", "ready")):
        with urllib.request.urlopen(f"http://127.0.0.1:{operator.port}{path}", timeout=5) as r:
            assert r.status == 200
            assert r.read().decode().strip() == body


def load_plot_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("plot_timeline", PLOT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


def test_plot_timeline_draws_the_run_from_prometheus(
    testenv: TestEnv, run: ScalingRun, tmp_path: Path
) -> None:
    minutes = (time.time() - run.started) / 60 + 1
    out = tmp_path / "timeline.png"
    result = subprocess.run(
        [sys.executable, str(PLOT), "--prometheus", testenv.prometheus_url,
         "--namespace", run.namespace, "--scaler", run.scaler, "--minutes", f"{minutes:.2f}",
         "--out", str(out)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    png = out.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000
    kept = CACHE / "out" / "observability-timeline.png"
    kept.parent.mkdir(parents=True, exist_ok=True)
    kept.write_bytes(png)

    # What it drew is the run: the burst's backlog, the scale up and the return to zero.
    series = {s.label: s for s in load_plot_script().fetch(
        testenv.prometheus_url, run.namespace, run.scaler, minutes)}
    assert max(series["backlog (ready + unacked)"].values) > 0
    assert max(series["desired replicas"].values) >= 3
    assert max(series["current replicas"].values) >= 3
    current = series["current replicas"].values
    peak = current.index(max(current))
    assert 0 in current[peak:], f"no return to zero after the peak: {current[peak:]}"
    assert set(series["max replicas"].values) == {5}
