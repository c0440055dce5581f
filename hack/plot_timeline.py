#!/usr/bin/env python3
"""Draw one QueueScaler's backlog, desired and current replicas over time, from Prometheus.

    python hack/plot_timeline.py --prometheus http://127.0.0.1:24090 \
        --namespace media --scaler thumbnails --minutes 15 --out timeline.png

It asks Prometheus (range queries over the operator's own metrics) for the backlog
(ready + unacked), the desired, current and maximum replicas, and draws them with
matplotlib: the backlog on the left axis, the replica counts as steps on the right one.
A dev tool (matplotlib is a dev dependency): the operator package never imports it.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import matplotlib

from queuescaler.tune import inputs

matplotlib.use("Agg")  # files only, no display

import matplotlib.dates as mdates
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

MAX_POINTS = 600
"""Points per series at most: the step grows with the window."""


@dataclass(frozen=True)
class Series:
    """One line of the picture: its label and its (time, value) points."""

    label: str
    times: list[float]
    """Unix seconds."""
    values: list[float]

    def when(self) -> np.ndarray[Any, np.dtype[np.datetime64]]:
        """The times as numpy datetimes (UTC), which matplotlib draws as dates."""
        return np.array([round(t * 1000) for t in self.times], dtype="datetime64[ms]")


def quote(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def queries(namespace: str, scaler: str, job: str | None) -> dict[str, str]:
    """The PromQL of each line; `max` folds several operator replicas into one line."""
    matchers = f"scaler_namespace={quote(namespace)}, scaler={quote(scaler)}"
    if job:
        matchers += f", job={quote(job)}"
    return {
        "backlog (ready + unacked)":
            f"max(sum without (state) (queuescaler_backlog_messages{{{matchers}}}))",
        "desired replicas": f"max(queuescaler_desired_replicas{{{matchers}}})",
        "current replicas": f"max(queuescaler_current_replicas{{{matchers}}})",
        "max replicas": f"max(queuescaler_max_replicas{{{matchers}}})",
    }


def query_range(
    prometheus: inputs.PrometheusURL | str, promql: str, start: float, end: float, step: float
) -> list[tuple[float, float]]:
    """The points of a single-series range query (empty when there is no data), asked as
    `queuescaler simulate` asks: user information in the URL goes in an Authorization
    header, its query into every call, and errors show the URL masked."""
    try:
        points, _ = inputs.query_range(prometheus, promql, start, end, step)
    except click.ClickException as error:
        raise SystemExit(error.format_message()) from None
    return points


def fetch(
    prometheus: str, namespace: str, scaler: str, minutes: float, job: str | None = None,
    end: float | None = None,
) -> list[Series]:
    end = time.time() if end is None else end
    start = end - minutes * 60
    step = max(1.0, round(minutes * 60 / MAX_POINTS, 1))
    found: list[Series] = []
    try:
        url = inputs.PrometheusURL.parse(prometheus)  # once, not once per line
    except click.ClickException as error:
        raise SystemExit(error.format_message()) from None
    for label, promql in queries(namespace, scaler, job).items():
        points = query_range(url, promql, start, end, step)
        found.append(
            Series(
                label,
                [t for t, _ in points],
                [v for _, v in points],
            )
        )
    return found


def draw(series: list[Series], title: str, out: Path) -> None:
    by_label = {s.label: s for s in series}
    figure, messages = plt.subplots(figsize=(11, 5.5), dpi=110)
    replicas = messages.twinx()

    backlog = by_label["backlog (ready + unacked)"]
    messages.fill_between(backlog.when(), backlog.values, step="post", alpha=0.25,
                          color="tab:blue")
    messages.step(backlog.when(), backlog.values, where="post", color="tab:blue",
                  label=backlog.label)
    styles: dict[str, dict[str, Any]] = {
        "desired replicas": {"color": "tab:orange", "linewidth": 2.0},
        "current replicas": {"color": "tab:green", "linewidth": 2.0, "linestyle": "--"},
        "max replicas": {"color": "tab:red", "linewidth": 1.0, "linestyle": ":"},
    }
    for label, style in styles.items():
        line = by_label[label]
        if line.values:
            replicas.step(line.when(), line.values, where="post", label=label, **style)

    messages.set_title(title)
    messages.set_xlabel("time (UTC)")
    messages.set_ylabel("messages")
    replicas.set_ylabel("replicas")
    messages.set_ylim(bottom=0)
    top = max((v for s in series if s.label != backlog.label for v in s.values), default=1)
    replicas.set_ylim(0, top + 1)
    replicas.yaxis.set_major_locator(MaxNLocator(integer=True))
    clock = mdates.DateFormatter("%H:%M:%S", tz=datetime.UTC)  # type: ignore[no-untyped-call]
    messages.xaxis.set_major_formatter(clock)
    messages.grid(True, alpha=0.3)
    handles, labels = messages.get_legend_handles_labels()
    more_handles, more_labels = replicas.get_legend_handles_labels()
    messages.legend(handles + more_handles, labels + more_labels, loc="upper right")
    figure.autofmt_xdate()
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, format="png")
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--namespace", required=True, help="the QueueScaler's namespace")
    parser.add_argument("--scaler", required=True, help="the QueueScaler's name")
    parser.add_argument("--minutes", type=float, default=15, help="window ending now")
    parser.add_argument("--job", default=None, help="only this scrape job (default: any)")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    try:
        shown = str(inputs.PrometheusURL.parse(args.prometheus))
    except click.ClickException as error:
        parser.error(error.format_message())

    series = fetch(args.prometheus, args.namespace, args.scaler, args.minutes, args.job)
    if not any(s.values for s in series):
        print(f"no data for QueueScaler {args.namespace}/{args.scaler} in the last "
              f"{args.minutes:g} minutes at {shown}", file=sys.stderr)
        return 1
    title = (f"QueueScaler {args.namespace}/{args.scaler}: backlog and replicas "
             f"(last {args.minutes:g} min)")
    draw(series, title, args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
