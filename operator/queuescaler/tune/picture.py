"""The picture `queuescaler simulate` draws: backlog and replicas over time, one line per
policy and the recorded pool (matplotlib, an optional extra: `queuescaler[tune]`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from queuescaler.sim import replay as sim
from queuescaler.tune.inputs import Setup

PLOT_POINTS = 2_000
"""Points per line in the picture at most (each the highest of its stretch of seconds)."""


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


def draw(ready: Setup, result: sim.Replay, out: Path, *, make_parents: bool = True) -> str:
    """Backlog over replicas against time, one line per policy (and the recorded pool);
    `make_parents` creates the folders `out` is in (for a path given, never for the
    default one)."""
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
    traffic = "its recorded traffic" if workload.name == ready.scaler.key else workload.name
    backlog.set_title(f"QueueScaler {ready.scaler.key} replaying {traffic}")
    for axis in (backlog, replicas):
        axis.set_ylim(bottom=0)
        axis.grid(True, alpha=0.3)
        axis.legend(loc="upper right")
    figure.tight_layout()
    try:
        if make_parents:
            out.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(out, format="png")
    except OSError as error:
        raise click.ClickException(
            f"cannot write the picture to {out}: {error.strerror or error} (--png PATH, or "
            "--no-png)") from None
    finally:
        plt.close(figure)
    return f"picture: {out} (backlog and replicas over time)"
