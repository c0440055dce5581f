"""The cheapest setting of a QueueScaler whose p95 wait meets a goal, on replayed traffic:
what `queuescaler recommend` prints. Pure.

The search is a coordinate search, not a full grid: starting from the spec as given, each
knob in turn (messagesPerReplica, drainSeconds, scaleDown.stabilizationSeconds) tries its
values with the others held at the best found so far, and keeps the cheapest that meets the
goal (fewest replica-hours, then fewest scale events), or, while none does, the one with the
lowest p95 wait. About a dozen replays instead of a grid's hundred; every one is listed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from queuescaler.sim.replay import (
    Progress,
    ReplayModel,
    Run,
    Workload,
    World,
    choose_world,
    initial_replicas,
    replay_ours,
    share_of,
)
from queuescaler.sources.registry import parse_spec

MESSAGES_PER_REPLICA_FACTORS: Final = (0.25, 0.5, 1.0, 2.0, 4.0)
DRAIN_SECONDS: Final = (None, 30, 120)
"""None: the rate policy off (`drainSeconds` unset)."""
STABILIZATION_SECONDS: Final = (60, 150, 300, 600)
MIN_SAVING: Final = 0.05
"""A spec that meets the goal is only patched for a setting at least this much cheaper:
one replay of one seed does not tell a 1% saving from chance."""

Path = tuple[str, ...]
MESSAGES_PER_REPLICA: Final[Path] = ("target", "messagesPerReplica")
DRAIN: Final[Path] = ("target", "drainSeconds")
STABILIZATION: Final[Path] = ("behavior", "scaleDown", "stabilizationSeconds")


@dataclass(frozen=True, slots=True)
class Trial:
    """One setting replayed: the knobs' values (None: unset) and what it gave."""

    values: tuple[tuple[Path, int | None], ...]
    run: Run
    meets: bool

    @property
    def words(self) -> str:
        return _words(self.values)


def _words(values: tuple[tuple[Path, int | None], ...]) -> str:
    return ", ".join(f"{path[-1]} {'unset' if value is None else value}" for path, value in values)


@dataclass(frozen=True, slots=True)
class Tuning:
    """The search's outcome: every trial in the order tried, the spec as given (the first),
    and the cheapest one meeting the goal (None when none does; the spec as given when it
    meets the goal and no trial is `MIN_SAVING` cheaper)."""

    p95_goal: float
    world: World
    tried: tuple[Trial, ...]
    best: Trial | None
    closest: Trial
    """Where the search ended: the best when one meets the goal, else the lowest p95."""
    patch: Mapping[str, Any]
    """A merge patch of the QueueScaler (`{"spec": {...}}`) from the spec as given to the
    best setting (None unsets a field); empty when the spec as given is the best."""

    @property
    def given(self) -> Trial:
        return self.tried[0]


def knob_values(spec: Mapping[str, Any]) -> dict[Path, tuple[int | None, ...]]:
    """The values each knob tries, the spec's own among them (its defaults when unset)."""
    parsed = parse_spec(spec)
    per_replica = parsed.target.messages_per_replica
    stabilization = parsed.behavior.scale_down.stabilization_seconds
    return {
        MESSAGES_PER_REPLICA: _unique(
            max(1, round(per_replica * factor)) for factor in MESSAGES_PER_REPLICA_FACTORS
        ),
        DRAIN: _unique((parsed.target.drain_seconds, *DRAIN_SECONDS)),
        STABILIZATION: _unique((stabilization, *STABILIZATION_SECONDS)),
    }


def _unique(values: Any) -> tuple[int | None, ...]:
    seen: list[int | None] = []
    for value in values:
        if value not in seen:
            seen.append(value)
    return tuple(seen)


def get(spec: Mapping[str, Any], path: Path) -> Any:
    node: Any = spec
    for key in path:
        if not isinstance(node, Mapping) or node.get(key) is None:
            return None
        node = node[key]
    return node


def with_value(spec: Mapping[str, Any], path: Path, value: int | None) -> dict[str, Any]:
    """A copy of `spec` with the field at `path` set (None: removed)."""
    changed = copy.deepcopy(dict(spec))
    node = changed
    for key in path[:-1]:
        child = node.get(key)
        node[key] = dict(child) if isinstance(child, Mapping) else {}
        node = node[key]
    if value is None:
        node.pop(path[-1], None)
    else:
        node[path[-1]] = value
    return changed


def recommend(
    spec: Mapping[str, Any],
    workload: Workload,
    model: ReplayModel,
    p95_goal: float,
    *,
    world: World | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Tuning:
    """Search the knobs for the cheapest setting whose p95 wait is at most `p95_goal`."""
    parse_spec(spec)  # the spec as given must be valid: its SpecError, not a trial's
    chosen = choose_world(workload, world)
    start = initial_replicas(spec, workload, model)
    grid = knob_values(spec)
    paths = tuple(grid)
    most = 1 + sum(len(values) for values in grid.values())  # trials at most (some repeat)
    trials: dict[tuple[int | None, ...], Trial] = {}
    order: list[Trial] = []

    def trial(candidate: Mapping[str, Any]) -> Trial:
        key = tuple(_effective(candidate, path) for path in paths)
        if key not in trials:
            values = tuple(zip(paths, key, strict=True))
            share = share_of(progress, f"trial {len(order) + 1}: {_words(values)}", len(order),
                           most)
            run = replay_ours(candidate, workload, model, world=chosen, start=start, seed=seed,
                              share=share)
            trials[key] = Trial(values, run, run.p95_wait <= p95_goal)
            order.append(trials[key])
        return trials[key]

    best_spec: dict[str, Any] = dict(spec)
    best = trial(best_spec)
    for path in paths:
        for value in grid[path]:
            candidate = with_value(best_spec, path, value)
            tried = trial(candidate)
            if _better(tried, best):
                best, best_spec = tried, candidate
    if progress:
        progress(f"tried {len(order)} settings", 1.0)
    given = order[0]
    if given.meets and best.run.replica_hours > (1 - MIN_SAVING) * given.run.replica_hours:
        best, best_spec = given, dict(spec)
    winner = best if best.meets else None
    patch = _patch(spec, best_spec, paths) if winner else {}
    return Tuning(p95_goal, chosen, tuple(order), winner, best, patch)


def _effective(spec: Mapping[str, Any], path: Path) -> int | None:
    """The knob's value as the operator would use it (its default when unset)."""
    parsed = parse_spec(spec)
    if path == MESSAGES_PER_REPLICA:
        return parsed.target.messages_per_replica
    if path == DRAIN:
        return parsed.target.drain_seconds
    return parsed.behavior.scale_down.stabilization_seconds


def _better(one: Trial, other: Trial) -> bool:
    """Meeting the goal beats missing it; among those meeting it the cheaper (replica-hours,
    then scale events); among those missing it the lower p95 wait."""
    if one.meets != other.meets:
        return one.meets
    if one.meets:
        return (one.run.replica_hours, one.run.scale_events) < (
            other.run.replica_hours,
            other.run.scale_events,
        )
    return one.run.p95_wait < other.run.p95_wait


def _patch(given: Mapping[str, Any], best: Mapping[str, Any], paths: tuple[Path, ...]) -> dict[
    str, Any
]:
    patch: dict[str, Any] = {}
    for path in paths:
        value = get(best, path)
        if _effective(best, path) == _effective(given, path):
            continue
        node = patch.setdefault("spec", {})
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value
    return patch
