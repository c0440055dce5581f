"""The replica curves of bench/peers.py's pools over their common backlog, one panel a trace.

    python bench/peers_plot.py ~/.cache/queuescaler/out/peers-<time>.json [--out FILE.png]

Per trace: each pool's spec.replicas (steps, as a watch saw them) and, shaded behind them,
the backlog (ready + unacked) of the queuescaler pool's queue: every pool's queue is fed the
same trace, so its backlog is the work as one scaler let it pile up; each pool's own backlog
is a thin line of its colour on the right axis. Writes FILE.png (default: beside the JSON).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

COLOURS = {"queuescaler": "#1f77b4", "keda": "#d62728", "keda-fast": "#ff7f0e",
           "queuescaler-0": "#17becf", "keda-0": "#9467bd"}


def plot(raw: Path, out: Path | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[str, Any] = json.loads(raw.read_text())
    traces = [t for t in data["traces"] if t.get("pools")]
    if not traces:
        return []
    figure, axes = plt.subplots(len(traces), 1, figsize=(11, 3.4 * len(traces)), squeeze=False)
    for ax, trace in zip(axes[:, 0], traces, strict=True):
        seconds = float(trace["seconds"])
        backlog_axis = ax.twinx()
        for pool in trace["pools"]:
            colour = COLOURS.get(pool["kind"], "grey")
            steps = [(t, r) for t, r in pool["replica_steps"] if t <= seconds + 60]
            if steps:
                times = [max(-10.0, t) for t, _ in steps] + [seconds + 60]
                levels = [r for _, r in steps] + [steps[-1][1]]
                ax.step(times, levels, where="post", color=colour, linewidth=1.6,
                        label=pool["kind"])
            backlog = [(t, ready + unacked) for t, ready, unacked in pool["backlog"]
                       if -10 <= t <= seconds + 60]
            if backlog:
                backlog_axis.plot([t for t, _ in backlog], [b for _, b in backlog],
                                  color=colour, linewidth=0.6, alpha=0.6)
        ax.set_xlim(-10, seconds + 60)
        ax.set_ylim(-0.3, 10.8)
        ax.set_ylabel("replicas (steps)")
        backlog_axis.set_ylabel("backlog, ready + unacked (thin)")
        backlog_axis.set_ylim(bottom=0)
        ax.set_title(f"{trace['trace']}: {trace['messages']} messages in "
                     f"{seconds / 60:g} min, the same trace to every pool "
                     f"(KEDA {data.get('keda', '?')})", fontsize=10)
        ax.axvline(seconds, color="grey", linewidth=0.8, linestyle=":")
        ax.legend(loc="upper left", fontsize=8, ncol=len(trace["pools"]))
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("seconds from the trace's start (dotted: its end)")
    figure.tight_layout()
    target = out or raw.with_suffix(".png")
    figure.savefig(target, dpi=80)
    plt.close(figure)
    return [target]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    for picture in plot(args.raw, args.out):
        print(picture)


if __name__ == "__main__":
    main()
