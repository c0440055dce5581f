"""`queuescaler simulate` and `queuescaler recommend`: tune a QueueScaler before applying it.

The I/O shell around the pure `sim.replay` and `sim.tuning`: it reads the QueueScaler (a
YAML file, or the cluster), the traffic (a CSV, the operator's own series in Prometheus,
or a named synthetic trace), prints the tables and draws the picture. The spec goes through
the operator's own parser, so a spec the operator would refuse is refused here with the
same words.
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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
import yaml

from queuescaler.core.spec import SpecError
from queuescaler.sim import replay as sim
from queuescaler.sim.traces import NAMED
from queuescaler.sim.tuning import MIN_SAVING, Tuning, recommend
from queuescaler.sources.registry import parse_spec

PROMETHEUS_TIMEOUT = 30.0
"""Seconds one Prometheus query may take before the command gives up."""
MAX_POINTS = 10_000
"""Points per series at most (Prometheus refuses more than 11,000)."""
MIN_STEP = 15.0
"""The smallest default step: a usual scrape interval (`--step` goes lower)."""
PLOT_POINTS = 2_000
"""Points per line in the picture at most (each the highest of its stretch of seconds)."""

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


def _duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
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
    progress: Callable[[str], None],
) -> sim.Traffic:
    step = step or max(MIN_STEP, math.ceil(seconds / MAX_POINTS))
    start, end = now - seconds, now
    found: dict[str, dict[float, float]] = {}
    for key, promql in _queries(scaler.namespace, scaler.name).items():
        progress(f"fetching {key} of {scaler.key} from {url} ({seconds:g} s at {step:g} s steps)")
        found[key] = dict(query_range(url, promql, start, end, step))
    publish = found["publish_rate"]
    if len(publish) < 2:
        raise click.ClickException(
            f"Prometheus at {url} has no queuescaler_publish_rate series for QueueScaler "
            f"{scaler.key} over the last {seconds:g} s: is the operator scraped there, is the "
            "name right, was the queue sampled in that window (try a longer --range)?"
        )
    times = tuple(sorted(publish))

    def aligned(key: str) -> tuple[float | None, ...]:
        series = found[key]
        return tuple(series.get(t) for t in times) if series else ()

    return sim.Traffic(
        name=scaler.key,
        times=times,
        publish_rates=tuple(publish[t] for t in times),
        per_replica_rates=aligned("per_replica_rate"),
        backlog=aligned("backlog"),
        replicas=aligned("replicas"),
    )


def load_traffic(
    *, csv: Path | None, trace: str | None, prometheus: str | None, range_seconds: float,
    step: float | None, scaler: Scaler, given: sim.Given, seed: int,
    progress: Callable[[str], None],
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
    workload = sim.workload_from_traffic(traffic, seed=seed)
    words += f"; arrivals drawn around the recorded publish rate (Poisson, seed {seed})"
    return Load(workload, sim.estimate_model(given, traffic=traffic), words)


# --- the commands ---------------------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., Any])


def shared_options(command: F) -> F:
    """The options `simulate` and `recommend` share: the spec, the traffic, the workers."""
    options = [
        click.option("-f", "--filename", type=click.Path(dir_okay=False, path_type=Path),
                     help="The QueueScaler's YAML (default: read --queuescaler from the cluster)."),
        click.option("--queuescaler", "key", metavar="NAMESPACE/NAME",
                     help="Which QueueScaler: read from the cluster without -f, and whose series "
                          "--prometheus fetches (default: the file's metadata)."),
        click.option("--context", help="The kubeconfig context to read the QueueScaler from."),
        click.option("--csv", type=click.Path(dir_okay=False, path_type=Path),
                     help="Traffic: lines of time,publish_rate[,service_seconds]."),
        click.option("--trace", type=click.Choice(sorted(NAMED)),
                     help="Traffic: a named synthetic trace."),
        click.option("--prometheus", metavar="URL",
                     help="Traffic: the operator's series of the QueueScaler in this Prometheus."),
        click.option("--range", "range_seconds", default="7d", show_default=True,
                     callback=_duration, metavar="DURATION",
                     help="With --prometheus: how far back from now."),
        click.option("--step", callback=_duration, metavar="DURATION",
                     help="With --prometheus: seconds between points [default: range / "
                          f"{MAX_POINTS:,}, at least {MIN_STEP:g} s]."),
        click.option("--service-seconds", type=click.FloatRange(min=0, min_open=True),
                     help="Mean task time [default: estimated from the traffic]."),
        click.option("--concurrency", type=click.IntRange(min=1),
                     help=f"Tasks in progress at once per replica [default: "
                          f"{sim.DEFAULT_CONCURRENCY}]."),
        click.option("--prefetch", type=click.IntRange(min=0),
                     help="Messages held per task slot (Celery's prefetch multiplier; 0: no "
                          f"limit) [default: {sim.DEFAULT_PREFETCH}]."),
        click.option("--pod-start-delay", callback=_duration, metavar="DURATION",
                     help=f"Seconds a new pod takes to consume [default: "
                          f"{sim.DEFAULT_POD_START_DELAY:g}]."),
        click.option("--world", type=click.Choice(["auto", "messages", "fluid"]), default="auto",
                     show_default=True,
                     help="Message by message, or fluid (fast; one message per replica at a "
                          f"time); auto: fluid above {sim.MESSAGE_LEVEL_LIMIT:,} messages."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the arrivals drawn from rates and the task times."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@dataclass(frozen=True, slots=True)
class Setup:
    scaler: Scaler
    load: Load
    world: sim.World | None
    seed: int


def _progress(line: str) -> None:
    click.echo(f"... {line}", err=True)


def setup(options: dict[str, Any]) -> Setup:
    filename: Path | None = options["filename"]
    key: str | None = options["key"]
    if filename is not None:
        scaler = scaler_from_file(filename, key)
    elif key is not None:
        scaler = scaler_from_cluster(key, options["context"])
    else:
        raise click.UsageError("give the QueueScaler: -f FILE, or --queuescaler NAMESPACE/NAME "
                               "to read it from the cluster")
    given = sim.Given(
        service_seconds=options["service_seconds"], concurrency=options["concurrency"],
        prefetch=options["prefetch"], pod_start_delay=options["pod_start_delay"],
    )
    load = load_traffic(
        csv=options["csv"], trace=options["trace"], prometheus=options["prometheus"],
        range_seconds=options["range_seconds"], step=options["step"], scaler=scaler,
        given=given, seed=options["seed"], progress=_progress,
    )
    world = None if options["world"] == "auto" else options["world"]
    return Setup(scaler, load, world, options["seed"])


def _header(title: str, setup: Setup, world: sim.World) -> list[str]:
    workload = setup.load.workload
    lines = [
        f"{title}: QueueScaler {setup.scaler.key} from {setup.scaler.origin}",
        f"traffic: {setup.load.words}",
        f"replayed: {workload.duration:,} s, {workload.published:,} messages, "
        + ("message by message (prefetch and concurrency as they are)" if world == "messages"
           else "fluid (concurrency folded into one replica's rate, prefetch ignored)"),
        *(f"  note: {note}" for note in workload.notes),
        "",
        "worker model:",
    ]
    rows = setup.load.model.describe()
    width = max(len(knob) for knob, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    lines += [f"  {knob:<{width}}  {value:<{value_width}}  {origin}" for knob, value, origin
              in rows]
    return lines


def table(header: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[bool]) -> list[str]:
    """A Markdown table with its columns padded, readable as it is in a terminal."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        padded = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right,
                                                                      strict=True)]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if r else ("-" * (w + 2))
                          for w, r in zip(widths, right, strict=True)) + "|"
    return [line(header), rule, *(line(r) for r in rows)]


