"""The tables `queuescaler simulate` and `recommend` print: Markdown, padded to read as they
are in a terminal."""

from __future__ import annotations

from collections.abc import Sequence

import yaml

from queuescaler.sim import replay as sim
from queuescaler.sim.tuning import MIN_SAVING, Tuning
from queuescaler.tune.inputs import Setup


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
    warm = setup.load.workload.warm_up
    when = f"the {warm} s warm-up" if warm else "the replay"
    lines.append(f"\nevery pool starts {when} at {start} replica{'' if start == 1 else 's'}\n")
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
        *_likeness(result),
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


def _likeness(result: sim.Replay) -> list[str]:
    like = result.likeness
    if like is None:
        return []
    return [
        f"queuescaler replayed against the recorded pool: {like.within_one:.0%} of the seconds "
        f"within one replica ({like.within_one_late:.0%} taken {like.late_by} s earlier, the "
        f"best of 0 to {sim.LIKENESS_LAG} s), {like.mean_difference:.2f} replicas apart on "
        f"average, peak {like.peaks[0]} replayed against {like.peaks[1]} recorded",
    ]
