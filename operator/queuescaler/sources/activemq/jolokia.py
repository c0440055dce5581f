"""Jolokia's bulk read for ActiveMQ: the body of one tick's POST, and the samples in its
answer. Pure, so it is tested and fuzzed without a broker.

Jolokia takes a JSON list of requests in one POST and answers a list in the same order, each
entry with its own `status`: a queue whose MBean does not exist (404,
InstanceNotFoundException) fails alone. A tick reads, in one POST:
- per broker (flavor and name) one *probe* of the broker's own MBean, which tells a missing
  queue from a wrong broker name or a Jolokia agent that serves no ActiveMQ at all, and which
  flavor the agent serves when the spec does not say;
- per queue one read of its MBean's counters, by exact name, or with the broker name a
  wildcard when none is known (the agent of one broker serves one).

What each flavor's counters mean:
- Classic: `QueueSize` counts every message not yet acknowledged, the dispatched ones too;
  `InFlightCount` those dispatched and not acknowledged. Ready = QueueSize - InFlightCount.
  `EnqueueCount` and `DequeueCount` (acknowledged) are the cumulative counters.
- Artemis: `MessageCount` counts scheduled, paged and in-delivery messages; `DeliveringCount`
  those delivered and not acknowledged; `ScheduledCount` those held for a later time.
  Ready = MessageCount - DeliveringCount - ScheduledCount (a scheduled message is not work
  yet: Classic, whose scheduler keeps it out of the queue until its time, agrees).
  `MessagesAdded` and `MessagesAcknowledged` are the cumulative counters.
Both brokers start their counters from zero when they restart: the core takes a counter that
went down for a reset (core.throughput).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from queuescaler.core.redact import excerpt, redact
from queuescaler.core.sample import ErrorKind, QueueRef, QueueSample, SampleResult, SourceError
from queuescaler.sources.activemq.spec import ARTEMIS, CLASSIC, BrokerScope, Flavor

CLASSIC_DOMAIN: Final = "org.apache.activemq"
ARTEMIS_DOMAIN: Final = "org.apache.activemq.artemis"
CLASSIC_ATTRIBUTES: Final = (
    "QueueSize", "InFlightCount", "ConsumerCount", "EnqueueCount", "DequeueCount", "Name")
"""`Name` is the queue's real name: Classic writes `:,'"` as `_` in its ObjectNames, so
`a:b` and `a_b` share one, and only the attribute tells which queue answered."""
ARTEMIS_ATTRIBUTES: Final = (
    "MessageCount", "DeliveringCount", "ScheduledCount", "ConsumerCount", "MessagesAdded",
    "MessagesAcknowledged")
PROBE_ATTRIBUTES: Final[Mapping[Flavor, tuple[str, ...]]] = {
    CLASSIC: ("BrokerVersion", "Slave"), ARTEMIS: ("Version",),
}
"""Cheap attributes of each flavor's broker MBean. Classic's `Slave` is true on a standby of
a master/slave pair, and for a moment while a broker starts (its MBean answers before its
queues are loaded: a queue with messages read as missing for 0.3 s in an end-to-end run)."""
NAMES: Final[Mapping[Flavor, str]] = {CLASSIC: "ActiveMQ Classic", ARTEMIS: "ActiveMQ Artemis"}
QUERY: Final = "includeStackTrace=false&maxCollectionSize=0&maxObjects=0"
"""Processing parameters of every POST: a missing queue's answer is its error line, not a
Java stack trace of some kilobytes; and no limit of ours on how many MBeans a pattern
answers (a limit truncates a pattern's answer without a word)."""
NOT_FOUND: Final = "InstanceNotFoundException"


# --- ObjectNames --------------------------------------------------------------------------


def quote(value: str) -> str:
    """Java's `ObjectName.quote`: how Artemis writes every name in its ObjectNames."""
    escaped = (value.replace("\\", "\\\\").replace('"', '\\"').replace("*", "\\*")
               .replace("?", "\\?").replace("\n", "\\n"))
    return f'"{escaped}"'


def classic_part(value: str) -> str:
    """ActiveMQ Classic's `JMXSupport.encodeObjectNamePart`: how it writes a broker or a
    destination name in its ObjectNames (two names that differ only in `:,'"` share one)."""
    for characters, replacement in ((":,'\"", "_"), ("?", "&qe;"), ("=", "&amp;"),
                                    ("*", "&ast;")):
        for character in characters:
            value = value.replace(character, replacement)
    return value


def broker_mbean(flavor: Flavor, broker_name: str | None) -> str:
    """The broker's own MBean (a pattern matching every broker when the name is None)."""
    if flavor == CLASSIC:
        name = "*" if broker_name is None else classic_part(broker_name)
        return f"{CLASSIC_DOMAIN}:type=Broker,brokerName={name}"
    return f"{ARTEMIS_DOMAIN}:broker={'*' if broker_name is None else quote(broker_name)}"


def queue_mbean(flavor: Flavor, broker_name: str | None, scope: BrokerScope, queue: str) -> str:
    """A queue's MBean, as each flavor registers it."""
    broker = broker_mbean(flavor, broker_name)
    if flavor == CLASSIC:
        return f"{broker},destinationType=Queue,destinationName={classic_part(queue)}"
    address = scope.address if scope.address is not None else queue
    return (f"{broker},component=addresses,address={quote(address)},subcomponent=queues,"
            f"routing-type={quote(scope.routing_type)},queue={quote(queue)}")


def object_name_keys(name: str) -> dict[str, str] | None:
    """The key properties of an ObjectName as Jolokia writes it, quoted values unquoted;
    None when it does not read as one."""
    _, colon, rest = name.partition(":")
    if not colon or not rest:
        return None
    keys: dict[str, str] = {}
    at = 0
    while at < len(rest):
        equals = rest.find("=", at)
        if equals <= at:
            return None
        key, at = rest[at:equals], equals + 1
        if rest.startswith('"', at):
            chars: list[str] = []
            at += 1
            while at < len(rest) and rest[at] != '"':
                if rest[at] == "\\" and at + 1 < len(rest):
                    at += 1
                    chars.append("\n" if rest[at] == "n" else rest[at])
                else:
                    chars.append(rest[at])
                at += 1
            if at >= len(rest):
                return None
            value, at = "".join(chars), at + 1
            if at < len(rest) and rest[at] != ",":
                return None
        else:
            comma = rest.find(",", at)
            comma = len(rest) if comma < 0 else comma
            value, at = rest[at:comma], comma
        keys[key] = value
        at += 1  # the comma
    return keys


# --- answers ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Read:
    """One read of a bulk request: an MBean (or a pattern) and the attributes wanted."""

    mbean: str
    attributes: tuple[str, ...]
    pattern: bool = False

    def request(self) -> dict[str, Any]:
        return {"type": "read", "mbean": self.mbean, "attribute": list(self.attributes)}


@dataclass(frozen=True, slots=True)
class Answer:
    """One entry of a bulk answer."""

    status: int
    value: Any = None
    error_type: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def absent(self) -> bool:
        """The MBean (or every MBean of the pattern) does not exist."""
        return self.status == 404 and self.error_type.endswith(NOT_FOUND)

    def problem(self, what: str) -> SourceError:
        """Why this entry has no value, in words that name no credential."""
        detail = excerpt(self.error or self.error_type or "no detail")
        if self.status == 403 and "Origin" in detail:
            return bad(ErrorKind.AUTH, f"{what}: the Jolokia agent refuses the request's Origin "
                       f"({detail}): set the Secret's key 'origin' to one its policy allows")
        if self.status in (401, 403):
            return bad(ErrorKind.AUTH, f"{what}: the Jolokia agent refuses the read "
                       f"(status {self.status}): {detail}")
        return bad(ErrorKind.BAD_RESPONSE, f"{what}: Jolokia status {self.status}: {detail}")


def bad(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))


