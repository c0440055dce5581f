"""What a tick tells the user (status, conditions) and what it leaves for the next one. Pure.

Status doubles as the operator's memory: the decision state (`ScalerState`) is written
there and read back after a restart, so a restarted operator never scales earlier than
one that kept running.
"""

from __future__ import annotations

import datetime
import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from queuescaler.core.decision import (
    PROBE_FAILURES_COUNTED,
    PROBE_PAUSE_SECONDS,
    Decision,
    Recommendation,
    ScalerState,
)
from queuescaler.core.sample import QueueSample

MAX_DECISION_MESSAGE = 1024
"""The CRD's maxLength of status.lastDecision.message."""
MAX_RECOMMENDATIONS = 64
"""The CRD's bound on the stored history; compaction keeps far fewer in practice."""


def iso(moment: float) -> str:
    """An RFC 3339 timestamp (seconds precision, UTC) as Kubernetes writes them."""
    return _iso_second(math.floor(moment))


@functools.lru_cache(maxsize=1024)
def _iso_second(second: int) -> str:
    """Remembered: every QueueScaler's status of a tick names the same few seconds (each
    status about nine times: conditions, sample, decision)."""
    when = datetime.datetime.fromtimestamp(second, datetime.UTC)
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: object) -> float | None:
    """The inverse of `iso`; None for anything that is not such a timestamp."""
    if not isinstance(text, str):
        return None
    try:
        parsed = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=datetime.UTC)
    return parsed.timestamp()


def camel(kebab: str) -> str:
    """`vhost-not-found` -> `VhostNotFound`: condition reasons are CamelCase words."""
    return "".join(part.capitalize() for part in kebab.split("-"))


@dataclass(frozen=True, slots=True)
class Condition:
    """One condition as this tick sees it; transition times are filled in by `merge_conditions`."""

    type: str
    status: bool
    reason: str
    message: str


def merge_conditions(
    previous: Sequence[Mapping[str, Any]],
    current: Sequence[Condition],
    now: float,
    generation: int | None,
) -> tuple[list[dict[str, Any]], list[Condition]]:
    """The new conditions list, and the conditions to announce as Events: those whose
    status changed, and those that stay False for a new reason (a broker that answered
    VhostNotFound while shutting down and is Unreachable now is reported again).

    lastTransitionTime moves only when the status flips, as the API conventions ask.
    """
    before = {c.get("type"): c for c in previous if isinstance(c, Mapping)}
    merged: list[dict[str, Any]] = []
    flipped: list[Condition] = []
    for condition in current:
        status = "True" if condition.status else "False"
        old = before.get(condition.type)
        changed = old is None or old.get("status") != status
        new_cause = (
            old is not None and not condition.status and old.get("reason") != condition.reason
        )
        if changed or new_cause:
            flipped.append(condition)
        entry: dict[str, Any] = {
            "type": condition.type,
            "status": status,
            "reason": condition.reason,
            "message": condition.message,
            "lastTransitionTime": iso(now) if changed or old is None
            else old.get("lastTransitionTime", iso(now)),
        }
        if generation is not None:
            entry["observedGeneration"] = generation
        merged.append(entry)
    return merged, flipped


