"""Kombu's Redis transport as data: which keys hold a queue's messages, and whose an unacked
message is. Pure, so it is tested (and fuzzed) without a server.

Read from kombu 5.7's `kombu/transport/redis.py`:
- a queue is a list named after it; a message of priority p (clamped to 0..9) goes to
  `queue` when its step is 0, else to `queue + sep + str(step)`, the step being the largest
  of `priority_steps` (default [0, 3, 6, 9]) not above p. The separator `sep` defaults to
  "\\x06\\x16"; Celery's documentation suggests ":" with `priority_steps` 0..9;
- a message a consumer took and has not acknowledged is a field of one hash, `unacked`,
  shared by every queue: delivery tag -> JSON `[message, exchange, routing_key]` (and its
  time in the `unacked_index` sorted set);
- kombu restores such a message to the queues `exchange` routes `routing_key` to: the default
  exchange ("") to the queue named by the routing key; another exchange through its bindings,
  the set `_kombu.binding.<exchange>` of `routing_key sep pattern sep queue` (a pattern only
  for topic exchanges);
- `global_keyprefix` prefixes every one of these keys.

The source reads every sub-list a priority 0..9 can land in, whatever `priority_steps` the
workers use (ten LLENs, each O(1)): a setting the user would otherwise have to repeat, and
get wrong without a sign, is not needed. An unacked message belongs to the queues kombu
would restore it to.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

DEFAULT_SEPARATOR: Final = "\x06\x16"
"""kombu's `Channel.sep`."""
PRIORITIES: Final = range(10)
"""kombu clamps a message's priority to 0..9 (`min_priority`, `max_priority`)."""
UNACKED_KEY: Final = "unacked"
BINDING_KEY: Final = "_kombu.binding."
MAX_PREFIX: Final = 253
MAX_SEPARATOR: Final = 16


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one Celery app's kombu keeps its keys in a Redis database."""

    key_prefix: str = ""
    """kombu's `global_keyprefix` transport option."""
    separator: str = DEFAULT_SEPARATOR
    """kombu's `sep` transport option: between a queue's name and its priority step."""

    @property
    def scope(self) -> str:
        """The layout as a QueueRef scope: "" for kombu's defaults (the usual case), else JSON.

        The source is handed QueueRefs only; the scope carries what it needs to find the keys.
        """
        if self == Layout():
            return ""
        return json.dumps([self.key_prefix, self.separator])

    @classmethod
    def from_scope(cls, scope: str) -> Layout:
        """The layout a scope names; ValueError when the scope is not one of ours."""
        if not scope:
            return cls()
        value = json.loads(scope)
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not all(isinstance(part, str) for part in value)
            or not value[1]
        ):
            raise ValueError("not a redis layout scope")
        return cls(key_prefix=value[0], separator=value[1])

    def priority_keys(self, queue: str) -> tuple[str, ...]:
        """The lists a message of any priority 0..9 on `queue` may sit in, the plain one first."""
        return tuple(
            self.key_prefix + (f"{queue}{self.separator}{step}" if step else queue)
            for step in PRIORITIES
        )

    @property
    def unacked_key(self) -> str:
        return self.key_prefix + UNACKED_KEY

    def binding_key(self, exchange: str) -> str:
        return f"{self.key_prefix}{BINDING_KEY}{exchange}"


@dataclass(frozen=True, slots=True)
class Binding:
    """One member of `_kombu.binding.<exchange>`."""

    routing_key: str
    topic: bool
    """A topic exchange's binding (kombu stores a pattern only for those)."""
    queue: str


def parse_bindings(members: Iterable[bytes | str], separator: str) -> tuple[Binding, ...]:
    """The bindings of one exchange; a member that is not three fields is skipped, as kombu's
    own lookup would fail on it."""
    found: list[Binding] = []
    for member in members:
        text = member.decode("utf-8", "replace") if isinstance(member, bytes) else member
        parts = text.split(separator)
        if len(parts) == 3 and parts[2]:
            found.append(Binding(routing_key=parts[0], topic=bool(parts[1]), queue=parts[2]))
    return tuple(found)


