"""What `queuescaler simulate` and `recommend` read: the QueueScaler (a YAML file, or the
cluster), and the traffic (a CSV, the operator's own series in Prometheus, or a named
synthetic trace). The spec goes through the operator's own parser, so a spec the operator
would refuse is refused here with the same words.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import yaml

from queuescaler.core.spec import SpecError
from queuescaler.sim import replay as sim
from queuescaler.sim.replay import Progress
from queuescaler.sim.traces import NAMED
from queuescaler.sim.traffic import publish_rates_filled
from queuescaler.sources.registry import parse_spec

PROMETHEUS_TIMEOUT = 30.0
"""Seconds one Prometheus query may take before the command gives up."""
MAX_POINTS = 10_000
"""Points per series at most (Prometheus refuses more than 11,000)."""
MIN_STEP = 1.0
"""The smallest default step: the replay's own (finer than the scrape interval, a point
repeats the sample before it)."""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> float:
    """Seconds from `30`, `30s`, `90m`, `1h30m`, `7d` (Prometheus' units)."""
    text = text.strip()
    try:
        seconds = float(text)
    except ValueError:
        parts = _DURATION.findall(text)
        if not parts or "".join(n + u for n, u in parts) != text:
            raise ValueError(f"{text!r} is not a duration (e.g. 30s, 90m, 7d)") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"{text!r} must be a positive duration")
    return seconds