def _seconds(value: float) -> str:
    return f"{value:,.1f} s" if value < 600 else f"{value / 60:,.1f} min"


def _hours(value: float) -> str:
    """Replica-hours with about three significant digits (short replays have few)."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def _reasons(counted: Sequence[tuple[str, int]]) -> str:
    return ", ".join(f"{reason} {count:,}" for reason, count in counted) or "none"


def simulate_report(setup: Setup, result: sim.Replay) -> list[str]:
    lines = _header("queuescaler simulate", setup, result.world)
    start = result.initial_replicas
    lines.append(f"\nevery pool starts at {start} replica{'' if start == 1 else 's'}\n")
    rows = [
        [run.policy, _seconds(run.p50_wait),
         _seconds(run.p95_wait), _hours(run.replica_hours), f"{run.scale_events:,}",
         f"{run.redelivered:,.0f}", f"{run.left:,.0f}"]
        for run in result.runs
    ]
    if result.recorded is not None:
        rows.append(["recorded", "-", "-",
                     _hours(result.recorded.replica_hours),
                     f"{result.recorded.scale_events:,}", "-", "-"])
    lines += table(
        ["policy", "p50 wait", "p95 wait", "replica-hours", "scale events", "redelivered",
         "left at end"],
        rows, [False, True, True, True, True, True, True],
    )
    ours = result.run(sim.OURS)
    lines += [
        "",
        *(f"{run.policy}: {sim.POLICY_WORDS[run.policy]}" for run in result.runs),
        *(["recorded: what the real pool did (its replica count as recorded)"]
          if result.recorded else []),
        "",
        f"queuescaler's scale events by reason: {_reasons(ours.scale_reasons)}",
        f"queuescaler's decisions by reason: {_reasons(ours.decisions)}",
    ]
    return lines


def recommend_report(setup: Setup, tuning: Tuning) -> list[str]:
    lines = _header("queuescaler recommend", setup, tuning.world)
    lines.append(f"\ngoal: p95 wait <= {_seconds(tuning.p95_goal)}; settings tried (a "
                 "coordinate search from the spec as given, each knob in turn):\n")
    knobs = [path[-1] for path, _ in tuning.given.values]
    rows = []
    for number, trial in enumerate(tuning.tried, start=1):
        mark = " (as given)" if number == 1 else ""
        mark += " <- chosen" if trial is tuning.best and number > 1 else ""
        rows.append([
            f"{number}{mark}",
            *("unset" if value is None else str(value) for _, value in trial.values),
            _seconds(trial.run.p95_wait), _hours(trial.run.replica_hours),
            f"{trial.run.scale_events:,}", "yes" if trial.meets else "no",
        ])
    lines += table(["#", *knobs, "p95 wait", "replica-hours", "scale events", "meets"], rows,
                   [False, *(True for _ in knobs), True, True, True, False])
    lines.append("")
    if tuning.best is None:
        closest = tuning.closest
        lines.append(
            f"no setting tried meets p95 <= {_seconds(tuning.p95_goal)}; the closest: "
            f"{closest.words} (p95 {_seconds(closest.run.p95_wait)}). More replicas than "
            "maxReplicas, faster workers or a looser goal may be needed."
        )
    elif not tuning.patch:
        cheapest = min((t for t in tuning.tried if t.meets), key=lambda t: t.run.replica_hours)
        lines.append(
            f"the spec as given meets the goal, and no setting tried is {MIN_SAVING:.0%} "
            f"cheaper (the cheapest: {_hours(cheapest.run.replica_hours)} replica-hours "
            f"against {_hours(tuning.given.run.replica_hours)}): no patch"
        )
    else:
        given, best = tuning.given.run, tuning.best.run
        lines += [
            f"cheapest setting meeting the goal: {tuning.best.words} ({_hours(best.replica_hours)} "
            f"replica-hours against {_hours(given.replica_hours)} as given; p95 "
            f"{_seconds(best.p95_wait)} against {_seconds(given.p95_wait)})",
            f"patch (kubectl patch queuescaler {setup.scaler.name} -n "
            f"{setup.scaler.namespace} --type merge --patch-file PATCH.yaml):",
            "",
            yaml.safe_dump(dict(tuning.patch), sort_keys=False).rstrip(),
        ]
    return lines


@click.command()
@shared_options
@click.option("--compare", is_flag=True,
              help="Also replay KEDA QueueLength on the HPA's defaults with the same target and "
                   "bounds, and the oracle.")
@click.option("--png", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="The picture of backlog and replicas [default: NAME-simulate.png].")
@click.option("--no-png", is_flag=True, help="Draw no picture.")
def simulate(compare: bool, png: Path | None, no_png: bool, **options: Any) -> None:
    """Replay traffic against a QueueScaler's spec: waits, replica-hours, scale events."""
    ready = setup(options)
    result = sim.replay(
        ready.scaler.spec, ready.load.workload, ready.load.model, compare=compare,
        world=ready.world, seed=ready.seed, progress=_progress,
    )
    click.echo("\n".join(simulate_report(ready, result)))
    if not no_png:
        out = png or Path(f"{ready.scaler.name}-simulate.png")
        click.echo(draw(ready, result, out))