def answers(document: Any, expected: int) -> list[Answer]:
    """The entries of a bulk answer to `expected` reads; SourceError(BAD_RESPONSE) when it
    is not one (a Jolokia that refuses the whole request answers one error object)."""
    if isinstance(document, dict):
        entry = _answer(document)
        if entry is not None and not entry.ok:
            raise entry.problem("the bulk read")
        raise bad(ErrorKind.BAD_RESPONSE, "the Jolokia answer is an object, not a list")
    if not isinstance(document, list):
        raise bad(ErrorKind.BAD_RESPONSE,
                  f"the Jolokia answer is a JSON {type(document).__name__}, not a list")
    if len(document) != expected:
        raise bad(ErrorKind.BAD_RESPONSE,
                  f"the Jolokia answer has {len(document)} entries for {expected} reads")
    found = [_answer(entry) for entry in document]
    return [entry or Answer(0, error="an entry is not a Jolokia answer") for entry in found]


def _answer(entry: Any) -> Answer | None:
    if not isinstance(entry, dict):
        return None
    status = entry.get("status")
    if isinstance(status, bool) or not isinstance(status, int):
        return None
    error_type, error = entry.get("error_type"), entry.get("error")
    return Answer(status, entry.get("value"), error_type if isinstance(error_type, str) else "",
                  error if isinstance(error, str) else "")