def topic_matches(binding_key: str, routing_key: str) -> bool:
    """AMQP topic matching: words split on '.', '*' is one word, '#' zero or more.

    Word by word, not kombu's regex (which lets '*' span a dot): the same answer for the
    routing keys Celery uses, linear in the keys, and no regex built from data in Redis.
    """
    pattern, words = binding_key.split("."), routing_key.split(".")
    # positions[i]: whether pattern[:p] can match words[:i], for the pattern read so far.
    positions = [True] + [False] * len(words)
    for part in pattern:
        if part == "#":
            for i in range(1, len(words) + 1):
                positions[i] = positions[i] or positions[i - 1]
        else:
            nxt = [False] * (len(words) + 1)
            for i, word in enumerate(words):
                nxt[i + 1] = positions[i] and (part == "*" or part == word)
            positions = nxt
    return positions[-1]


def _json_string_end_backwards(text: str, end: int) -> int:
    """Where the JSON string literal ending at `text[end]` (a quote) starts; -1 if none."""
    index = end - 1
    while index >= 0:
        index = text.rfind('"', 0, index + 1)
        if index < 0:
            return -1
        backslashes = 0
        while index - 1 - backslashes >= 0 and text[index - 1 - backslashes] == "\\":
            backslashes += 1
        if backslashes % 2 == 0:
            return index
        index -= 1
    return -1


def _last_token(text: str, end: int) -> tuple[str | None, int] | None:
    """The JSON string or null ending at `text[:end]` (spaces skipped), and where it starts."""
    end = len(text[:end].rstrip())
    if text[:end].endswith("null"):
        return None, end - 4
    if end == 0 or text[end - 1] != '"':
        raise ValueError("not a string")
    start = _json_string_end_backwards(text, end - 1)
    if start < 0:
        raise ValueError("unterminated string")
    value = json.loads(text[start:end])
    if not isinstance(value, str):
        raise ValueError("not a string")
    return value, start


def routing_of(value: bytes | str) -> tuple[str, str] | None:
    """(exchange, routing key) of one `unacked` entry, or None when it is not kombu's shape.

    The entry's tail is read first: the message before it may be large, and only the two
    strings at the end are needed. Anything unusual there falls back to a full parse.
    """
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else value
    try:
        stripped = text.rstrip()
        if not stripped.endswith("]"):
            raise ValueError("not a list")
        last = _last_token(stripped, len(stripped) - 1)
        assert last is not None
        routing_key, start = last
        comma = stripped[:start].rstrip()
        if not comma.endswith(","):
            raise ValueError("no comma")
        before = _last_token(comma, len(comma) - 1)
        assert before is not None
        exchange, start = before
        head = comma[:start].rstrip()
        if not head.endswith(",") or not head.lstrip().startswith("[{"):
            raise ValueError("not a message first")
        return exchange or "", routing_key or ""
    except (ValueError, AssertionError):
        pass
    try:
        entry = json.loads(text)
    except (ValueError, RecursionError):
        return None
    if (
        isinstance(entry, list)
        and len(entry) == 3
        and all(part is None or isinstance(part, str) for part in entry[1:])
    ):
        return entry[1] or "", entry[2] or ""
    return None


TOPIC_STEPS_BUDGET: Final = 100_000
"""Steps of topic matching (a binding trie's node at a word position) per layout per tick,
about 50 ms of CPU on the event loop at most; routes beyond it are unresolved (the sample
is incomplete) rather than a tick spending seconds."""


@dataclass(frozen=True, slots=True)
class Attribution:
    """The unacked messages of one layout, placed on queues."""

    per_queue: Mapping[str, int]
    """Messages kombu would restore to each queue (one message may count on several)."""
    unresolved: int
    """Messages whose queues cannot be told: unreadable entries, an exchange whose bindings
    were not read, one whose bindings route it nowhere now (kombu restores it to the
    exchange's undeliver path, not to a queue that can be told), or a route beyond the
    topic matching budget."""
    over_budget: int = 0
    """Distinct routes left unresolved because the topic matching budget was spent."""


