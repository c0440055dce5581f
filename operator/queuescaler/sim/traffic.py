"""Recorded traffic for `queuescaler simulate`: a publish rate at points in time, and what
the operator saw meanwhile (backlog, replicas, consumers, per-replica rate). Pure: text in,
a `Traffic` out; fetching it from Prometheus is the command line's job.
"""

from __future__ import annotations

import datetime
import itertools
import math
import statistics
from dataclasses import dataclass
from typing import Final


class TrafficError(ValueError):
    """Traffic that cannot be replayed; the message says where and why."""


MAX_REPLAY_SECONDS: Final = 31 * 86400
"""The longest recording replayed (31 days): the replay keeps a few numbers for each second,
so a recording spanning years (a typo'd date, times in milliseconds) would not end."""
MIN_SERVICE_SECONDS: Final = 1e-6
MAX_SERVICE_SECONDS: Final = 86400.0
"""The task times a replay takes, a microsecond to a day: beyond them is a unit slip or a
per-replica rate read near zero or near infinity; workers would never finish, or finish
everything at once (a division by nothing)."""
MAX_SECONDS_TIME: Final = 1e11
"""CSV times above this (after the year 5000) are not seconds: milliseconds, most likely."""


def plausible_service(seconds: float) -> bool:
    """A task time a replay takes (NaN is not)."""
    return MIN_SERVICE_SECONDS <= seconds <= MAX_SERVICE_SECONDS


def service_bounds_words() -> str:
    """The task times a replay takes, for messages."""
    return f"{MIN_SERVICE_SECONDS:g} to {MAX_SERVICE_SECONDS:,.0f} s (a day)"


def replay_limit_words() -> str:
    return f"{MAX_REPLAY_SECONDS // 86400} days ({MAX_REPLAY_SECONDS:,} s)"


@dataclass(frozen=True, slots=True)
class Traffic:
    """Recorded traffic: a publish rate at each point in time, held until the next point.

    The optional series have one value per point (None where the point has none) or are
    empty (not recorded at all).
    """

    name: str
    times: tuple[float, ...]
    """Seconds (Unix time, or from any origin), strictly increasing."""
    publish_rates: tuple[float, ...]
    """Messages published per second from each point to the next."""
    service_seconds: tuple[float | None, ...] = ()
    """Mean task time at each point, when the recording has it."""
    per_replica_rates: tuple[float | None, ...] = ()
    """What one replica acknowledges per second (the operator's `per_replica_rate`)."""
    backlog: tuple[float | None, ...] = ()
    """Messages ready and unacknowledged, as the operator sampled them."""
    replicas: tuple[float | None, ...] = ()
    """The target's replica count (its spec.replicas), as the operator saw it."""
    unacked: tuple[float | None, ...] = ()
    """Of the backlog, the messages delivered to consumers and not yet acknowledged."""
    consumers: tuple[float | None, ...] = ()
    """Consumers attached to the queue, as the operator sampled them."""
    notes: tuple[str, ...] = ()
    """What was assumed in making it, in words for the output."""

    def __post_init__(self) -> None:
        if len(self.times) < 2:
            raise TrafficError(f"{self.name}: needs at least two points in time")
        if len(self.publish_rates) != len(self.times):
            raise TrafficError(f"{self.name}: one publish rate per point in time")
        for label, series in (
            ("service_seconds", self.service_seconds),
            ("per_replica_rates", self.per_replica_rates),
            ("backlog", self.backlog),
            ("replicas", self.replicas),
            ("unacked", self.unacked),
            ("consumers", self.consumers),
        ):
            if series and len(series) != len(self.times):
                raise TrafficError(f"{self.name}: {label} must have one value per point in time")
        for earlier, later in itertools.pairwise(self.times):
            if not later > earlier:
                raise TrafficError(f"{self.name}: times must increase ({earlier:g}, {later:g})")
        for time, rate in zip(self.times, self.publish_rates, strict=True):
            if not (math.isfinite(rate) and rate >= 0):
                raise TrafficError(f"{self.name}: publish rate {rate!r} at {time:g} is not >= 0")
        for time, seconds in zip(self.times, self.service_seconds, strict=False):
            if seconds is not None and not plausible_service(seconds):
                raise TrafficError(f"{self.name}: service seconds {seconds!r} at {time:g} must"
                                   f" be from {service_bounds_words()}")
        span = self.times[-1] - self.times[0]
        if span > MAX_REPLAY_SECONDS:
            raise TrafficError(
                f"{self.name}: spans {span:,.0f} s (from {self.times[0]:g} to "
                f"{self.times[-1]:g}), more than the {replay_limit_words()} a replay covers: "
                "replay a shorter stretch"
            )

    @property
    def step(self) -> float:
        """The usual spacing of the points (their median)."""
        return statistics.median(b - a for a, b in itertools.pairwise(self.times))