def matched(read: Read, answer: Answer) -> list[tuple[dict[str, str] | None, Mapping[str, Any]]]:
    """The MBeans an ok answer holds, each with its key properties (None for an exact read)
    and its attributes."""
    value = answer.value
    if not isinstance(value, dict):
        return []
    if not read.pattern:
        return [(None, value)]
    return [(object_name_keys(name), attributes) for name, attributes in value.items()
            if isinstance(name, str) and isinstance(attributes, dict)]


# --- one tick's sample --------------------------------------------------------------------


class Probe(enum.Enum):
    """What the probe of one broker found."""

    FOUND = "found"
    SEVERAL = "several"
    """The broker name was a wildcard and the agent serves more than one."""
    ABSENT = "absent"
    UNKNOWN = "unknown"
    """The probe itself failed (a Jolokia policy that hides the broker MBean, say)."""
    STANDBY = "standby"
    """A Classic broker that says it is a slave: a standby, or still loading its queues."""


class _Malformed(Exception):
    """One queue's answer is unusable; becomes that queue's BAD_RESPONSE."""


@dataclass(frozen=True, slots=True)
class QueueRead:
    """One queue read on one flavor (a queue of unknown flavor is read on both)."""

    ref: QueueRef
    flavor: Flavor
    broker_name: str | None
    read: Read


@dataclass(frozen=True, slots=True)
class Outcome:
    """A tick's samples, and the flavors whose broker answered its probe."""

    result: SampleResult
    flavors: frozenset[Flavor]
    names: Mapping[Flavor, str] = field(default_factory=dict)
    """The broker's name, per flavor, where a wildcard probe found exactly one."""


def candidates(scope: BrokerScope, detected: Flavor | None) -> tuple[Flavor, ...]:
    """The flavors a queue is read on: the spec's, else the one found before, else both."""
    if scope.flavor is not None:
        return (scope.flavor,)
    return (detected,) if detected is not None else (CLASSIC, ARTEMIS)


