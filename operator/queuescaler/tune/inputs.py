"""What `queuescaler simulate` and `recommend` read: the QueueScaler (a YAML file, or the
cluster), and the traffic (a CSV, the operator's own series in Prometheus, or a named
synthetic trace). The spec goes through the operator's own parser, so a spec the operator
would refuse is refused here with the same words.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
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
from queuescaler.sim.traffic import (
    MAX_REPLAY_SECONDS,
    plausible_service,
    publish_rates_filled,
    publish_rates_timed_by_backlog,
    replay_limit_words,
    service_bounds_words,
)
from queuescaler.sources.registry import parse_spec

PROMETHEUS_TIMEOUT = 30.0
"""Seconds one Prometheus query may take before the command gives up."""
PROMETHEUS_ANSWER_SECONDS = 120.0
"""The most one answer may take to arrive in full (a long range at a fine step is tens of
megabytes; a server sending a byte at a time is refused after it)."""
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


def service_option(ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """A click callback: a task time a replay takes (`sim.traffic.plausible_service`)."""
    if value is not None and not plausible_service(value):
        raise click.BadParameter(f"{value:g} is not from {service_bounds_words()}", ctx, param)
    return value


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
    if not isinstance(metadata, dict):
        raise click.ClickException(
            f"the QueueScaler's metadata is not a mapping (metadata: {metadata!r:.60})")
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


@dataclass(frozen=True, slots=True)
class PrometheusURL:
    """A Prometheus base URL as given (`http://user:pass@host:9090/prefix?token=x`): its
    user information goes in an Authorization header, its query parameters into every API
    call, and it is shown with both masked."""

    given: str
    base: urllib.parse.SplitResult
    """Without user information or fragment."""
    authorization: str | None
    shown: str

    @classmethod
    def parse(cls, text: str) -> PrometheusURL:
        hint = "'--prometheus'"
        try:
            parts = urllib.parse.urlsplit(text.strip())
        except ValueError:  # an unclosed [IPv6 address
            raise click.BadParameter("is not a URL (an unclosed '[' in its host?)",
                                     param_hint=hint) from None
        # Spaces and non-ASCII in the path would make every request fail (and http.client's
        # error quotes the query): sent percent-encoded, as a browser would.
        parts = parts._replace(path=urllib.parse.quote(parts.path, safe="/%:@!$&'()*+,;=~"))
        host_part = parts.netloc.rpartition("@")[2]
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        shown_query = "&".join(f"{urllib.parse.quote(k)}=***" if v else "***" for k, v in query)
        shown = urllib.parse.urlunsplit((
            parts.scheme, ("***@" if "@" in parts.netloc else "") + host_part, parts.path,
            shown_query, "",
        ))
        try:
            host = parts.hostname
            _ = parts.port  # a port that is not a number, or above 65535, raises
        except ValueError:
            raise click.BadParameter(f"{shown!r} has a port that is not a number from 0 to "
                                     "65535", param_hint=hint) from None
        if parts.scheme not in ("http", "https") or not host:
            raise click.BadParameter(f"{shown!r} is not an http:// or https:// URL",
                                     param_hint=hint)
        authorization = None
        if "@" in parts.netloc:
            user = urllib.parse.unquote(parts.username or "")
            password = urllib.parse.unquote(parts.password or "")
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            authorization = f"Basic {token}"
        base = parts._replace(netloc=host_part, fragment="")
        return cls(text, base, authorization, shown)

    def api(self, path: str, params: Mapping[str, str]) -> str:
        """The URL of an API call: the base's path, then `path`; its query, then `params`."""
        query = [*urllib.parse.parse_qsl(self.base.query, keep_blank_values=True),
                 *params.items()]
        return urllib.parse.urlunsplit(self.base._replace(
            path=self.base.path.rstrip("/") + path, query=urllib.parse.urlencode(query)))

    def masked(self, text: str) -> str:
        """`text` with the URL's query values and user information replaced by ***: a
        server's error page may echo the request. (Values under 4 characters are left: an
        `org=1` would turn every 1 of the message into ***.)"""
        query = urllib.parse.parse_qsl(self.base.query, keep_blank_values=True)
        secrets = [value or key for key, value in query]  # a bare key is the secret itself
        given = urllib.parse.urlsplit(self.given.strip())
        secrets += [given.username or "", given.password or ""]
        for secret in sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True):
            for form in {secret, urllib.parse.quote(secret), urllib.parse.quote_plus(secret)}:
                text = text.replace(form, "***")
        return text

    def __str__(self) -> str:
        return self.shown


class _SlowAnswer(Exception):
    """The answer did not arrive within PROMETHEUS_ANSWER_SECONDS."""


def _read_within(response: http.client.HTTPResponse, deadline: float) -> bytes:
    """The whole body, or _SlowAnswer: the socket timeout bounds each read only, so a
    server sending a byte at a time would otherwise hold the command for ever."""
    chunks = []
    while chunk := response.read1(64 * 1024):
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise _SlowAnswer
    return b"".join(chunks)