_COLUMNS: Final = ("time", "publish_rate", "service_seconds")


def traffic_from_csv(text: str, name: str) -> Traffic:
    """Traffic from CSV text: `time,publish_rate[,service_seconds]` per line, an optional
    header line naming those columns. `time` is seconds (Unix time or from any origin) or an
    ISO 8601 timestamp (UTC unless it says otherwise); an empty service_seconds is None."""
    times: list[float] = []
    rates: list[float] = []
    service: list[float | None] = []
    columns: int | None = None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte order mark (spreadsheets write one)
    for number, line in enumerate(text.splitlines(), start=1):
        cells = [cell.strip() for cell in line.split(",")]
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not times and columns is None and cells[0].lower() == "time":
            if tuple(cell.lower() for cell in cells) not in (_COLUMNS[:2], _COLUMNS):
                raise TrafficError(
                    f"{name}, line {number}: the header must be time,publish_rate"
                    f"[,service_seconds], not {line.strip()!r}"
                )
            columns = len(cells)
            continue
        if len(cells) not in (2, 3) or (columns is not None and len(cells) != columns):
            raise TrafficError(
                f"{name}, line {number}: expected time,publish_rate[,service_seconds], "
                f"got {line.strip()!r}"
            )
        times.append(_csv_time(cells[0], name, number))
        rates.append(_csv_number(cells[1], "publish_rate", name, number))
        given = cells[2] if len(cells) == 3 else ""
        seconds = _csv_number(given, "service_seconds", name, number) if given else None
        if seconds is not None and not plausible_service(seconds):
            raise TrafficError(f"{name}, line {number}: service_seconds {given!r} must be from "
                               f"{service_bounds_words()}")
        service.append(seconds)
    if len(times) < 2:
        raise TrafficError(f"{name}: needs at least two lines of time,publish_rate")
    with_service = tuple(service) if any(s is not None for s in service) else ()
    if times[-1] - times[0] > MAX_REPLAY_SECONDS:
        raise TrafficError(
            f"{name}: its times span {times[-1] - times[0]:,.0f} s ({_when(times[0])} to "
            f"{_when(times[-1])}), more than the {replay_limit_words()} a replay covers: a "
            "typo in a date? Else replay fewer lines"
        )
    try:
        return Traffic(name, tuple(times), tuple(rates), service_seconds=with_service)
    except TrafficError as error:
        raise TrafficError(f"{error} (in the CSV)") from None