class SamplePlan:
    """The bulk read of a tick for every queue of one agent, and how to read its answer."""

    def __init__(
        self,
        queues: Iterable[QueueRef],
        secret_broker: str | None = None,
        detected: Flavor | None = None,
    ) -> None:
        """`secret_broker` is the Secret's brokerName; `detected` the flavor a previous tick
        found the agent serves (None: not known)."""
        self.refused: dict[QueueRef, SourceError] = {}
        self.queue_reads: list[QueueRead] = []
        probes: dict[tuple[Flavor, str | None], None] = {}
        for ref in dict.fromkeys(queues):
            scope = BrokerScope.from_scope(ref.scope)
            if scope is None:
                self.refused[ref] = bad(
                    ErrorKind.BAD_CONFIG, f"queue {ref.name!r}: not an activemq queue scope")
                continue
            broker_name = scope.broker_name or secret_broker
            for flavor in candidates(scope, detected):
                probes[(flavor, broker_name)] = None
                self.queue_reads.append(QueueRead(ref, flavor, broker_name, Read(
                    queue_mbean(flavor, broker_name, scope, ref.name),
                    CLASSIC_ATTRIBUTES if flavor == CLASSIC else ARTEMIS_ATTRIBUTES,
                    pattern=broker_name is None)))
        self.probes = list(probes)
        self.probe_reads = [
            Read(broker_mbean(flavor, name), PROBE_ATTRIBUTES[flavor], pattern=name is None)
            for flavor, name in self.probes
        ]

    @property
    def reads(self) -> list[Read]:
        return [*self.probe_reads, *(q.read for q in self.queue_reads)]

    def body(self) -> list[dict[str, Any]]:
        """The POST's JSON body: the probes, then the queue reads."""
        return [read.request() for read in self.reads]

    def parse(self, document: Any, taken_at: float) -> Outcome:
        """Each queue's sample or error out of the POST's decoded answer. Raises
        SourceError(BAD_RESPONSE) only when the answer is not a bulk answer to this plan
        (or AUTH when Jolokia refused it as a whole)."""
        entries = answers(document, len(self.probe_reads) + len(self.queue_reads))
        probed: dict[tuple[Flavor, str | None], Probe] = {}
        names: dict[Flavor, str] = {}
        for key, read, entry in zip(self.probes, self.probe_reads, entries, strict=False):
            probed[key], name = probe(key[0], read, entry)
            if name is not None and key[1] is None:
                names[key[0]] = name
        tried: dict[QueueRef, list[tuple[QueueRead, QueueSample | SourceError | None]]] = {}
        for queue_read, entry in zip(self.queue_reads, entries[len(self.probes):], strict=True):
            tried.setdefault(queue_read.ref, []).append(
                (queue_read, _queue_outcome(queue_read, entry, taken_at)))
        result: dict[QueueRef, QueueSample | SourceError] = dict(self.refused)
        for ref, outcomes in tried.items():
            result[ref] = _decide(ref, outcomes, probed)
        flavors = frozenset(flavor for (flavor, _), seen in probed.items()
                            if seen in (Probe.FOUND, Probe.SEVERAL, Probe.STANDBY))
        return Outcome(result, flavors, MappingProxyType(names))


BROKER_KEYS: Final[Mapping[Flavor, str]] = {CLASSIC: "brokerName", ARTEMIS: "broker"}


def probe(flavor: Flavor, read: Read, entry: Answer) -> tuple[Probe, str | None]:
    """What a broker probe found, and the broker's name when a wildcard found one (as its
    ObjectName writes it: Classic's mangled, Artemis' unquoted)."""
    if entry.absent:
        return Probe.ABSENT, None
    if not entry.ok:
        return Probe.UNKNOWN, None
    found = matched(read, entry)
    if len(found) > 1:
        return Probe.SEVERAL, None
    if not found:
        return Probe.UNKNOWN, None
    keys, attributes = found[0]
    name = (keys or {}).get(BROKER_KEYS[flavor])
    if flavor == CLASSIC and attributes.get("Slave") is True:
        return Probe.STANDBY, name
    return Probe.FOUND, name


def _queue_outcome(
    queue_read: QueueRead, entry: Answer, taken_at: float
) -> QueueSample | SourceError | None:
    """A read's sample, its error, or None when its MBean does not exist."""
    what = describe(queue_read.ref, queue_read.flavor)
    if entry.absent:
        return None
    if not entry.ok:
        return entry.problem(what)
    found = matched(queue_read.read, entry)
    if len(found) > 1:
        return bad(ErrorKind.BAD_CONFIG, several(queue_read.flavor))
    if not found:
        return None if queue_read.read.pattern else bad(
            ErrorKind.BAD_RESPONSE, f"{what}: the answer holds no attributes")
    attributes = found[0][1]
    if queue_read.flavor == CLASSIC and attributes.get("Name", queue_read.ref.name) != (
            queue_read.ref.name):
        return None  # another queue whose name Classic mangles alike: this one is missing
    try:
        return queue_sample(queue_read.flavor, attributes, taken_at)
    except _Malformed as problem:
        return bad(ErrorKind.BAD_RESPONSE, f"{what}: {problem}")