def query_range(url: PrometheusURL | str, promql: str, start: float, end: float,
                step: float) -> tuple[list[tuple[float, float]], int]:
    """One range query's points (of its first series; empty when none) and how many were
    left out, or a clear error. Points outside [start, end], not finite or negative (none of
    the operator's series can be) are left out: missing, as a point Prometheus has not."""
    if isinstance(url, str):
        url = PrometheusURL.parse(url)
    params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
    where = f"Prometheus at {url}"
    request = urllib.request.Request(url.api("/api/v1/query_range", params))
    if url.authorization:
        # Not sent on to where a redirect points.
        request.add_unredirected_header("Authorization", url.authorization)
    try:
        with urllib.request.urlopen(request, timeout=PROMETHEUS_TIMEOUT) as response:
            text = _read_within(response, time.monotonic() + PROMETHEUS_ANSWER_SECONDS)
    except urllib.error.HTTPError as error:
        detail = error.read(64 * 1024).decode(errors="replace")
        with contextlib.suppress(ValueError, AttributeError):
            detail = json.loads(detail).get("error", detail)
        raise click.ClickException(
            f"{where} refused {promql}: {error.code} {url.masked(str(detail))[:500]}") from None
    except (TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        if isinstance(reason, TimeoutError) or isinstance(error, TimeoutError):
            raise click.ClickException(
                f"{where} did not answer within {PROMETHEUS_TIMEOUT:g} s") from None
        # urllib's own words may quote the URL
        raise click.ClickException(f"{where} does not answer: {url.masked(str(reason))}") from None
    except _SlowAnswer:
        raise click.ClickException(f"{where} took more than {PROMETHEUS_ANSWER_SECONDS:g} s to "
                                   "send its answer") from None
    except (http.client.HTTPException, UnicodeError) as error:
        raise click.ClickException(f"{where} cannot be asked: {url.masked(str(error))}") from None
    try:
        body = json.loads(text)
    except ValueError:
        raise click.ClickException(f"{where} answered something that is not JSON: is it "
                                   "Prometheus?") from None
    if not isinstance(body, dict) or body.get("status") != "success":
        error_text = body.get("error") if isinstance(body, dict) else body
        raise click.ClickException(f"{where} failed {promql}: {error_text!s:.200}")
    data = body.get("data")
    result = data.get("result") if isinstance(data, dict) else None
    if not isinstance(result, list):
        raise click.ClickException(f"{where} answered {promql} without a result list: is it "
                                   "Prometheus' HTTP API?")
    if not result:
        return [], 0
    values = result[0].get("values") if isinstance(result[0], dict) else None
    if not isinstance(values, list):
        kind = data.get("resultType") if isinstance(data, dict) else None
        raise click.ClickException(f"{where} answered {promql} with a {kind or 'result'} "
                                   "without values over time, not a range (a matrix)")
    points = []
    for pair in values:
        try:
            time_, value = (float(cell) for cell in pair)
        except (TypeError, ValueError):
            raise click.ClickException(f"{where} answered {promql} with a point that is not "
                                       f"[time, number]: {pair!r:.80}") from None
        if start - 0.001 <= time_ <= end + 0.001 and math.isfinite(value) and value >= 0:
            points.append((time_, value))
    return points, len(values) - len(points)


def traffic_from_prometheus(
    url: PrometheusURL, scaler: Scaler, seconds: float, step: float | None, *, now: float,
    progress: Progress,
) -> sim.Traffic:
    if seconds > MAX_REPLAY_SECONDS:
        raise click.BadParameter(
            f"{seconds:g} s is more than the {replay_limit_words()} a replay covers: give a "
            "shorter --range", param_hint="'--range'")
    given_step = step
    step = step or max(MIN_STEP, math.ceil(seconds / MAX_POINTS))
    # Rounded as the query says them (to the millisecond).
    start, end = round(now - seconds, 3), round(now, 3)
    found: dict[str, dict[float, float]] = {}
    left_out: dict[str, int] = {}
    queries = _queries(scaler.namespace, scaler.name)
    for index, (key, promql) in enumerate(queries.items()):
        progress(f"fetching {key} of {scaler.key} from {url} ({seconds:g} s at {step:g} s steps)",
                 index / len(queries))
        points, left_out[key] = query_range(url, promql, start, end, step)
        found[key] = dict(points)
    publish = found["publish_rate"]
    if len(publish) < 2 and left_out["publish_rate"]:
        raise click.ClickException(
            f"Prometheus at {url} answered queuescaler_publish_rate for QueueScaler "
            f"{scaler.key} with {left_out['publish_rate']:,} points that are negative, NaN, "
            f"infinite or outside the {seconds:g} s asked, and {len(publish)} usable: nothing "
            "to replay")
    if len(publish) < 2:
        if publish or 2 * step > seconds:
            # The series is there, or the range holds at most two steps: the step is coarse.
            finer = ("a finer --step" if given_step else
                     f"a finer --step, or a shorter --range (the default step is range / "
                     f"{MAX_POINTS:,})")
            raise click.ClickException(
                f"Prometheus at {url} has {len(publish)} point{'' if len(publish) == 1 else 's'} "
                f"of queuescaler_publish_rate for QueueScaler {scaler.key} over the last "
                f"{seconds:g} s at {step:g} s steps, and a replay needs 2: try {finer}")
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
    rates, moved = publish_rates_timed_by_backlog(times, rates, backlog)
    notes += moved
    try:
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
    except sim.TrafficError as error:
        raise click.ClickException(f"Prometheus at {url}: {error}") from None


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
            traffic = sim.traffic_from_csv(csv.read_text(encoding="utf-8-sig"), csv.name)
        except OSError as error:
            raise click.ClickException(f"cannot read {csv}: {error}") from None
        except sim.TrafficError as error:
            raise click.ClickException(str(error)) from None
        words = f"{csv} ({len(traffic.times):,} points, one every {traffic.step:g} s)"
    else:
        assert prometheus is not None
        url = PrometheusURL.parse(prometheus)
        traffic = traffic_from_prometheus(url, scaler, range_seconds, step,
                                          now=time.time(), progress=progress)
        words = (f"Prometheus at {url}, the operator's series of {scaler.key} over "
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