def state_from_status(status: Mapping[str, Any] | None, now: float) -> ScalerState:
    """Rebuild the decision state from a stored status, erring on the side of waiting.

    Between two status writes the newest recommendation may have been renewed in memory
    only; on restore it is taken as renewed up to `now`, which can only lengthen a
    stabilization window, never shorten it.
    """
    if not status:
        return ScalerState()
    history: list[Recommendation] = []
    for entry in status.get("recommendations") or ():
        if not isinstance(entry, Mapping):
            continue
        at, replicas = _rounded_up(parse_iso(entry.get("at"))), entry.get("replicas")
        if at is not None and isinstance(replicas, int) and replicas >= 0:
            history.append(Recommendation(at, replicas))
    # A writer whose clock ran ahead left times in the future: clamped to now, so a leader
    # 30 minutes fast cannot hold a cooldown or a window for 30 minutes after failover.
    history = [Recommendation(min(r.at, now), r.replicas) for r in history]
    history.sort(key=lambda r: r.at)
    if history:
        history[-1] = Recommendation(max(history[-1].at, now), history[-1].replicas)
    failures = status.get("consecutiveFailures")
    rate = status.get("perReplicaRate")
    per_replica_rate = None
    if isinstance(rate, int | float) and not isinstance(rate, bool):
        per_replica_rate = float(rate)
    if per_replica_rate is not None and not (0 < per_replica_rate < math.inf):
        per_replica_rate = None
    # A speed measured on a saturated pool stays measured across a restart or a failover:
    # otherwise every rollout would probe (shrink) every pool again.
    measured = per_replica_rate is not None and status.get("perReplicaRateMeasured") is True
    last_scale = _rounded_up(parse_iso(status.get("lastScaleTime")))
    probe_failed_at, probe_failures = (None, 0) if measured else _probe_record(status, now)
    return ScalerState(
        last_scale_time=None if last_scale is None else min(last_scale, now),
        # Status keeps one time: taken as a scale-up, the longer wait of the two.
        last_scale_up_time=None if last_scale is None else min(last_scale, now),
        recommendations=tuple(history),
        consecutive_failures=failures if isinstance(failures, int) and failures >= 0 else 0,
        per_replica_rate=per_replica_rate,
        rate_measured=measured,
        restored=True,
        # The probe's rest as last written (probeFailedAt, probeFailures) holds after a
        # restart as it would have: an operator rolled every day no longer probed a pool
        # resting 80 minutes after its fourth failure again 10 minutes later. What happened
        # since the last write is not known (the run that kept going may have been told
        # by a failed probe not to probe), so for a while a probe moves the pool no further
        # than both answers agree.
        probe_failed_at=probe_failed_at,
        probe_failures=probe_failures,
        probe_unknown_until=None if measured else now + PROBE_PAUSE_SECONDS,
        # When this QueueScaler started is not in status either: a pool that pauses on every
        # resize (Kafka) waits one whole window from the restart, as from a creation.
        watching_since=now,
    )


def _bounded(text: str, limit: int) -> str:
    """`text` cut to `limit` characters: the CRD refuses a longer one, and with it every
    later status write."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _probe_record(status: Mapping[str, Any], now: float) -> tuple[float | None, int]:
    """When the probe last failed or paused, and the failures in a row, as written; a
    time ahead of `now` (a writer whose clock ran fast) is taken as now, a count beyond
    what the decision counts as its most, and anything else as none."""
    failed_at = _rounded_up(parse_iso(status.get("probeFailedAt")))
    if failed_at is None:
        return None, 0
    count = status.get("probeFailures")
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        count = 0
    return min(failed_at, now), min(count, PROBE_FAILURES_COUNTED)


def _rounded_up(moment: float | None) -> float | None:
    """Stored times have whole seconds; the true one may be up to a second later, and a
    cooldown or a window must never end earlier after a restart than without one."""
    return None if moment is None else moment + 1.0


def _quantity(value: float | None) -> float | None:
    """A rate rounded to 3 significant digits: readable, and stable enough to compare.
    A negative or non-finite rate is unknown (the CRD would refuse the whole write)."""
    if value is None or not math.isfinite(value) or value < 0:
        return None
    rounded = float(f"{value:.3g}")
    return rounded if math.isfinite(rounded) else None  # 1.795e308 rounds to infinity


@dataclass(frozen=True, slots=True)
class TickOutcome:
    """Everything one tick learned about one QueueScaler, for status."""

    generation: int | None
    include_unacked: bool
    sample: QueueSample | None
    current_replicas: int | None
    decision: Decision | None
    state: ScalerState
    conditions: Sequence[Condition]
    workers: tuple[int, int, int] | None = None
    """(matched, busy, unmatched) pods, when this tick matched consumers to pods."""
    early: bool = False
    """Decided on live counts between samples: the last sample's numbers stand."""