def _csv_time(cell: str, name: str, number: int) -> float:
    try:
        seconds = float(cell)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or abs(seconds) > MAX_SECONDS_TIME:
            raise TrafficError(
                f"{name}, line {number}: time {cell!r} is not seconds (more than "
                f"{MAX_SECONDS_TIME:.0e} s is after the year 5000): milliseconds? divide by "
                "1,000"
            )
        return seconds
    try:
        moment = datetime.datetime.fromisoformat(cell.replace("Z", "+00:00"))
    except ValueError:
        raise TrafficError(
            f"{name}, line {number}: time {cell!r} is neither seconds nor an ISO 8601 timestamp"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def _when(seconds: float) -> str:
    """A time as the CSV may have said it: ISO 8601 if it is a Unix time of this era."""
    if 1e9 <= seconds <= MAX_SECONDS_TIME:
        moment = datetime.datetime.fromtimestamp(seconds, tz=datetime.UTC)
        return moment.isoformat().replace("+00:00", "Z")
    return f"{seconds:g} s"


def _csv_number(cell: str, column: str, name: str, number: int) -> float:
    try:
        value = float(cell)
    except ValueError:
        raise TrafficError(f"{name}, line {number}: {column} {cell!r} is not a number") from None
    if not math.isfinite(value):
        raise TrafficError(f"{name}, line {number}: {column} {cell!r} is not a finite number")
    if value < 0:
        raise TrafficError(f"{name}, line {number}: {column} {cell!r} must be >= 0")
    return value


def publish_rates_filled(
    times: tuple[float, ...], rates: tuple[float | None, ...], backlog: tuple[float | None, ...]
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """A publish rate at every point, and what was assumed: the operator's series appear a
    few seconds apart (RabbitMQ reports rates only after its first statistics interval, the
    backlog at once), so a recording may begin without a rate. A point without one takes the
    backlog's growth to the next point (a lower bound: what was consumed meanwhile is not
    known), else the rate before it, else 0."""
    filled: list[float] = []
    grown = held = 0
    for i, rate in enumerate(rates):
        if rate is not None:
            filled.append(rate)
            continue
        now, later = (backlog[i], backlog[i + 1]) if i + 1 < len(times) and backlog else (None,
                                                                                          None)
        if now is not None and later is not None:
            filled.append(max(0.0, (later - now) / (times[i + 1] - times[i])))
            grown += 1
        else:
            filled.append(filled[-1] if filled else 0.0)
            held += 1
    notes = []
    if grown:
        notes.append(f"{grown:,} point{'s' if grown > 1 else ''} without a recorded publish rate "
                     "took the backlog's growth to the next point (a lower bound)")
    if held:
        notes.append(f"{held:,} point{'s' if held > 1 else ''} without a recorded publish rate "
                     "or backlog held the rate before them")
    return tuple(filled), tuple(notes)


GAP_STEPS: Final = 3
"""A spacing of more than this many usual steps between two points is a gap (the series
was not recorded); its seconds hold the last rate and the notes count them."""
MOVE_HORIZON: Final = 15.0
"""How far back a recorded publish rate's messages may be moved to the point where the
backlog grew: RabbitMQ's rate is a statistics interval (5 s) late and held over the next one,
and the operator's series are a poll and a scrape behind that (measured on the integration
test's runs: 6 to 12 s)."""
MOVE_AT_LEAST: Final = 0.5
"""Shortfalls below half a message are rounding, not a burst."""


def publish_rates_timed_by_backlog(
    times: tuple[float, ...], rates: tuple[float, ...], backlog: tuple[float | None, ...]
) -> tuple[tuple[float, ...], tuple[str, ...]]:
    """The recorded messages, moved earlier where the backlog grew before the publish rate
    counted them. A rate is measured over time already past, so a burst shows in the backlog
    first (ready + unacked grow only by publishes) and in the rate seconds later. Where the
    backlog grew between two points by more than the rate counted, the rise of the rate over
    the next `MOVE_HORIZON` s above its level then moves back, up to the growth: a shift in
    time only, never a message added or lost, and steady traffic has no rise to move (a dip
    in the backlog that recovers moves nothing). Not across gaps, not with steps longer than
    the horizon, not into the first interval (its rate seeds the replay's warm-up); points
    untouched keep their rate exactly."""
    if not backlog or len(times) < 2:
        return rates, ()
    spans = [b - a for a, b in itertools.pairwise(times)]
    usual = statistics.median(spans)
    spans.append(usual)  # the last point holds one usual step, as replayed
    counted = [rate * span for rate, span in zip(rates, spans, strict=True)]
    if not all(math.isfinite(c) for c in counted):
        return rates, ()
    movable = [span <= GAP_STEPS * usual for span in spans]
    touched: set[int] = set()
    moved = 0.0
    for i, (now, after) in enumerate(itertools.pairwise(backlog)):
        if i == 0 or now is None or after is None or not movable[i]:
            continue
        missing = after - now - counted[i]
        later = i + 1
        while (missing > MOVE_AT_LEAST and later < len(times) and movable[later]
               and times[later] + spans[later] <= times[i + 1] + MOVE_HORIZON):
            taken = min(missing, counted[later] - rates[i] * spans[later])
            if taken > 0:
                counted[later] -= taken
                counted[i] += taken
                missing -= taken
                moved += taken
                touched.update((i, later))
            later += 1
    if round(moved) == 0:
        return rates, ()
    timed = tuple(counted[i] / spans[i] if i in touched else rate for i, rate in enumerate(rates))
    return timed, (f"{moved:,.0f} message{'' if round(moved) == 1 else 's'} moved up to "
                   f"{MOVE_HORIZON:g} s earlier, to where the backlog grew (a publish rate is "
                   "measured over time already past)",)