def duration_option(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    """A click callback: the option's duration in seconds."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


# --- the QueueScaler ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scaler:
    """The QueueScaler under test: its name and its raw, validated spec."""

    namespace: str
    name: str
    spec: dict[str, Any]
    origin: str
    """Where the spec came from, in words."""

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def split_key(key: str) -> tuple[str, str]:
    namespace, slash, name = key.partition("/")
    if not slash or not namespace or not name or "/" in name:
        raise click.BadParameter(f"{key!r} is not NAMESPACE/NAME", param_hint="'--queuescaler'")
    return namespace, name


def scaler_from_file(path: Path, key: str | None) -> Scaler:
    """The QueueScaler in a YAML file (of several documents, the one named by `key` when
    there are several)."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as error:
        raise click.ClickException(f"cannot read {path}: {error}") from None
    found = [d for d in documents if isinstance(d, dict) and d.get("kind") == "QueueScaler"]
    if key is not None:
        found = [d for d in found if _metadata(d)[1] == split_key(key)[1]]
    if not found:
        which = f" named {key}" if key else ""
        raise click.ClickException(f"{path} holds no QueueScaler{which} (kind: QueueScaler)")
    if len(found) > 1:
        names = ", ".join("/".join(_metadata(d)) for d in found)
        raise click.ClickException(f"{path} holds several QueueScalers ({names}): choose one "
                                   "with --queuescaler NAMESPACE/NAME")
    namespace, name = _metadata(found[0])
    if key is not None:
        namespace = split_key(key)[0]
    return _validated(namespace, name, found[0].get("spec"), str(path))


def _metadata(document: Mapping[str, Any]) -> tuple[str, str]:
    metadata = document.get("metadata") or {}
    return str(metadata.get("namespace") or "default"), str(metadata.get("name") or "unnamed")


def _validated(namespace: str, name: str, spec: object, origin: str) -> Scaler:
    """The spec through the operator's own parser: the same refusal, in the same words, as
    the operator's Ready=False InvalidSpec condition."""
    if not isinstance(spec, dict):
        raise click.ClickException(f"invalid spec in {origin}: spec: missing")
    try:
        parse_spec(spec)
    except SpecError as error:
        raise click.ClickException(f"invalid spec in {origin}: {error}") from None
    return Scaler(namespace, name, spec, origin)


def scaler_from_cluster(key: str, context: str | None) -> Scaler:
    """The QueueScaler as the cluster stores it (kubeconfig, else the pod's ServiceAccount)."""
    from kubernetes import client as k8s
    from kubernetes import config as k8s_config
    from kubernetes.client.exceptions import ApiException
    from kubernetes.config.config_exception import ConfigException

    namespace, name = split_key(key)
    # As `queuescaler run` chooses (cli.load_kube_credentials), with kubectl's --context:
    # KUBECONFIG as it is now (the client library read its own copy at import).
    paths = os.environ.get("KUBECONFIG") or "~/.kube/config"
    try:
        if any(os.path.exists(os.path.expanduser(p)) for p in paths.split(os.pathsep) if p):
            k8s_config.load_kube_config(config_file=paths, context=context)
        else:
            k8s_config.load_incluster_config()
    except (ConfigException, OSError) as error:
        raise click.ClickException(
            f"cannot read QueueScaler {key} from the cluster: {error} (or give its file with -f)"
        ) from None
    api = k8s.CustomObjectsApi()
    try:
        body = api.get_namespaced_custom_object(
            "queuescaler.io", "v1alpha1", namespace, "queuescalers", name,
            _request_timeout=(5, 30),
        )
    except ApiException as error:
        if error.status == 404:
            raise click.ClickException(f"QueueScaler {key} not found in the cluster") from None
        raise click.ClickException(
            f"the cluster refused to read QueueScaler {key}: {error.status} {error.reason}"
        ) from None
    except Exception as error:  # urllib3's connection and timeout errors, TLS
        raise click.ClickException(f"cannot read QueueScaler {key}: {error}") from None
    return _validated(namespace, name, body.get("spec"), f"the cluster ({key})")


# --- the traffic ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """What is replayed, the worker model, and the traffic in words."""

    workload: sim.Workload
    model: sim.ReplayModel
    words: str


def _queries(namespace: str, name: str) -> dict[str, str]:
    """The operator's own series of one QueueScaler (`max` folds several operator replicas)."""
    m = f'scaler_namespace="{_escape(namespace)}", scaler="{_escape(name)}"'
    return {
        "publish_rate": f"max(queuescaler_publish_rate{{{m}}})",
        "backlog": f"max(sum without (state) (queuescaler_backlog_messages{{{m}}}))",
        "per_replica_rate": f"max(queuescaler_per_replica_rate{{{m}}})",
        "replicas": f"max(queuescaler_current_replicas{{{m}}})",
        "unacked": f'max(queuescaler_backlog_messages{{{m}, state="unacked"}})',
        "consumers": f"max(queuescaler_consumers{{{m}}})",
    }


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def query_range(url: str, promql: str, start: float, end: float, step: float) -> list[
    tuple[float, float]
]:
    """One range query's points (of its first series; empty when none), or a clear error."""
    params = urllib.parse.urlencode(
        {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    )
    where = f"Prometheus at {url}"
    try:
        with urllib.request.urlopen(
            f"{url.rstrip('/')}/api/v1/query_range?{params}", timeout=PROMETHEUS_TIMEOUT
        ) as response:
            body = json.load(response)
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise click.ClickException(f"{where} refused {promql}: {error.code} {detail}") from None
    except (TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
            raise click.ClickException(
                f"{where} did not answer within {PROMETHEUS_TIMEOUT:g} s") from None
        raise click.ClickException(f"{where} does not answer: {reason}") from None
    except ValueError:
        raise click.ClickException(f"{where} answered something that is not JSON: is it "
                                   "Prometheus?") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error_text = body.get("error") if isinstance(body, dict) else body
        raise click.ClickException(f"{where} failed {promql}: {error_text}")
    result = body.get("data", {}).get("result") or []
    if not result:
        return []
    return [(float(t), float(v)) for t, v in result[0]["values"] if math.isfinite(float(v))]


def traffic_from_prometheus(
    url: str, scaler: Scaler, seconds: float, step: float | None, *, now: float,
    progress: Progress,
) -> sim.Traffic:
    step = step or max(MIN_STEP, math.ceil(seconds / MAX_POINTS))
    start, end = now - seconds, now
    found: dict[str, dict[float, float]] = {}
    queries = _queries(scaler.namespace, scaler.name)
    for index, (key, promql) in enumerate(queries.items()):
        progress(f"fetching {key} of {scaler.key} from {url} ({seconds:g} s at {step:g} s steps)",
                 index / len(queries))
        found[key] = dict(query_range(url, promql, start, end, step))
    publish = found["publish_rate"]
    if len(publish) < 2:
        raise click.ClickException(
            f"Prometheus at {url} has no queuescaler_publish_rate series for QueueScaler "
            f"{scaler.key} over the last {seconds:g} s: is the operator scraped there, is the "
            "name right, was the queue sampled in that window (try a longer --range)?"
        )
    # From the first point with a rate or a backlog (RabbitMQ's rates appear a statistics
    # interval after its counts) to the last.
    times = tuple(sorted(set(publish) | set(found["backlog"])))

    def aligned(key: str) -> tuple[float | None, ...]:
        series = found[key]
        return tuple(series.get(t) for t in times) if series else ()

    backlog = aligned("backlog")
    rates, notes = publish_rates_filled(times, aligned("publish_rate"), backlog)
    return sim.Traffic(
        name=scaler.key,
        times=times,
        publish_rates=rates,
        notes=notes,
        per_replica_rates=aligned("per_replica_rate"),
        backlog=backlog,
        replicas=aligned("replicas"),
        unacked=aligned("unacked"),
        consumers=aligned("consumers"),
    )


def load_traffic(
    *, csv: Path | None, trace: str | None, prometheus: str | None, range_seconds: float,
    step: float | None, scaler: Scaler, given: sim.Given, seed: int,
    progress: Progress,
) -> Load:
    chosen = [name for name, value in (("--csv", csv), ("--trace", trace),
                                       ("--prometheus", prometheus)) if value]
    if len(chosen) != 1:
        raise click.UsageError("give the traffic with exactly one of --csv, --trace or "
                               f"--prometheus (got {', '.join(chosen) or 'none'})")
    if trace is not None:
        synthetic = NAMED[trace]()
        return Load(sim.workload_from_trace(synthetic), sim.estimate_model(given, trace=synthetic),
                    f'synthetic trace "{trace}" (seeded; `queuescaler.sim.traces`)')
    if csv is not None:
        try:
            traffic = sim.traffic_from_csv(csv.read_text(), csv.name)
        except OSError as error:
            raise click.ClickException(f"cannot read {csv}: {error}") from None
        except sim.TrafficError as error:
            raise click.ClickException(str(error)) from None
        words = f"{csv} ({len(traffic.times):,} points, one every {traffic.step:g} s)"
    else:
        assert prometheus is not None
        traffic = traffic_from_prometheus(prometheus, scaler, range_seconds, step,
                                          now=time.time(), progress=progress)
        words = (f"Prometheus at {prometheus}, the operator's series of {scaler.key} over "
                 f"{range_seconds:g} s ({len(traffic.times):,} points, one every "
                 f"{traffic.step:g} s)")
    model = sim.estimate_model(given, traffic=traffic)
    pool = next((r for r in traffic.replicas if r is not None), None)
    capacity = None if pool is None else pool * model.concurrency / model.service_seconds
    workload = sim.workload_from_traffic(traffic, seed=seed, capacity=capacity)
    words += f"; arrivals drawn around the recorded publish rate (Poisson, seed {seed})"
    return Load(workload, model, words)


@dataclass(frozen=True, slots=True)
class Setup:
    scaler: Scaler
    load: Load
    world: sim.World | None
    seed: int