def build_status(
    previous: Mapping[str, Any], outcome: TickOutcome, now: float
) -> tuple[dict[str, Any], list[Condition]]:
    """The status to store, and the conditions that flipped.

    Numbers this tick did not learn (no target) keep their stored values; a failed sample
    drops backlog and rates, so stale numbers never look live (`lastSampleTime` says when
    the last good one was taken). An early tick took no sample: the last one's stand.
    """
    status: dict[str, Any] = {k: v for k, v in previous.items() if k != "conditions"}
    if outcome.generation is not None:
        status["observedGeneration"] = outcome.generation
    sample = outcome.sample
    if sample is not None:
        status["backlog"] = {
            "ready": sample.ready,
            "unacked": sample.unacked,
            "total": sample.backlog if outcome.include_unacked else sample.ready,
        }
        rates = {"publish": _quantity(sample.publish_rate), "ack": _quantity(sample.ack_rate)}
        status["rates"] = {k: v for k, v in rates.items() if v is not None}
        status["lastSampleTime"] = iso(min(sample.taken_at, now))
    elif not outcome.early:
        status.pop("backlog", None)
        status.pop("rates", None)
    if outcome.current_replicas is not None:
        status["currentReplicas"] = outcome.current_replicas
    decision = outcome.decision
    if decision is not None:
        status["desiredReplicas"] = decision.replicas
        last = previous.get("lastDecision") or {}
        same = (
            last.get("replicas") == decision.replicas
            and last.get("reason") == str(decision.reason)
            and last.get("message") == _bounded(decision.message, MAX_DECISION_MESSAGE)
        )
        status["lastDecision"] = {
            "replicas": decision.replicas,
            "reason": str(decision.reason),
            "message": _bounded(decision.message, MAX_DECISION_MESSAGE),
            "at": last.get("at", iso(now)) if same else iso(now),
        }
    if outcome.workers is not None:
        matched, busy, unmatched = outcome.workers
        status["workers"] = {"matched": matched, "busy": busy, "unmatched": unmatched}
    state = outcome.state
    if state.last_scale_time is not None:
        status["lastScaleTime"] = iso(state.last_scale_time)
    status["consecutiveFailures"] = state.consecutive_failures
    status["recommendations"] = [
        {"at": iso(r.at), "replicas": r.replicas}
        for r in stored_history(state.recommendations)
    ]
    rate = state.per_replica_rate
    if rate is not None and 0 < rate < math.inf:
        status["perReplicaRate"] = rate  # whole: a restart must size as the running one did
        status["perReplicaRateMeasured"] = state.rate_measured
    status.pop("probeFailedAt", None)
    status.pop("probeFailures", None)
    if state.probe_failed_at is not None and not state.rate_measured:
        status["probeFailedAt"] = iso(state.probe_failed_at)
        if state.probe_failures:
            status["probeFailures"] = state.probe_failures
    conditions, flipped = merge_conditions(
        previous.get("conditions") or (), outcome.conditions, now, outcome.generation
    )
    status["conditions"] = conditions
    return status, flipped


def stored_history(history: Sequence[Recommendation]) -> Sequence[Recommendation]:
    """The history as status can hold it: at most `MAX_RECOMMENDATIONS` entries.

    A long scale-down window over a falling load keeps a staircase of ever lower entries,
    more than the CRD allows. Dropping the oldest would drop the highest, and a restarted
    operator would shrink the pool earlier than the running one. Instead all but the
    newest are folded into runs as even as the slots allow, each run into one entry as high
    as the highest of it and as new as the newest: a window then holds each run's highest
    at most one run's span longer (review 35: folding all the oldest into one entry held a
    peak of 120 for half an hour, 14 replica-hours, where runs of two cost 1.5).
    """
    if len(history) <= MAX_RECOMMENDATIONS:
        return history
    *older, newest = history
    runs, longer = divmod(len(older), MAX_RECOMMENDATIONS - 1)
    folded, start = [], 0
    for index in range(MAX_RECOMMENDATIONS - 1):
        run = older[start:start + runs + (index < longer)]
        start += len(run)
        folded.append(Recommendation(max(r.at for r in run), max(r.replicas for r in run)))
    return (*folded, newest)


SLOW_FIELDS = (
    "backlog", "rates", "perReplicaRate", "perReplicaRateMeasured", "recommendations",
    "consecutiveFailures", "lastSampleTime", "probeFailedAt",
)
"""Fields that change with every sample under load: written with the others, or when stale.

So does the failure count during an outage; its start and end are written at once (the
conditions flip). After a restart a lower stored count only delays a fallback. A failed
probe changes probeFailures, written at once with its time. The time alone moves at every
poll of pods still starting, at every failure past the fourth in a row, and at every poll
of a partitioned queue (Kafka: a lag always waits, read as a failed probe): written with
the next write, or once the stored one is stale (review 39: past the fourth failure a
restart saw the 80-minute rest as over; review 40: written at once, each such Kafka pool
wrote its status at every poll), at most one refresh interval late against rests of 10
to 80 minutes.
"""


