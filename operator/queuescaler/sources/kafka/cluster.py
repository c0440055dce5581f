"""One Kafka cluster as the kafka source reads it: its connections (one per broker it has to
ask, opened on first use and kept across ticks), its cached metadata and coordinators, and the
round of batched admin requests that a tick's `sample()` (or `clients()`) sends. Per cluster:

- Metadata, one request for the topics that are new, missing (asked again every tick until
  they exist), older than `metadata_max_age` or whose leader moved (auto creation off: a
  missing topic is told, never created);
- FindCoordinator, one request for the groups whose coordinator is not cached (v4; one per
  group on brokers before 3.0), again only when a coordinator moved;
- per group coordinator: one OffsetFetch for all its groups (v8, KIP-709; one per group
  before 3.0) and one DescribeGroups for all its groups;
- per partition leader: one ListOffsets for the end offsets of all its partitions and one
  for their log start offsets.

So a tick costs at most 2 x coordinators + 2 x leaders requests (4 on a one-broker cluster),
whatever the number of QueueScalers, groups and topics. A NOT_COORDINATOR (or
COORDINATOR_NOT_AVAILABLE) answer drops the cached coordinator and asks the new one once more
within the round; a NOT_LEADER_OR_FOLLOWER (or a leader election) reads the metadata again and
asks the new leader once more. `lag.py` turns the answers into samples.

A broker that accepts and never answers (a GC stall, a hung disk): a request it leaves
unanswered past the timeout closes its connection (aiokafka would keep it, and every request
in its queue), it is not asked again within the round (what it serves fails at once), a
Metadata refresh it failed leaves the cached partitions and leaders serving, and the next round
asks another broker. Every connection timed out is the cluster's timeout as a whole.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final

import aiokafka.errors as kafka_errors

from queuescaler.core.sample import ErrorKind, SourceError
from queuescaler.sources.kafka.errors import error_words, failure, redacted
from queuescaler.sources.kafka.lag import Reading
from queuescaler.sources.kafka.link import Connect, Link, api_version, ssl_context
from queuescaler.sources.kafka.protocol import (
    COORDINATOR_MOVED,
    DESCRIBE_GROUPS,
    EARLIEST,
    FIND_COORDINATOR,
    GROUP_ID_NOT_FOUND,
    LATEST,
    LEADER_MOVED,
    LIST_OFFSETS,
    METADATA,
    NONE,
    OFFSET_FETCH,
    UNKNOWN_TOPIC_OR_PARTITION,
    Committed,
    Group,
    Listed,
    Node,
    Topic,
    TopicPartition,
    describe_groups_request,
    error_name,
    find_coordinator_requests,
    kind_of,
    list_offsets_request,
    metadata_request,
    offset_fetch_requests,
    read_committed,
    read_coordinator,
    read_coordinators,
    read_groups,
    read_listed,
    read_metadata,
)
from queuescaler.sources.kafka.secret import KafkaBroker
from queuescaler.sources.kafka.servers import address

CLIENT_ID: Final = "queuescaler"
"""The client.id every request carries (brokers log it, quotas may key on it)."""


class Cluster:
    """One Kafka cluster: its connections, its topics' partitions and leaders, its groups'
    coordinators (cached), and the round that reads them."""

    def __init__(
        self, servers: tuple[str, ...], broker: KafkaBroker, *, timeout: float,
        connect: Connect, metadata_max_age: float,
    ) -> None:
        self.servers = servers
        self._broker = broker
        self._timeout = timeout
        self._connect = connect
        self._max_age = metadata_max_age
        self._ssl = ssl_context(broker)
        self._links: dict[int, Link] = {}
        self._bootstrap: Link | None = None
        self._down: dict[tuple[str, int], SourceError] = {}
        """Brokers (host, port) that failed this round: not asked again until the next."""
        self._unread: dict[str, SourceError] = {}
        """Why a topic never read has no metadata (its Metadata request failed)."""
        self._nodes: dict[int, Node] = {}
        self._topics: dict[str, Topic] = {}
        self._topics_at: dict[str, float] = {}
        self._coordinators: dict[str, int] = {}
        self._starts: dict[TopicPartition, int] = {}
        """Log start offsets of the last round: what clients() counts lag from."""
        self._connecting = asyncio.Lock()
        self.used_at = time.monotonic()

    @property
    def where(self) -> str:
        return f"Kafka at {','.join(self.servers)}"

    # --- connections ---

    async def _open(self, host: str, port: int) -> Link:
        broker = self._broker
        try:
            conn = await self._connect(
                host, port,
                client_id=CLIENT_ID,
                request_timeout_ms=int(self._timeout * 1000),
                ssl_context=self._ssl,
                security_protocol=broker.security_protocol,
                sasl_mechanism=broker.mechanism,
                sasl_plain_username=broker.username,
                sasl_plain_password=broker.password,
            )
        except (ConnectionResetError, ConnectionAbortedError, EOFError) as error:
            if self._ssl is None:
                raise
            # A listener without TLS resets the connection in the middle of the handshake:
            # fixed in the Secret (tls), like a CA that does not verify.
            raise redacted(
                ErrorKind.TLS_FAILED,
                f"Kafka at {host}:{port}: TLS failed: the broker closed the connection during "
                f"the handshake ({error_words(error)}): is this listener TLS?",
            ) from None
        return Link(conn, host, port)

    async def _any(self) -> Link:
        """A connection to some broker of the cluster: one already open that has not failed
        this round, else the first bootstrap server that answers (one that failed this round
        is not tried again). Raises SourceError when none does."""
        async with self._connecting:
            for link in (*self._links.values(), self._bootstrap):
                if link is not None and link.alive() and (link.host, link.port) not in self._down:
                    return link
            first: SourceError | None = None
            for server in self.servers:
                host, port = address(server)
                found = self._down.get((host, port))
                if found is not None:  # told as the cluster's, in the words of the broker's
                    said = found.message.partition(": ")[2] or found.message
                    found = SourceError(found.kind, f"Kafka at {server}: {said}")
                else:
                    try:
                        self._bootstrap = await self._open(host, port)
                        return self._bootstrap
                    except Exception as error:  # the next server may answer
                        found = failure(error, f"Kafka at {server}")
                        if found.kind in (ErrorKind.AUTH, ErrorKind.TLS_FAILED):
                            raise found from None  # the same credentials fail on every broker
                        self._down[host, port] = found
                first = first or found
            assert first is not None
            raise first

    async def _link(self, node_id: int) -> Link:
        """The connection to one broker, opened on first use."""
        link = self._links.get(node_id)
        if link is not None and link.alive():
            return link
        node = self._nodes.get(node_id)
        if node is None:
            raise redacted(ErrorKind.BAD_RESPONSE, f"{self.where}: broker {node_id} is not known")
        down = self._down.get((node.host, node.port))
        if down is not None:
            raise down  # failed this round: its other requests fail with it, at once
        async with self._connecting:
            link = self._links.get(node_id)
            if link is not None and link.alive():
                return link
            down = self._down.get((node.host, node.port))
            if down is not None:
                # failed while this request waited for the lock (review r2: a coordinator's
                # and a leader's request both queued on a hung broker connected twice, two
                # timeouts, and the round's bound failed the whole cluster every tick)
                raise down
            boot = self._bootstrap
            if boot is not None and boot.alive() and (boot.host, boot.port) == (node.host,
                                                                                  node.port):
                self._bootstrap, link = None, boot  # the bootstrap connection was this broker
            else:
                try:
                    link = await self._open(node.host, node.port)
                except Exception as error:
                    self._forget(node_id)
                    found = failure(error, f"Kafka broker {node_id} at {node.host}:{node.port}")
                    self._down[node.host, node.port] = found
                    raise found from None
            self._links[node_id] = link
            return link

    def _forget(self, node_id: int) -> None:
        """A broker that could not be reached: the groups it coordinated and the topics it
        led partitions of are looked up again at the next round (if it is gone for good, they
        have moved; cached, they would be asked of it until the metadata aged, and the groups
        forever)."""
        self._coordinators = {g: n for g, n in self._coordinators.items() if n != node_id}
        for name, topic in self._topics.items():
            if node_id in topic.leaders.values():
                self._topics_at.pop(name, None)

    def _drop(self, link: Link, error: SourceError) -> None:
        """A connection that left a request unanswered: closed (aiokafka fails what waits on
        it and forgets it, so nothing piles up in its queue), not used again this round, and
        the broker's coordinators and leaderships looked up again, as Kafka's own client
        disconnects a node on a request timeout. The next round connects afresh."""
        if link.failed is None:
            link.failed = error
        link.close()
        self._down.setdefault((link.host, link.port), error)
        if self._bootstrap is link:
            self._bootstrap = None
        for node_id, held in list(self._links.items()):
            if held is link:
                del self._links[node_id]
        for node_id, node in self._nodes.items():
            if (node.host, node.port) == (link.host, link.port):
                self._forget(node_id)

    async def _send(self, link: Link, request: Any) -> Any:
        """One request's answer. Not answered within the timeout (aiokafka leaves the
        connection open and the request in its queue), or abandoned by the round's bound: the
        connection is dropped."""
        if link.failed is not None:
            raise link.failed
        try:
            return await link.send(request)
        except (TimeoutError, kafka_errors.KafkaTimeoutError):
            late = redacted(
                ErrorKind.TIMEOUT, f"Kafka at {link.host}:{link.port}: no answer in time")
            self._drop(link, late)
            raise (link.failed or late) from None
        except asyncio.CancelledError:
            self._drop(link, redacted(
                ErrorKind.TIMEOUT, f"Kafka at {link.host}:{link.port}: no answer in time"))
            raise
        except Exception:
            if link.failed is not None:  # closed because another request timed out
                raise link.failed from None
            raise

    async def _still_reachable(self) -> None:
        """After a round: when no connection to the cluster is alive any more (every broker it
        asked could not be reached), the bootstrap servers are tried, and none answering is the
        cluster gone as a whole (raises SourceError), not each group's and partition's failure.
        A broker down beside others that answer fails only what it serves; every connection
        dropped for not answering in time is the cluster's timeout."""
        if any(link.alive() for link in (*self._links.values(), self._bootstrap)
               if link is not None):
            return
        await self._any()

    def _new_round(self) -> None:
        self.used_at = time.monotonic()
        self._down.clear()

    def _settle_bootstrap(self) -> None:
        """Once a broker's own connection is open, the bootstrap one (to a name that may be a
        load balancer's) is not kept beside it."""
        if self._bootstrap is not None and self._links:
            self._bootstrap.close()
            self._bootstrap = None

    async def close(self) -> None:
        for link in (*self._links.values(), self._bootstrap):
            if link is not None:
                link.close()
        self._links.clear()
        self._bootstrap = None

    # --- metadata and coordinators (cached) ---

    async def _metadata(self, topics: Collection[str], *, force: Collection[str] = ()) -> None:
        """Partitions and leaders of `topics`: asked (in one request) for those not known,
        known with an error, older than the max age, or in `force`."""
        now = time.monotonic()
        stale = {
            topic for topic in topics
            if topic in force or topic not in self._topics or self._topics[topic].error
            or now - self._topics_at.get(topic, -1e18) > self._max_age
        }
        if not stale:
            return
        link = await self._any()  # none: the cluster cannot be reached (raises)
        try:
            version = api_version(link, METADATA, (4, 5), "Metadata")
            answer = read_metadata(await self._send(link, metadata_request(stale, version)))
        except Exception as error:
            # What is cached still serves (a broker that hangs must not fail every group
            # through the refresh), asked again next round, of another broker if this one hung;
            # with nothing cached, nothing can be read.
            problem = failure(error, f"Kafka at {link.host}:{link.port}")
            if not any(name in self._topics for name in topics):
                raise problem from None
            self._unread.update((name, problem) for name in stale if name not in self._topics)
            return
        self._nodes.update(answer.nodes)
        for name in stale:
            self._topics[name] = answer.topics.get(
                name, Topic(name, {}, UNKNOWN_TOPIC_OR_PARTITION))
            self._topics_at[name] = now
            self._unread.pop(name, None)

    async def _find(self, groups: Collection[str]) -> dict[str, int | SourceError]:
        """Each group's coordinator: cached, else asked (one request for all, on v4)."""
        found: dict[str, int | SourceError] = {
            group: self._coordinators[group] for group in groups if group in self._coordinators
        }
        unknown = sorted(set(groups) - set(found))
        if not unknown:
            return found
        try:
            link = await self._any()
            version = api_version(link, FIND_COORDINATOR, (1, 4), "FindCoordinator")
            requests = find_coordinator_requests(unknown, version)
            answers = await asyncio.gather(*(self._send(link, r) for r in requests))
            if version >= 4:
                coordinators = [c for answer in answers for c in read_coordinators(answer)]
            else:
                coordinators = [read_coordinator(g, a) for g, a in zip(unknown, answers,
                                                                       strict=True)]
        except Exception as error:
            problem = failure(error, self.where)
            return found | dict.fromkeys(unknown, problem)
        for coordinator in coordinators:
            if coordinator.node is not None and coordinator.group in unknown:
                self._nodes[coordinator.node.node_id] = coordinator.node
                self._coordinators[coordinator.group] = coordinator.node.node_id
                found[coordinator.group] = coordinator.node.node_id
            elif coordinator.group in unknown:
                found[coordinator.group] = redacted(
                    kind_of(coordinator.error),
                    f"group {coordinator.group!r} has no coordinator now: "
                    f"{error_name(coordinator.error)}",
                )
        for group in unknown:
            found.setdefault(group, redacted(
                ErrorKind.BAD_RESPONSE, f"group {group!r}: FindCoordinator did not answer it"))
        return found

    # --- the coordinators' part of a round ---

    async def _ask_coordinator(
        self, node_id: int, groups: Mapping[str, list[TopicPartition] | None], describe: bool,
    ) -> tuple[dict[str, Committed | SourceError], dict[str, Group | SourceError]]:
        """One coordinator's OffsetFetch (and DescribeGroups) for all its groups, at once."""
        names = sorted(groups)
        try:
            link = await self._link(node_id)
            fetch_version = api_version(link, OFFSET_FETCH, (3, 8), "OffsetFetch")
            describe_version = api_version(link, DESCRIBE_GROUPS, (1, 4), "DescribeGroups")
        except SourceError as error:
            return dict.fromkeys(names, error), dict.fromkeys(names if describe else (), error)
        fetches = offset_fetch_requests(groups, fetch_version)
        asked = [names] if fetch_version >= 8 else [[name] for name in names]
        sends = [self._send(link, r) for r in fetches]
        if describe:
            sends.append(self._send(link, describe_groups_request(names, describe_version)))
        answers = await asyncio.gather(*sends, return_exceptions=True)
        committed: dict[str, Committed | SourceError] = {}
        described: dict[str, Group | SourceError] = {}
        where = f"Kafka broker {node_id} at {link.host}:{link.port}"
        for group_names, answer in zip(asked, answers[:len(fetches)], strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                for one in read_committed(answer, group_names):
                    committed[one.group] = one
            except Exception as error:
                committed.update(dict.fromkeys(group_names, failure(error, where)))
        if describe:
            answer = answers[-1]
            try:
                if isinstance(answer, BaseException):
                    raise answer
                for group in read_groups(answer):
                    described[group.group] = group
            except Exception as error:
                described.update(dict.fromkeys(names, failure(error, where)))
        for name in names:
            committed.setdefault(name, redacted(ErrorKind.BAD_RESPONSE,
                                              f"group {name!r} was not in the answer"))
            if describe:
                described.setdefault(name, redacted(ErrorKind.BAD_RESPONSE,
                                                  f"group {name!r} was not described"))
        return committed, described

    async def _coordinators_round(
        self, groups: Mapping[str, list[TopicPartition] | None], describe: bool,
    ) -> tuple[dict[str, Committed | SourceError], dict[str, Group | SourceError]]:
        """Every group's committed offsets (and description), one request of each kind per
        coordinator; a group whose coordinator moved is asked of the new one once more."""
        committed: dict[str, Committed | SourceError] = {}
        described: dict[str, Group | SourceError] = {}
        pending = dict(groups)
        for attempt in range(2):
            where = await self._find(pending)
            by_node: dict[int, dict[str, list[TopicPartition] | None]] = defaultdict(dict)
            for group, node in where.items():
                if isinstance(node, SourceError):
                    committed[group] = node
                    if describe:
                        described[group] = node
                else:
                    by_node[node][group] = pending[group]
            rounds = await asyncio.gather(*(
                self._ask_coordinator(node, asked, describe) for node, asked in by_node.items()))
            for fetched, told in rounds:
                committed.update(fetched)
                described.update(told)
            moved = {
                group for group in pending
                if _moved(committed.get(group)) or (describe and _moved(described.get(group)))
            }
            for group in moved:
                self._coordinators.pop(group, None)
            if not moved or attempt:
                break
            pending = {group: groups[group] for group in moved}
        return committed, described

    # --- the leaders' part of a round ---

    async def _ask_leader(
        self, node_id: int, partitions: list[TopicPartition], timestamps: Sequence[int],
    ) -> dict[int, dict[TopicPartition, Listed | SourceError]]:
        """One leader's ListOffsets, one request per timestamp, each for all its partitions."""
        try:
            link = await self._link(node_id)
            version = api_version(link, LIST_OFFSETS, (1, 2, 3), "ListOffsets")
        except SourceError as error:
            return {stamp: dict.fromkeys(partitions, error) for stamp in timestamps}
        answers = await asyncio.gather(
            *(self._send(link, list_offsets_request(partitions, stamp, version))
              for stamp in timestamps),
            return_exceptions=True,
        )
        where = f"Kafka broker {node_id} at {link.host}:{link.port}"
        found: dict[int, dict[TopicPartition, Listed | SourceError]] = {}
        for stamp, answer in zip(timestamps, answers, strict=True):
            try:
                if isinstance(answer, BaseException):
                    raise answer
                listed: dict[TopicPartition, Listed | SourceError] = dict(read_listed(answer))
            except Exception as error:
                listed = dict.fromkeys(partitions, failure(error, where))
            found[stamp] = listed
        return found

    async def _leaders_round(
        self, partitions: Collection[TopicPartition], timestamps: Sequence[int],
    ) -> dict[int, dict[TopicPartition, int | SourceError]]:
        """Each partition's offsets at each timestamp, one request per leader and timestamp;
        a partition whose leader moved is asked of the new one once more."""
        results: dict[int, dict[TopicPartition, Listed | SourceError]] = {
            stamp: {} for stamp in timestamps}
        pending = set(partitions)
        for attempt in range(2):
            by_leader: dict[int, list[TopicPartition]] = defaultdict(list)
            for where in sorted(pending):
                topic = self._topics.get(where[0])
                leader = topic.leaders.get(where[1], -1) if topic is not None else -1
                if leader < 0:
                    for stamp in timestamps:
                        results[stamp][where] = Listed(None, 5)  # LEADER_NOT_AVAILABLE
                else:
                    by_leader[leader].append(where)
            rounds = await asyncio.gather(*(
                self._ask_leader(node, asked, timestamps) for node, asked in by_leader.items()))
            for per_stamp in rounds:
                for stamp, listed in per_stamp.items():
                    results[stamp].update(listed)
            moved = {
                where for per_stamp in results.values() for where, listed in per_stamp.items()
                if where in pending and isinstance(listed, Listed) and listed.error in LEADER_MOVED
            }
            if not moved or attempt:
                break
            await self._metadata({topic for topic, _ in moved}, force={t for t, _ in moved})
            pending = moved
        return {stamp: {where: _offset(where, listed) for where, listed in found.items()}
                for stamp, found in results.items()}

    # --- rounds ---

    def _partitions(self, topics: Iterable[str]) -> dict[str, list[int] | SourceError]:
        found: dict[str, list[int] | SourceError] = {}
        for name in topics:
            topic = self._topics.get(name)
            if topic is None:
                found[name] = self._unread.get(name) or redacted(
                    ErrorKind.BAD_RESPONSE, f"topic {name!r}: no metadata")
            elif topic.error == UNKNOWN_TOPIC_OR_PARTITION:
                found[name] = redacted(ErrorKind.QUEUE_NOT_FOUND, f"topic {name!r} does not exist")
            elif topic.error:
                found[name] = redacted(kind_of(topic.error),
                                     f"topic {name!r}: {error_name(topic.error)}")
            else:
                found[name] = sorted(topic.leaders)
        return found

    async def read(self, wanted: Mapping[str, Collection[str]]) -> Reading:
        """One round: every group's committed offsets and description, every partition's end
        and start offsets of the topics asked about (`wanted`: group -> topics)."""
        self._new_round()
        topics = {topic for names in wanted.values() for topic in names}
        await self._metadata(topics)
        partitions = self._partitions(topics)
        asked = {
            group: [(topic, index) for topic in sorted(names)
                    for index in _listed(partitions.get(topic))]
            for group, names in wanted.items()
        }
        every = {where for found in asked.values() for where in found}
        (committed, described), offsets = await asyncio.gather(
            self._coordinators_round(dict(asked), describe=True),
            self._leaders_round(every, (LATEST, EARLIEST)),
        )
        await self._still_reachable()
        starts = offsets[EARLIEST]
        self._starts.update({where: value for where, value in starts.items()
                             if isinstance(value, int)})
        self._settle_bootstrap()
        return Reading(
            taken_at=time.time(),
            partitions=dict(partitions),
            ends=offsets[LATEST],
            starts=starts,
            committed=committed,
            groups={group: _group(group, found) for group, found in described.items()},
        )

    async def members(
        self, groups: Collection[str]
    ) -> tuple[dict[str, Group | SourceError], dict[str, Committed | SourceError],
               dict[TopicPartition, int | SourceError]]:
        """The groups' members, committed offsets (on every partition they committed on) and
        the end offsets of their members' and commits' partitions."""
        self._new_round()
        committed, described = await self._coordinators_round(
            dict.fromkeys(groups, None), describe=True)
        topics: set[str] = set()
        for found in described.values():
            if isinstance(found, Group):
                for member in found.members:
                    topics.update(member.assignment or ())
        for offsets in committed.values():
            if isinstance(offsets, Committed):
                topics.update(topic for topic, _ in offsets.offsets)
        ends: dict[TopicPartition, int | SourceError] = {}
        if topics:
            await self._metadata(topics)
            every = {(topic, index) for topic, indexes in self._partitions(topics).items()
                     for index in _listed(indexes)}
            ends = (await self._leaders_round(every, (LATEST,)))[LATEST]
        await self._still_reachable()
        self._settle_bootstrap()
        return ({group: _group(group, found) for group, found in described.items()},
                committed, ends)

    def start_offset(self, where: TopicPartition) -> int:
        """The log start offset of the last round (0 when never read: lag counted high)."""
        return self._starts.get(where, 0)


def _moved(answer: Committed | Group | SourceError | None) -> bool:
    return isinstance(answer, Committed | Group) and answer.error in COORDINATOR_MOVED


def _listed(partitions: Sequence[int] | SourceError | None) -> Sequence[int]:
    return partitions if isinstance(partitions, list) else ()


def _offset(where: TopicPartition, listed: Listed | SourceError) -> int | SourceError:
    if isinstance(listed, SourceError):
        return listed
    if listed.error != NONE or listed.offset is None:
        code = listed.error
        return redacted(kind_of(code) if code else ErrorKind.BAD_RESPONSE,
                      f"partition {where[1]} of topic {where[0]!r}: "
                      f"{error_name(code) if code else 'no offset'}")
    return listed.offset


def _group(name: str, found: Group | SourceError) -> Group | SourceError:
    """A group-level error as a SourceError, except GROUP_ID_NOT_FOUND (a group with no
    members, as old brokers call it Dead), which lag.py reads."""
    if isinstance(found, SourceError) or found.error in (NONE, GROUP_ID_NOT_FOUND):
        return found
    return redacted(kind_of(found.error), f"group {name!r}: {error_name(found.error)}")