class _Trie:
    """Topic binding keys by word: a route is matched once, in steps near its words, not
    once per binding."""

    __slots__ = ("children", "queues")

    def __init__(self) -> None:
        self.children: dict[str, _Trie] = {}
        self.queues: set[str] = set()


@dataclass(slots=True)
class _Exchange:
    """One exchange's bindings, indexed: direct ones by routing key, topic ones in a trie."""

    direct: dict[str, set[str]]
    topic: _Trie | None


def _index(bindings: tuple[Binding, ...]) -> _Exchange:
    direct: dict[str, set[str]] = {}
    topic: _Trie | None = None
    for binding in bindings:
        if not binding.topic:
            direct.setdefault(binding.routing_key, set()).add(binding.queue)
            continue
        node = topic = topic or _Trie()
        for word in binding.routing_key.split("."):
            node = node.children.setdefault(word, _Trie())
        node.queues.add(binding.queue)
    return _Exchange(direct, topic)


def _topic_queues(root: _Trie, routing_key: str, budget: list[int]) -> set[str] | None:
    """The queues a topic trie routes `routing_key` to (as `topic_matches` would, binding by
    binding), or None when the budget ran out first. `budget[0]` is decremented per step."""
    words = routing_key.split(".")
    found: set[str] = set()
    seen: set[tuple[int, int]] = set()
    stack = [(root, 0)]
    while stack:
        node, at = stack.pop()
        if (id(node), at) in seen:
            continue
        seen.add((id(node), at))
        budget[0] -= 1
        if budget[0] < 0:
            return None
        if at == len(words):
            found |= node.queues
        anything = node.children.get("#")
        if anything is not None:  # zero or more words
            stack.extend((anything, later) for later in range(at, len(words) + 1))
        if at < len(words):
            for part in {words[at], "*"}:
                child = node.children.get(part)
                if child is not None:
                    stack.append((child, at + 1))
    return found


def attribute(
    routes: Iterable[tuple[str, str] | None],
    bindings: Mapping[str, tuple[Binding, ...]],
    *,
    topic_budget: int = TOPIC_STEPS_BUDGET,
) -> Attribution:
    """Place each unacked entry's (exchange, routing key) on queues, as kombu's restore would.

    `bindings` holds the exchanges whose binding sets were read (an empty tuple: read, and
    no bindings); an exchange not in it is unresolved, and so is a message its exchange routes
    to no queue now: the bindings changed since it was published (a queue re-bound or swept),
    and the worker still holds it, so the sample may miss work. Topic matching is bounded by
    `topic_budget` steps; the routes beyond it are unresolved too.
    """
    counts = Counter(routes)
    per_queue: Counter[str] = Counter()
    unresolved = counts.pop(None, 0)
    indexed: dict[str, _Exchange] = {}
    budget = [topic_budget]
    over_budget = 0
    for route, number in counts.items():
        assert route is not None
        exchange, routing_key = route
        if not exchange:
            if routing_key:
                per_queue[routing_key] += number
            else:
                unresolved += number
            continue
        known = bindings.get(exchange)
        if known is None:
            unresolved += number
            continue
        index = indexed.get(exchange)
        if index is None:
            index = indexed[exchange] = _index(known)
        queues = set(index.direct.get(routing_key, ()))
        if index.topic is not None:
            matched = _topic_queues(index.topic, routing_key, budget) if budget[0] > 0 else None
            if matched is None:
                over_budget += 1
                unresolved += number
                continue
            queues |= matched
        if not queues:
            unresolved += number
        for queue in queues:
            per_queue[queue] += number
    return Attribution(per_queue=dict(per_queue), unresolved=unresolved,
                       over_budget=over_budget)