def needs_write(
    written: Mapping[str, Any], new: Mapping[str, Any], *, stale: bool
) -> bool:
    """Whether a status write is worth an apiserver request.

    Decisions (replicas and reason), replica counts and conditions are written as soon as
    they change; the numbers that move with every sample (backlog, rates, the timestamps of
    the recommendation history, the failure count, the decision's sentence) only when
    something else is written anyway or the stored ones are `stale`. Recommendations whose
    values changed count as a change (restarts need them).
    """

    def fast(status: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in status.items() if k not in SLOW_FIELDS}
        decision = kept.get("lastDecision")
        if isinstance(decision, Mapping):
            kept["lastDecision"] = (decision.get("replicas"), decision.get("reason"))
        return kept

    def values(status: Mapping[str, Any]) -> list[Any]:
        return [r.get("replicas") for r in status.get("recommendations") or ()]

    if fast(written) != fast(new) or values(written) != values(new):
        return True
    if not stale:
        return False

    def slow(status: Mapping[str, Any]) -> dict[str, Any]:
        # Timestamps that only renew (the history's, the decision's) are not news: a
        # restart renews the newest recommendation to its own `now` anyway. A probe's
        # time is news: a restart rests from the stored one.
        kept = {
            k: status.get(k) for k in SLOW_FIELDS
            if k not in ("recommendations", "lastSampleTime")
        }
        decision = status.get("lastDecision")
        kept["lastDecision"] = decision.get("message") if isinstance(decision, Mapping) else None
        return kept

    return slow(written) != slow(new)


def conditions_for(
    *,
    paused: bool,
    dry_run: bool,
    broker_error: tuple[str, str] | None,
    target_error: tuple[str, str] | None,
    config_error: tuple[str, str] | None,
    decision: Decision | None,
    current_replicas: int | None,
    queue_error: tuple[str, str] | None = None,
    conflict: tuple[str, str] | None = None,
    note: str | None = None,
) -> list[Condition]:
    """This tick's conditions from what went right and wrong (errors are (reason, message)).

    `broker_error` is a broker that did not answer (BrokerReachable turns False);
    `queue_error` one that answered without what was asked (a queue missing: Ready is
    False, the broker reachable); `note` says what the operator can and cannot do now.
    """
    conditions: list[Condition] = []
    problem = config_error or broker_error or conflict or queue_error or target_error
    if problem:
        reason, message = problem
        ready = Condition("Ready", False, reason, f"{message}{'; ' + note if note else ''}")
    else:
        mode = " (dry run: decisions are reported, never applied)" if dry_run else ""
        ready = Condition(
            "Ready", True, "Sampling", f"sampling and deciding{mode}{'; ' + note if note else ''}"
        )
    conditions.append(ready)
    desired = decision.replicas if decision else current_replicas
    if desired is None:
        conditions.append(Condition("Active", False, "Unknown", "no decision yet"))
    elif desired > 0:
        conditions.append(Condition("Active", True, "Working", f"{desired} replicas wanted"))
    else:
        conditions.append(Condition("Active", False, "Idle", "the pool is scaled to zero"))
    unreachable = broker_error or config_error
    if unreachable:
        conditions.append(Condition("BrokerReachable", False, *unreachable))
    else:
        conditions.append(Condition("BrokerReachable", True, "Sampled", "the broker answered"))
    if target_error:
        conditions.append(Condition("TargetFound", False, *target_error))
    else:
        conditions.append(Condition("TargetFound", True, "Found", "the scale target exists"))
    limited = decision is not None and decision.limited
    limit_reason = camel(str(decision.reason)) if decision and limited else "NotLimited"
    conditions.append(
        Condition(
            "ScalingLimited",
            limited,
            limit_reason,
            decision.message if decision and limited else "the decision was not limited",
        )
    )
    if paused:
        conditions.append(Condition("Paused", True, "Paused", "spec.paused is true: not scaling"))
    else:
        conditions.append(Condition("Paused", False, "NotPaused", "scaling is enabled"))
    return conditions