@click.command(name="recommend")
@shared_options
@click.option("--p95-wait", "p95_goal", default="30s", callback=_duration, metavar="DURATION",
              show_default=True,
              help="The goal: the p95 of the time from publish to the start of the task.")
def recommend_command(p95_goal: float, **options: Any) -> None:
    """Search messagesPerReplica, drainSeconds and scaleDown.stabilizationSeconds for the
    cheapest setting whose p95 wait meets the goal; print it as a merge patch. Exits 1 when
    no setting tried meets the goal."""
    ready = setup(options)
    tuning = recommend(
        ready.scaler.spec, ready.load.workload, ready.load.model, p95_goal,
        world=ready.world, seed=ready.seed, progress=_progress,
    )
    click.echo("\n".join(recommend_report(ready, tuning)))
    if tuning.best is None:
        raise SystemExit(1)


# --- the picture ----------------------------------------------------------------------------------


def _downsample(values: Sequence[float | None], points: int) -> tuple[list[float], list[float]]:
    """(second, value) pairs, each the highest of its stretch, so that peaks stay visible."""
    size = max(1, math.ceil(len(values) / points))
    xs, ys = [], []
    for first in range(0, len(values), size):
        known = [v for v in values[first:first + size] if v is not None]
        if known:
            xs.append(float(first))
            ys.append(max(known))
    return xs, ys


