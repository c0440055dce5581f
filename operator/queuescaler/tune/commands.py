"""`queuescaler simulate` and `queuescaler recommend`: tune a QueueScaler before applying it.

The I/O shell around the pure `sim.replay` and `sim.tuning`: `inputs` reads the QueueScaler
and the traffic, `report` prints the tables, `picture` draws the PNG, `progress` tells how far
a long run got.
"""

from __future__ import annotations

import contextlib
import re
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import click

from queuescaler.sim import replay as sim
from queuescaler.sim.traces import NAMED
from queuescaler.sim.tuning import recommend
from queuescaler.tune.inputs import (
    MAX_POINTS,
    MIN_STEP,
    Setup,
    duration_option,
    load_traffic,
    scaler_from_cluster,
    scaler_from_file,
    service_option,
)
from queuescaler.tune.picture import draw
from queuescaler.tune.progress import Bar
from queuescaler.tune.report import recommend_report, simulate_report

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
                     callback=duration_option, metavar="DURATION",
                     help="With --prometheus: how far back from now."),
        click.option("--step", callback=duration_option, metavar="DURATION",
                     help="With --prometheus: seconds between points [default: range / "
                          f"{MAX_POINTS:,}, at least {MIN_STEP:g} s]."),
        click.option("--service-seconds", type=float, callback=service_option,
                     help="Mean task time [default: estimated from the traffic]."),
        click.option("--concurrency", type=click.IntRange(min=1),
                     help=f"Tasks in progress at once per replica [default: "
                          f"{sim.DEFAULT_CONCURRENCY}]."),
        click.option("--prefetch", type=click.IntRange(min=0),
                     help="Messages held per task slot (Celery's prefetch multiplier; 0: no "
                          f"limit) [default: {sim.DEFAULT_PREFETCH}]."),
        click.option("--pod-start-delay", callback=duration_option, metavar="DURATION",
                     help=f"Seconds a new pod takes to consume [default: "
                          f"{sim.DEFAULT_POD_START_DELAY:g}]."),
        click.option("--world", type=click.Choice(["auto", "messages", "fluid"]), default="auto",
                     show_default=True,
                     help="Message by message, or fluid (fast; one message per replica at a "
                          f"time); auto: fluid above {sim.MESSAGE_LEVEL_LIMIT:,} messages."),
        click.option("--seed", type=int, default=0, show_default=True,
                     help="Seeds the arrivals drawn from rates and the task times."),
        click.option("--progress/--no-progress", default=None,
                     help="A progress bar on stderr [default: when stderr is a terminal; "
                          "otherwise one line per step]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


@contextlib.contextmanager
def progress_bar(wanted: bool | None) -> Iterator[Bar]:
    """The progress of this run on stderr: a bar on a terminal or with `--progress`, lines
    elsewhere; wiped at the end, whatever happens."""
    stream = sys.stderr
    bar = Bar(stream, bar=stream.isatty() if wanted is None else wanted)
    try:
        yield bar
    finally:
        bar.close()


def setup(options: dict[str, Any], progress: Bar) -> Setup:
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
        given=given, seed=options["seed"], progress=progress,
    )
    world = None if options["world"] == "auto" else options["world"]
    return Setup(scaler, load, world, options["seed"])


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
    with progress_bar(options.pop("progress")) as bar:
        ready = setup(options, bar)
        result = sim.replay(
            ready.scaler.spec, ready.load.workload, ready.load.model, compare=compare,
            world=ready.world, seed=ready.seed, progress=bar,
        )
    click.echo("\n".join(simulate_report(ready, result)))
    if not no_png:
        out = png or default_picture(ready.scaler.name)
        click.echo(draw(ready, result, out, make_parents=png is not None))


def default_picture(name: str) -> Path:
    """NAME-simulate.png in the current folder, NAME cut to a plain file name (the name
    comes from a file: `../x` or `/etc/x` must not write elsewhere)."""
    plain = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("\\", "/").rpartition("/")[2])
    return Path(f"{plain.lstrip('.') or 'queuescaler'}-simulate.png")


@click.command(name="recommend")
@shared_options
@click.option("--p95-wait", "p95_goal", default="30s", callback=duration_option, metavar="DURATION",
              show_default=True,
              help="The goal: the p95 of the time from publish to the start of the task.")
def recommend_command(p95_goal: float, **options: Any) -> None:
    """Search messagesPerReplica, drainSeconds and scaleDown.stabilizationSeconds for the
    cheapest setting whose p95 wait meets the goal; print it as a merge patch. Exits 1 when
    no setting tried meets the goal."""
    with progress_bar(options.pop("progress")) as bar:
        ready = setup(options, bar)
        tuning = recommend(
            ready.scaler.spec, ready.load.workload, ready.load.model, p95_goal,
            world=ready.world, seed=ready.seed, progress=bar,
        )
    click.echo("\n".join(recommend_report(ready, tuning)))
    if tuning.best is None:
        raise SystemExit(1)


COMMANDS = (simulate, recommend_command)
"""Registered on the `queuescaler` group by `cli.py`."""