def _decide(
    ref: QueueRef,
    outcomes: list[tuple[QueueRead, QueueSample | SourceError | None]],
    probed: Mapping[tuple[Flavor, str | None], Probe],
) -> QueueSample | SourceError:
    """One queue's outcome out of its reads (one per candidate flavor) and the probes."""
    for read, _ in outcomes:
        if probed.get((read.flavor, read.broker_name)) is Probe.STANDBY:
            return bad(ErrorKind.UNREACHABLE, f"the {NAMES[read.flavor]} broker"
                       f"{named(read.broker_name)} is a slave (a standby, or still starting):"
                       " its queues are not read until it is the master")
    samples = [(read, outcome) for read, outcome in outcomes if isinstance(outcome, QueueSample)]
    if len(samples) == 1:
        return samples[0][1]
    if samples:
        return bad(ErrorKind.BAD_CONFIG, f"queue {ref.name!r} is found on both a Classic and "
                   "an Artemis broker behind the Jolokia URL: set flavor")
    errors = [outcome for _, outcome in outcomes if isinstance(outcome, SourceError)]
    if errors:
        return errors[0]
    brokers = [(read, probed.get((read.flavor, read.broker_name))) for read, _ in outcomes]
    for read, seen in brokers:
        if seen is Probe.SEVERAL:
            return bad(ErrorKind.BAD_CONFIG, several(read.flavor))
    for read, seen in brokers:
        if seen in (Probe.FOUND, Probe.UNKNOWN):
            return bad(ErrorKind.QUEUE_NOT_FOUND, f"{describe(ref, read.flavor)} not found")
    read = outcomes[0][0]
    if len(outcomes) > 1:
        return bad(ErrorKind.BAD_CONFIG, "no ActiveMQ broker (Classic or Artemis) answers "
                   f"behind the Jolokia URL{named(read.broker_name)}: check jolokiaUrl")
    return bad(ErrorKind.BAD_CONFIG, f"no {NAMES[read.flavor]} broker{named(read.broker_name)} "
               "answers behind the Jolokia URL: check jolokiaUrl, brokerName and flavor")


def named(broker_name: str | None) -> str:
    return f" named {broker_name!r}" if broker_name is not None else ""


def several(flavor: Flavor) -> str:
    return (f"the Jolokia agent serves several {NAMES[flavor]} brokers: set brokerName "
            "(in the spec or the Secret)")


def describe(ref: QueueRef, flavor: Flavor) -> str:
    """A queue in a message: its name, and where Artemis binds it when that is not plain."""
    text = f"queue {ref.name!r}"
    scope = BrokerScope.from_scope(ref.scope)
    if flavor == ARTEMIS and scope is not None:
        if scope.address is not None and scope.address != ref.name:
            text += f" (address {scope.address!r})"
        if scope.routing_type != "anycast":
            text += f" ({scope.routing_type})"
    return f"{text} on {NAMES[flavor]}"


def _count(attributes: Mapping[str, Any], name: str) -> int:
    value = attributes.get(name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Malformed(f"{name!r} is {'missing' if value is None else 'not a count'}")
    if value < 0:
        raise _Malformed(f"{name!r} is negative")
    return value


def _counter(attributes: Mapping[str, Any], name: str) -> int | None:
    """A cumulative counter; None when absent or impossible (it is only for rates)."""
    try:
        return _count(attributes, name)
    except _Malformed:
        return None


def queue_sample(flavor: Flavor, attributes: Mapping[str, Any], taken_at: float) -> QueueSample:
    """One queue's sample out of its MBean's attributes (see the module docstring)."""
    if flavor == CLASSIC:
        total, in_flight = _count(attributes, "QueueSize"), _count(attributes, "InFlightCount")
        ready = total - in_flight
        published, acked = "EnqueueCount", "DequeueCount"
    else:
        total, in_flight = _count(attributes, "MessageCount"), _count(attributes, "DeliveringCount")
        ready = total - in_flight - _count(attributes, "ScheduledCount")
        published, acked = "MessagesAdded", "MessagesAcknowledged"
    return QueueSample(
        ready=max(0, ready),
        unacked=in_flight,
        consumers=_count(attributes, "ConsumerCount"),
        taken_at=taken_at,
        published_total=_counter(attributes, published),
        acked_total=_counter(attributes, acked),
    )


def next_detected(previous: Flavor | None, plan: SamplePlan, outcome: Outcome) -> Flavor | None:
    """The flavor the agent serves after this tick: the one whose broker answered when
    exactly one did; forgotten when the broker of the one known stops answering (another
    broker took the URL)."""
    if len(outcome.flavors) == 1:
        (flavor,) = outcome.flavors
        return flavor
    if previous is not None and previous not in outcome.flavors and any(
            flavor == previous for flavor, _ in plan.probes):
        return None
    return previous