def draw(ready: Setup, result: sim.Replay, out: Path) -> str:
    """Backlog over replicas against time, one line per policy (and the recorded pool)."""
    try:
        import matplotlib
    except ImportError:
        return ("no picture: matplotlib is not installed "
                "(pip install 'queuescaler[tune]', or --no-png)")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hours = result.duration > 3 * 3600
    scale, unit = (3600.0, "hours") if hours else (60.0, "minutes")
    figure, (backlog, replicas) = plt.subplots(2, 1, sharex=True, figsize=(11, 6.5), dpi=110)
    colors = {sim.OURS: "tab:blue", sim.KEDA: "tab:orange", sim.ORACLE: "tab:gray"}
    for run in result.runs:
        panels: tuple[tuple[Any, Sequence[float | None]], ...] = (
            (backlog, run.backlog), (replicas, run.replicas))
        for axis, values in panels:
            xs, ys = _downsample(values, PLOT_POINTS)
            axis.step([x / scale for x in xs], ys, where="post", label=run.policy,
                      color=colors.get(run.policy), linewidth=1.2)
    workload = ready.load.workload
    for axis, values in ((backlog, workload.recorded_backlog),
                         (replicas, workload.recorded_replicas)):
        if values:
            xs, ys = _downsample(values[workload.warm_up:], PLOT_POINTS)
            axis.step([x / scale for x in xs], ys, where="post", label="recorded",
                      color="tab:green", linestyle="--", linewidth=1.0)
    backlog.set_ylabel("backlog (ready + unacked)")
    replicas.set_ylabel("replicas")
    replicas.set_xlabel(f"{unit} from the start")
    backlog.set_title(f"QueueScaler {ready.scaler.key} replaying {workload.name}")
    for axis in (backlog, replicas):
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper right")
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    plt.close(figure)
    return f"picture: {out} (backlog and replicas over time)"


COMMANDS = (simulate, recommend_command)
"""Registered on the `queuescaler` group by `cli.py`."""
