"""Celery on Redis as a QueueSource: every queue of a tick in one pipeline (one round trip).

One `RedisSource` per Redis database serves every QueueScaler on it. `sample()` sends one
pipeline, whatever the number of queues: per queue the LLEN of its ten priority lists, per
kombu layout (key prefix and separator) the size of the shared `unacked` hash and one HSCAN
page of it, and the binding sets of the exchanges its messages may come from. The unacked
entries are placed on queues as kombu would restore them (`layout.attribute`).

What Redis cannot say: it keeps no publish or ack counters (rates are None, and the core
sizes on backlog), and which workers consume a list (consumers are reported as 0 here,
meaning unknown: QueueSample has no "unknown" for them yet). A sample is incomplete (may
grow a pool, never shrink it) when some unacked messages could not be placed on a queue:
the hash was not read in one HSCAN page, an entry was not kombu's shape, its exchange's
bindings were not read this tick (they are, from the next tick on), its exchange routes it
to no queue now, or its topic routing was beyond the tick's budget; or when the hash could
not be read (refused by the ACL, not a hash). The sample's note says why, where the user can
act on it (the Ready condition shows it).

`peek()` is the same pipeline without the unacked hash: the ready counts only, which the
engine's fast path reads for pools that may grow (a burst seen within its wake interval).

A Redis stream read by a consumer group (`streams.py`) rides in the same pipeline: XINFO
GROUPS and XINFO STREAM per stream give the group's lag (ready), its pending entries
(unacked) and the counters rates are differenced from; its busy consumers are XINFO
CONSUMERS' pending counts.

`clients()` asks the Celery workers themselves (Celery's remote control, `control.py`): one
broadcast round per layout (at most CONTROL_CONNECTIONS at once, the listing bounded to
INSPECT_WAVES rounds' time), answered per worker hostname (the pod's name by default) with
the tasks it holds and the queues it consumes. Redis has no list of who waits
on a list; this is the only way to tell a busy worker from an idle one.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
import uuid
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
import redis.exceptions
from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool, SSLConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from queuescaler.core.redact import redact
from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    QueueSample,
    SampleResult,
    SourceError,
)
from queuescaler.sources.redis.control import (
    COMMANDS,
    Round,
    broadcast_channel,
    parse_reply,
    reply_route,
    request,
)
from queuescaler.sources.redis.layout import (
    PRIORITIES,
    Binding,
    Layout,
    attribute,
    parse_bindings,
    routing_of,
)
from queuescaler.sources.redis.secret import RedisBroker
from queuescaler.sources.redis.streams import StreamGroup, consumer_clients, stream_sample

__all__ = ["RedisSource"]

ACL_NEEDS = (
    "an ACL user needs +llen +hlen +hscan +smembers on the queues' keys, the unacked hash and "
    "the _kombu.binding.* sets, and +select for a database other than 0"
)
"""All sampling ever sends (redis-py's CLIENT SETINFO at connect may fail: it is ignored)."""
CONTROL_ACL_NEEDS = (
    "listing busy workers (Celery's inspect) also needs +publish on the channel "
    "/<db>.celery.pidbox, and +sadd +srem +del +brpop +rpop on the *.reply.celery.pidbox "
    "lists and the _kombu.binding*.reply.celery.pidbox sets"
)
NO_RATES = (
    "rates unavailable: Redis keeps no publish or ack counters for a Celery queue,"
    " so the pool is sized on its backlog alone (target.drainSeconds and the rate floor"
    " do not apply)"
)
"""The Ready condition's note on every Celery-on-Redis sample (not on a stream's, whose
counters give rates)."""
REPLIES_PER_READ = 1_000
"""Answers taken per RPOP after the BRPOP that waited for the first one."""
STREAM_ACL_NEEDS = "an ACL user needs +xinfo on the streams' keys"
INSPECT_SECONDS = 1.0
"""How long workers have to answer a broadcast (Celery's own `inspect` default)."""
CONTROL_CONNECTIONS = 2
"""The broadcast rounds' pool: a round holds one connection at a time (in BRPOP for most of
it), so at most this many rounds run at once; redis-py's asyncio pool does not wait for a
free connection, it fails ("Too many connections")."""
INSPECT_WAVES = 4
"""A listing runs its rounds in at most this many waves of CONTROL_CONNECTIONS rounds, so it
lasts about INSPECT_WAVES x inspect_seconds at most, whatever the number of layouts; a layout
whose round could not start in that time is told as blind (its pools hold their pods)."""
UNACKED_SCAN_LIMIT = 10_000
"""Unacked entries read per layout per tick (one HSCAN page): Celery holds about workers x
concurrency x prefetch (4) of them. Each comes with its message body (about 1 to 2 kB for a
Celery task), so the page bounds a tick's transfer; beyond it the sample is incomplete."""
REMEMBERED_EXCHANGES = 256
"""Exchanges per layout whose bindings are read every tick, besides the queues' own names
(Celery's default exchange for a queue is named after it)."""
KEYS_PER_QUEUE = len(PRIORITIES)
"""LLENs per queue: its list and the nine priority lists a priority 0..9 may land in."""
PER_ROUND_SECONDS = 0.1
"""A round's own commands (route, publish, unroute) on top of its inspect_seconds."""
PER_QUEUE_SECONDS = 0.001
"""Time a pipeline may take per queue asked about, on top of the timeout."""


def _error(kind: ErrorKind, message: str) -> SourceError:
    return SourceError(kind, redact(message))


def failure(error: BaseException, where: str, needs: str = ACL_NEEDS) -> SourceError:
    """A redis-py (or asyncio) error as a SourceError that names no credential."""
    if isinstance(error, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError
                  | redis.exceptions.AuthenticationWrongNumberOfArgsError):
        return _error(ErrorKind.AUTH, f"{where} refused the credentials: {error}")
    if isinstance(error, redis.exceptions.NoPermissionError):
        return _error(ErrorKind.AUTH, f"{where}: {error} ({needs})")
    if isinstance(error, redis.exceptions.TimeoutError | TimeoutError):
        return _error(ErrorKind.TIMEOUT, f"{where}: no answer in time")
    if _tls_failed(error):
        return _error(ErrorKind.TLS_FAILED, f"{where}: TLS failed: {error}")
    if isinstance(error, redis.exceptions.ConnectionError | OSError):
        return _error(ErrorKind.UNREACHABLE, f"{where}: {error}")
    if isinstance(error, redis.exceptions.ResponseError) and "DB index" in str(error):
        return _error(ErrorKind.BAD_CONFIG, f"{where}: the database does not exist: {error}")
    state = _server_state(error, where)  # BUSY at connect (its SELECT), MOVED...
    if state is not None:
        return state
    return _error(ErrorKind.BAD_RESPONSE, f"{where}: {type(error).__name__}: {error}")


UNAVAILABLE_REPLIES = frozenset({"BUSY", "MASTERDOWN", "LOADING", "TRYAGAIN", "CLUSTERDOWN"})
"""Error replies that tell the server's state (a script past its time limit, a replica
without its master, a dataset loading): it cannot answer now, whatever the keys hold."""
CLUSTER_REPLIES = frozenset({"MOVED", "ASK", "CROSSSLOT"})
"""Error replies of a Redis Cluster node: the source reads one database of one server."""


def reply_failure(
    reply: object, where: str, needs: str = ACL_NEEDS
) -> SourceError | None:
    """What an error Redis answered in place of one command's reply means, or None when it is
    WRONGTYPE: the key is there and of another type (the caller says which key and why that
    is not kombu's layout). Only WRONGTYPE is about the data; the others are named as the
    broker's state (unreachable), topology (bad config) or refusal (auth)."""
    if isinstance(reply, redis.exceptions.NoPermissionError):
        return failure(reply, where, needs)
    if not isinstance(reply, BaseException):
        return _error(ErrorKind.BAD_RESPONSE, f"{where}: not the reply expected: {reply!r:.80}")
    text = str(reply)
    code = text.split(" ", 1)[0].upper()
    if code == "WRONGTYPE":
        return None
    state = _server_state(reply, where)
    if state is not None:
        return state
    if not isinstance(reply, redis.exceptions.ResponseError):
        return failure(reply, where, needs)
    return _error(ErrorKind.BAD_RESPONSE, f"{where} answered an error: {text}")


def _server_state(reply: BaseException, where: str) -> SourceError | None:
    """An error reply that tells the server's state or topology, not the key's, or None."""
    text = str(reply)
    code = text.split(" ", 1)[0].upper()
    # redis-py strips the code from the replies it has a class for.
    if code in UNAVAILABLE_REPLIES or isinstance(
            reply, redis.exceptions.TryAgainError | redis.exceptions.ClusterDownError):
        return _error(ErrorKind.UNREACHABLE, f"{where} cannot answer now: {text}")
    if code in CLUSTER_REPLIES or isinstance(
            reply, redis.exceptions.AskError | redis.exceptions.ClusterCrossSlotError):
        return _error(
            ErrorKind.BAD_CONFIG,
            f"{where} is a Redis Cluster node ({text}): the source reads one database of one "
            "server, not a cluster",
        )
    return None


def _tls_failed(error: BaseException) -> bool:
    """An ssl error, itself or as the cause redis-py wraps in its ConnectionError."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ssl.SSLError | ssl.CertificateError) or "[SSL" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class _Plan:
    """One layout's part of the pipeline: where each reply lands."""

    layout: Layout
    queues: list[QueueRef] = field(default_factory=list)
    exchanges: list[str] = field(default_factory=list)


class RedisSource:
    """Samples one Redis database's kombu queues. Use it on one event loop; `close()` when done."""

    def __init__(
        self,
        broker: RedisBroker,
        *,
        timeout: float = 5.0,
        unacked_scan_limit: int = UNACKED_SCAN_LIMIT,
        connection_class: type[AbstractConnection] | None = None,
        inspect_seconds: float = INSPECT_SECONDS,
    ) -> None:
        """`timeout` bounds every call; `connection_class` observes the connection (a
        subclass of redis-py's Connection, or SSLConnection for rediss://);
        `inspect_seconds` is how long workers have to answer `clients()`' broadcast."""
        self._broker = broker
        self._timeout = timeout
        self._scan_limit = unacked_scan_limit
        self._connection_class = connection_class
        self._inspect_seconds = inspect_seconds
        self._client: redis.asyncio.Redis | None = None
        self._control: redis.asyncio.Redis | None = None
        """Apart from the sampling pool: a broadcast round holds a connection in BRPOP."""
        self._oid = str(uuid.uuid4())
        """Our reply queue's id (kombu's `oid`): one per source, so a late answer that
        lands after a round is dropped by the next one, not left behind in a new list."""
        self._exchanges: dict[Layout, dict[str, None]] = defaultdict(dict)
        """Exchanges seen in each layout's unacked entries, oldest first (bounded)."""
        self._rounds = asyncio.Semaphore(CONTROL_CONNECTIONS)
        """Rounds running at once: never more than the control pool's connections."""

    def __repr__(self) -> str:
        return f"RedisSource({self._broker!r})"

    def _open(self) -> redis.asyncio.Redis:
        """Made on first use, inside the running loop, then kept across ticks."""
        if self._client is None:
            # The pipeline as a whole is bounded (`sample`); a timeout per reply read
            # would cost redis-py a timer per command, half a tick's CPU at 1,000 queues.
            self._client = self._connect(socket_timeout=None, connections=4)
        return self._client

    def _open_control(self) -> redis.asyncio.Redis:
        """The broadcast rounds' client: a few commands each, so a socket timeout is cheap
        there, and it outlasts the longest BRPOP."""
        if self._control is None:
            self._control = self._connect(
                socket_timeout=self._timeout + self._inspect_seconds,
                connections=CONTROL_CONNECTIONS,
            )
        return self._control

    def _connect(self, *, socket_timeout: float | None, connections: int) -> redis.asyncio.Redis:
        broker = self._broker
        options: dict[str, Any] = {
            "host": broker.host,
            "port": broker.port,
            "db": broker.database,
            "username": broker.username,
            "password": broker.password,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": self._timeout,
            "retry": Retry(NoBackoff(), 0),  # the next tick is the retry
            # No client name: CLIENT SETNAME is one more permission an ACL user would need.
        }
        base: type[AbstractConnection] = Connection
        if broker.tls:
            base = SSLConnection
            options |= {"ssl_cert_reqs": "required", "ssl_ca_data": broker.ca_cert}
        pool = ConnectionPool(
            connection_class=self._connection_class or base, max_connections=connections,
            **options,
        )
        return redis.asyncio.Redis(connection_pool=pool)

    def _plans(
        self, queues: Collection[QueueRef]
    ) -> tuple[list[_Plan], list[tuple[QueueRef, StreamGroup]],
               dict[QueueRef, QueueSample | SourceError]]:
        """The kombu queues grouped by layout, each with the exchanges whose bindings to read;
        and the stream groups."""
        plans: dict[str, _Plan] = {}
        streams: list[tuple[QueueRef, StreamGroup]] = []
        refused: dict[QueueRef, QueueSample | SourceError] = {}
        for ref in queues:
            stream = StreamGroup.from_scope(ref.scope)
            if stream is not None:
                streams.append((ref, stream))
                continue
            plan = plans.get(ref.scope)
            if plan is None:
                try:
                    layout = Layout.from_scope(ref.scope)
                except ValueError:
                    refused[ref] = SourceError(
                        ErrorKind.BAD_CONFIG, "not a redis queue (its scope names no kombu layout)"
                    )
                    continue
                plan = plans[ref.scope] = _Plan(layout)
            plan.queues.append(ref)
        for plan in plans.values():
            names = dict.fromkeys(ref.name for ref in plan.queues)
            names.update(self._exchanges[plan.layout])
            plan.exchanges = list(names)
        return list(plans.values()), streams, refused

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Every queue in one pipeline. Raises SourceError when Redis cannot be reached,
        refuses the credentials or does not answer in time."""
        return await self._sample(queues, full=True)

    async def peek(self, queues: Collection[QueueRef]) -> SampleResult:
        """Ready counts only, in one pipeline of LLENs: what the engine's fast path reads
        twice a second for pools that may grow. Unacked is not read (reported as 0, the
        sample incomplete), so a peek never costs an HSCAN of the unacked hash."""
        return await self._sample(queues, full=False)

    async def _sample(self, queues: Collection[QueueRef], *, full: bool) -> SampleResult:
        if not queues:
            return {}
        plans, streams, result = self._plans(queues)
        if not plans and not streams:
            return result
        where = f"Redis at {self._broker.address}"
        limit = self._timeout + PER_QUEUE_SECONDS * len(queues)
        try:
            async with self._open().pipeline(transaction=False) as pipe:
                for plan in plans:
                    for ref in plan.queues:
                        for key in plan.layout.priority_keys(ref.name):
                            pipe.llen(key)
                    if full:
                        pipe.hlen(plan.layout.unacked_key)
                        pipe.hscan(plan.layout.unacked_key, 0, count=self._scan_limit)
                        for exchange in plan.exchanges:
                            pipe.smembers(plan.layout.binding_key(exchange))
                for _, stream in streams:
                    pipe.xinfo_groups(stream.stream)
                    pipe.xinfo_stream(stream.stream)
                replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), limit)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as error:
            raise failure(error, where) from None
        taken_at = time.time()
        position = 0
        for plan in plans:
            size = len(plan.queues) * KEYS_PER_QUEUE
            readies = _readies(plan, replies[position : position + size], where)
            position += size
            per_queue: Mapping[str, int] = {}
            complete = False  # a peek does not see the messages workers hold
            note: str | None = None
            if full:
                end = position + 2 + len(plan.exchanges)
                per_queue, complete, why = self._unacked(plan, replies[position:end], where)
                note = _joined([why, NO_RATES])
                position = end
            for ref, ready in readies.items():
                result[ref] = ready if isinstance(ready, SourceError) else QueueSample(
                    ready=ready,
                    unacked=per_queue.get(ref.name, 0),
                    consumers=0,  # unknown: Redis cannot say who waits on a list
                    taken_at=taken_at,
                    complete=complete,
                    note=note,
                )
        for ref, stream in streams:
            groups, info = replies[position : position + 2]
            position += 2
            state = next((_server_state(reply, where) for reply in (groups, info)
                          if isinstance(reply, BaseException)), None)
            if isinstance(groups, redis.exceptions.NoPermissionError):
                result[ref] = failure(groups, where, STREAM_ACL_NEEDS)
            elif state is not None:  # BUSY, MOVED...: not "the stream or group is missing"
                result[ref] = state
            else:  # a peek reads the same two O(1) replies; it only may not shrink a pool
                result[ref] = stream_sample(stream, groups, info, taken_at, full=full)
        return result

    def _unacked(
        self, plan: _Plan, replies: list[Any], where: str = ""
    ) -> tuple[Mapping[str, int], bool, str | None]:
        """Unacked messages per queue of one layout, whether every one was placed, and why
        not when that is something the user can act on (the Ready condition shows it)."""
        hlen, scan, *binding_sets = replies
        where = where or f"Redis at {self._broker.address}"
        notes: list[str] = []
        bindings: dict[str, tuple[Binding, ...]] = {}
        unread: list[tuple[str, BaseException]] = []
        for exchange, members in zip(plan.exchanges, binding_sets, strict=True):
            if isinstance(members, set | list):
                bindings[exchange] = parse_bindings(members, plan.layout.separator)
            elif isinstance(members, BaseException):
                unread.append((exchange, members))
        unread_note = None
        if unread:  # one note for them all: a refused SMEMBERS is refused on every exchange
            exchange, error = unread[0]
            others = f" (and {len(unread) - 1} other exchanges')" if len(unread) > 1 else ""
            unread_note = _unread_note(
                error, where, f"the bindings of exchange {exchange!r}{others}", "set")
        for reply in (hlen, scan):
            if isinstance(reply, BaseException):
                return {}, False, _unread_note(
                    reply, where, f"the unacked key {plan.layout.unacked_key!r}", "hash")
        if not isinstance(hlen, int) or not isinstance(scan, tuple | list) or len(scan) != 2:
            return {}, False, (
                f"held messages not counted: the unacked key {plan.layout.unacked_key!r} did "
                "not answer as kombu's hash")
        cursor, entries = scan
        routes = [routing_of(value) for value in dict(entries).values()]
        placed = attribute(routes, bindings)
        unread_exchanges = {exchange for exchange, _ in unread}
        if unread_note and any(route and route[0] in unread_exchanges for route in routes):
            notes.append(unread_note)  # told only when a held message needed those bindings
        scanned = int(cursor) == 0  # an open cursor may have missed entries, whatever HLEN said
        if not scanned:
            notes.append(
                f"held messages counted in part: the unacked hash ({hlen} entries) was not "
                f"read in one scan page (up to {self._scan_limit} entries)")
        if placed.over_budget:
            notes.append(
                f"held messages counted in part: {placed.over_budget} routing keys of topic "
                "exchanges were beyond this tick's matching budget")
        self._remember(plan.layout, (route[0] for route in routes if route and route[0]))
        return placed.per_queue, placed.unresolved == 0 and scanned, _joined(notes)

    def _remember(self, layout: Layout, exchanges: Any) -> None:
        """Exchanges seen, so their bindings are read from the next tick on (the newest kept)."""
        known = self._exchanges[layout]
        for exchange in exchanges:
            known.pop(exchange, None)
            known[exchange] = None
        while len(known) > REMEMBERED_EXCHANGES:
            del known[next(iter(known))]

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        """The workers of every scope in `scopes`: a kombu layout's Celery workers from one
        `inspect` broadcast round per layout (reserved, active and active_queues at once),
        bounded by `inspect_seconds`; a stream group's consumers from XINFO CONSUMERS.

        Each answering Celery worker is a client named after its pod (the host part of its
        hostname), holding its reserved plus active tasks, consuming the queues it names. A
        worker the broadcast reached that did not answer in time is a client of unknown name
        holding work (the core keeps the pods it could be).

        A scope that cannot be told (no Celery worker listens on its layout's channel, its
        stream or group is missing) is, beside scopes that can, one client of unknown name
        holding work in that scope only: its pools hold their pods, the others go on. Raises
        SourceError when Redis fails, or when no scope at all can be told.
        """
        layouts: dict[str, Layout] = {}
        streams: list[StreamGroup] = []
        for scope in sorted(set(scopes)):
            stream = StreamGroup.from_scope(scope)
            if stream is not None:
                streams.append(stream)
                continue
            try:
                layouts[scope] = Layout.from_scope(scope)
            except ValueError:
                raise _error(ErrorKind.BAD_CONFIG, "not a redis scope (no kombu layout)") from None
        found: list[BrokerClient] = []
        blind: dict[str, SourceError] = {}
        for stream, listed in await self._stream_consumers(streams) if streams else ():
            if isinstance(listed, SourceError):
                blind[stream.scope] = listed
            else:
                found += listed
        if layouts:
            where = f"Celery inspect on Redis at {self._broker.address}"
            latest = asyncio.get_running_loop().time() + (
                INSPECT_WAVES - 1) * (self._inspect_seconds + PER_ROUND_SECONDS)
            rounds = await asyncio.gather(
                *(self._inspect_in_turn(scope, layout, latest)
                  for scope, layout in layouts.items()),
                return_exceptions=True,
            )
            for (scope, layout), outcome in zip(layouts.items(), rounds, strict=True):
                if isinstance(outcome, redis.exceptions.RedisError | OSError | TimeoutError):
                    raise failure(outcome, where, CONTROL_ACL_NEEDS) from None
                if isinstance(outcome, BaseException):
                    raise outcome
                if outcome is None:
                    blind[scope] = _error(
                        ErrorKind.TIMEOUT,
                        f"{where}: layout {layout.key_prefix!r} not inspected: the listing's "
                        f"time ran out ({len(layouts)} kombu layouts on this database, "
                        f"{CONTROL_CONNECTIONS} rounds at a time): busy workers cannot be told",
                    )
                    continue
                if outcome.reached == 0:
                    channel = broadcast_channel(layout, self._broker.database)
                    blind[scope] = _error(
                        ErrorKind.BAD_RESPONSE,
                        f"{where}: no Celery worker listens for remote control on channel "
                        f"{channel!r} (workers of another database, control_exchange or "
                        "fanout_prefix, or none running): busy workers cannot be told",
                    )
                found += outcome.clients()
        if blind and len(blind) == len(layouts) + len(streams):
            raise next(iter(blind.values()))
        found += [BrokerClient(scope, None, None, consumers=1, unacked=1) for scope in blind]
        return found

    async def _stream_consumers(
        self, streams: list[StreamGroup]
    ) -> list[tuple[StreamGroup, list[BrokerClient] | SourceError]]:
        """Every stream group's consumers and their pending entries, in one pipeline; a
        missing stream or group (or one out of an ACL user's reach) fails alone."""
        where = f"Redis at {self._broker.address}"
        try:
            async with self._open().pipeline(transaction=False) as pipe:
                for stream in streams:
                    pipe.xinfo_consumers(stream.stream, stream.group)
                replies = await asyncio.wait_for(pipe.execute(raise_on_error=False), self._timeout)
        except (redis.exceptions.RedisError, OSError, TimeoutError) as error:
            raise failure(error, where, STREAM_ACL_NEEDS) from None
        listed: list[tuple[StreamGroup, list[BrokerClient] | SourceError]] = []
        for stream, reply in zip(streams, replies, strict=True):
            if isinstance(reply, redis.exceptions.NoPermissionError):
                listed.append((stream, failure(reply, where, STREAM_ACL_NEEDS)))
                continue
            try:
                listed.append((stream, consumer_clients(stream, reply)))
            except SourceError as error:
                listed.append((stream, error))
        return listed

    async def _inspect_in_turn(self, scope: str, layout: Layout, latest: float) -> Round | None:
        """One round once a control connection is free; None when none was free by `latest`
        (the loop's clock): the listing is bounded in time, whatever the number of layouts."""
        if self._rounds.locked():
            left = latest - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(self._rounds.acquire(), max(left, 0.0))
            except TimeoutError:
                return None
        else:
            await self._rounds.acquire()
        try:
            return await self._inspect(scope, layout)
        finally:
            self._rounds.release()

    async def _inspect(self, scope: str, layout: Layout) -> Round:
        """One broadcast round: route the answers to our list, publish the three commands in
        one pipeline, collect until every worker reached answered all or time is up, unroute."""
        client = self._open_control()
        route = reply_route(layout, self._oid)
        tickets = {str(uuid.uuid4()): command for command in COMMANDS}
        channel = broadcast_channel(layout, self._broker.database)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._inspect_seconds
        expires = time.time() + self._inspect_seconds
        answers = Round(scope, tickets)
        try:
            async with client.pipeline(transaction=False) as pipe:
                pipe.delete(route.reply_key)
                pipe.sadd(route.binding_key, route.member)
                pipe.sadd(route.permanent_key, route.member)
                for ticket, command in tickets.items():
                    pipe.publish(channel, request(
                        command, ticket=ticket, oid=self._oid, tag=str(uuid.uuid4()),
                        expires=expires,
                    ))
                replies = await asyncio.wait_for(pipe.execute(), self._timeout)
            answers.receivers = dict(zip(tickets.values(), replies[3:], strict=True))
            while not answers.complete:
                left = deadline - loop.time()
                if left < 0.01:
                    break
                popped = await client.brpop([route.reply_key], timeout=left)
                if popped is None:
                    break
                answers.take(parse_reply(popped[1]))
                # And whatever came meanwhile, in one command (RPOP with a count: Redis 6.2+).
                rest = await client.rpop(route.reply_key, REPLIES_PER_READ)
                for raw in rest if isinstance(rest, list) else ():
                    answers.take(parse_reply(raw))
        finally:
            # Best effort: when Redis failed the round, its own error is the one to tell.
            with contextlib.suppress(redis.exceptions.RedisError, OSError, TimeoutError):
                async with client.pipeline(transaction=False) as pipe:
                    pipe.srem(route.binding_key, route.member)
                    pipe.srem(route.permanent_key, route.member)
                    pipe.delete(route.reply_key)
                    await asyncio.wait_for(pipe.execute(raise_on_error=False), self._timeout)
        return answers

    async def close(self) -> None:
        for client in (self._client, self._control):
            if client is not None:
                await client.aclose()
                await client.connection_pool.disconnect()
        self._client = self._control = None


def _unread_note(error: BaseException, where: str, what: str, kind: str) -> str:
    """Why a sample's held messages cannot all be counted: a reply refused, or a key not of
    the type kombu keeps there (`kind`). The sample stays, incomplete: it may grow its pool,
    never shrink it."""
    refused = reply_failure(error, where)
    if refused is None:
        return f"held messages not counted: {what} is not kombu's {kind} ({error})"
    if refused.kind is ErrorKind.AUTH:
        return f"held messages not counted: reading {what} was refused: {refused.message}"
    return f"held messages not counted: reading {what} failed: {refused.message}"


def _joined(notes: Sequence[str | None]) -> str | None:
    """Notes as one line for the Ready condition, each once."""
    return "; ".join(dict.fromkeys(note for note in notes if note)) or None


def _readies(
    plan: _Plan, replies: list[Any], where: str
) -> dict[QueueRef, int | SourceError]:
    """Each queue's ready count from its LLENs, or why it has none (that queue alone fails)."""
    readies: dict[QueueRef, int | SourceError] = {}
    for index, ref in enumerate(plan.queues):
        lengths = replies[index * KEYS_PER_QUEUE : (index + 1) * KEYS_PER_QUEUE]
        wrong = next((r for r in lengths if not isinstance(r, int)), None)
        if wrong is None:
            readies[ref] = sum(lengths)
            continue
        refused = reply_failure(wrong, where)
        readies[ref] = refused if refused is not None else _error(
            ErrorKind.BAD_RESPONSE,
            f"queue {ref.name!r}: a priority list is not a list ({wrong}): "
            "not kombu's Redis layout",
        )
    return readies
