"""Kafka as a QueueSource: every QueueScaler on a cluster served by one round of batched admin
requests per tick, on one long-lived connection per broker (`cluster.py` says what a round
asks).

One `KafkaSource` per set of credentials (the Secret's); inside it one `Cluster` per set of
bootstrap servers (the Secret's, or a spec's when the Secret holds no credentials).


`clients()` (busy-worker protection, on ticks that may scale down) asks the coordinators to
describe the groups and fetch their committed offsets, and the leaders of their members'
partitions for the end offsets: a member is busy while its partitions lag (`lag.busy_members`).

A whole cluster that cannot be reached (no bootstrap server answers, at the first round or
once every broker the round asked has gone; the credentials or the TLS handshake refused; the
round out of time) raises SourceError when it is the only one sampled; a broker of it that
fails alone fails the groups and partitions it serves, and the coordinators and leaders it was
are looked up again at the next round.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Collection, Mapping, Sequence
from typing import Any, Final

from aiokafka.conn import create_conn

from queuescaler.core.sample import (
    BrokerClient,
    ErrorKind,
    QueueRef,
    SampleResult,
    SourceError,
)
from queuescaler.sources.kafka.cluster import Cluster
from queuescaler.sources.kafka.errors import failure, redacted
from queuescaler.sources.kafka.lag import Reading, busy_members, partition_lag, topic_sample
from queuescaler.sources.kafka.link import Connect
from queuescaler.sources.kafka.protocol import (
    NONE,
    Committed,
    Group,
    TopicPartition,
    error_name,
    kind_of,
)
from queuescaler.sources.kafka.secret import BOOTSTRAP_SERVERS, KafkaBroker
from queuescaler.sources.kafka.spec import GroupScope

__all__ = ["KafkaSource"]

METADATA_MAX_AGE: Final = 60.0
"""Seconds a topic's partitions and leaders are trusted without an error saying otherwise: a
partition added to a topic is seen within this time."""
CLUSTER_IDLE_SECONDS: Final = 600.0
"""A cluster no QueueScaler asked about for this long is closed (a spec moved elsewhere)."""
NO_SERVERS: Final = (
    "no bootstrap servers: set spec.source.kafka.bootstrapServers or the Secret's key "
    f"{BOOTSTRAP_SERVERS!r}"
)

SERVERS_DIFFER: Final = (
    "the spec's bootstrapServers and the Secret's differ: name them in one place (or in the "
    "spec only some of the Secret's)"
)
CREDENTIALS_WITHOUT_SERVERS: Final = (
    "the Secret holds credentials (sasl) but names no bootstrap servers: credentials are sent "
    f"only to servers their Secret names, so set its key {BOOTSTRAP_SERVERS!r} (the spec's "
    "bootstrapServers may then name some of them, or be left out); nothing was sent"
)
CREDENTIALS_ELSEWHERE: Final = (
    "the spec's bootstrapServers name servers the Secret's do not: the Secret holds "
    "credentials (sasl), which are sent only to servers it names; leave the spec's "
    "bootstrapServers out or name only servers of the Secret's; nothing was sent"
)


def _committed_error(name: str, found: Committed | SourceError) -> Committed | SourceError:
    if isinstance(found, SourceError) or found.error == NONE:
        return found
    return redacted(kind_of(found.error), f"group {name!r}: {error_name(found.error)}")


class KafkaSource:
    """Samples the consumer groups of the clusters one set of credentials reaches. Use it on
    one event loop; `close()` when done."""

    def __init__(
        self,
        broker: KafkaBroker,
        *,
        timeout: float = 5.0,
        connect: Connect | None = None,
        metadata_max_age: float = METADATA_MAX_AGE,
    ) -> None:
        """`timeout` bounds every request and each cluster's round; `connect` opens a
        connection (aiokafka's `create_conn`, or a stand-in that observes it)."""
        self._broker = broker
        self._timeout = timeout
        self._connect: Connect = connect or create_conn
        self._max_age = metadata_max_age
        self._clusters: dict[tuple[str, ...], Cluster] = {}

    def __repr__(self) -> str:
        return f"KafkaSource({self._broker!r})"

    def _servers(self, scope: GroupScope) -> tuple[str, ...] | SourceError:
        """The servers a scope's groups are read on: the Secret's when it names them (the
        spec may name some of them, nothing else), else the spec's, unless the Secret holds
        credentials: a spec's servers would be sent the Secret's password, wherever a
        QueueScaler's author points them."""
        given, secret = scope.servers, self._broker.servers
        if given is not None and secret is not None:
            if not set(given) <= set(secret):
                return SourceError(ErrorKind.BAD_CONFIG, CREDENTIALS_ELSEWHERE
                                   if self._broker.credentials else SERVERS_DIFFER)
            return secret
        if given is not None and self._broker.credentials:
            return SourceError(ErrorKind.BAD_CONFIG, CREDENTIALS_WITHOUT_SERVERS)
        servers = given or secret
        if not servers:
            return SourceError(ErrorKind.BAD_CONFIG, NO_SERVERS)
        return servers

    def _cluster(self, servers: tuple[str, ...]) -> Cluster:
        cluster = self._clusters.get(servers)
        if cluster is None:
            cluster = self._clusters[servers] = Cluster(
                servers, self._broker, timeout=self._timeout, connect=self._connect,
                metadata_max_age=self._max_age,
            )
        return cluster

    async def _prune(self) -> None:
        idle = time.monotonic() - CLUSTER_IDLE_SECONDS
        for servers, cluster in list(self._clusters.items()):
            if cluster.used_at < idle:
                del self._clusters[servers]
                await cluster.close()

    async def _bounded(self, cluster: Cluster, work: Awaitable[Any]) -> Any:
        try:
            return await asyncio.wait_for(work, self._timeout * 2)
        except SourceError:
            raise
        except Exception as error:
            raise failure(error, cluster.where) from None

    async def sample(self, queues: Collection[QueueRef]) -> SampleResult:
        """Every queue's sample, one round per cluster; raises SourceError when every
        cluster asked about failed as a whole."""
        await self._prune()
        result: dict[QueueRef, Any] = {}
        plans: dict[tuple[str, ...], list[tuple[QueueRef, GroupScope]]] = defaultdict(list)
        for ref in queues:
            scope = GroupScope.from_scope(ref.scope)
            if scope is None:
                result[ref] = SourceError(
                    ErrorKind.BAD_CONFIG, "not a kafka queue (its scope names no group)")
                continue
            servers = self._servers(scope)
            if isinstance(servers, SourceError):
                result[ref] = servers
            else:
                plans[servers].append((ref, scope))
        clusters = list(plans)

        async def one(servers: tuple[str, ...]) -> Reading:
            cluster = self._cluster(servers)
            wanted: dict[str, set[str]] = defaultdict(set)
            for ref, scope in plans[servers]:
                wanted[scope.group].add(ref.name)
            reading: Reading = await self._bounded(cluster, cluster.read(wanted))
            return reading

        readings = await asyncio.gather(*(one(s) for s in clusters), return_exceptions=True)
        failed: list[SourceError] = []
        for servers, reading in zip(clusters, readings, strict=True):
            if isinstance(reading, BaseException):
                if not isinstance(reading, Exception):
                    raise reading
                error = failure(reading, f"Kafka at {','.join(servers)}")
                failed.append(error)
                for ref, _ in plans[servers]:
                    result[ref] = error
                continue
            told = _with_group_errors(reading)
            for ref, scope in plans[servers]:
                result[ref] = topic_sample(scope, ref.name, told)
        if failed and len(failed) == len(clusters) and len(result) == sum(
                len(plans[servers]) for servers in clusters):
            raise failed[0]  # the broker as a whole: BrokerReachable turns False
        return result

    async def clients(self, scopes: Collection[str]) -> Sequence[BrokerClient]:
        """The members of every group `scopes` name, busy while their partitions lag
        (`lag.busy_members`). A scope that cannot be told, beside scopes that can, is one
        client of unknown name holding work (its pools keep their pods); raises SourceError
        when no scope can be told."""
        plans: dict[tuple[str, ...], dict[str, list[tuple[str, GroupScope]]]] = defaultdict(
            lambda: defaultdict(list))
        blind: dict[str, SourceError] = {}
        for text in sorted(set(scopes)):
            scope = GroupScope.from_scope(text)
            if scope is None:
                raise redacted(ErrorKind.BAD_CONFIG, "not a kafka scope (it names no group)")
            servers = self._servers(scope)
            if isinstance(servers, SourceError):
                blind[text] = servers
            else:
                plans[servers][scope.group].append((text, scope))
        clusters = list(plans)

        async def one(servers: tuple[str, ...]) -> Any:
            cluster = self._cluster(servers)
            return await self._bounded(cluster, cluster.members(plans[servers]))

        answers = await asyncio.gather(*(one(s) for s in clusters), return_exceptions=True)
        found: list[BrokerClient] = []
        for servers, answer in zip(clusters, answers, strict=True):
            if isinstance(answer, BaseException):
                if not isinstance(answer, Exception):
                    raise answer
                error = failure(answer, f"Kafka at {','.join(servers)}")
                for texts in plans[servers].values():
                    blind.update(dict.fromkeys((text for text, _ in texts), error))
                continue
            groups, committed, ends = answer
            cluster = self._cluster(servers)
            for group, texts in plans[servers].items():
                offsets = _committed_error(group, committed[group])
                for text, scope in texts:
                    lags = _lags(scope, offsets, groups[group], ends, cluster)
                    try:
                        found += busy_members(scope, text, groups[group], offsets, lags)
                    except SourceError as error:
                        blind[text] = error
        if blind and len(blind) == len(set(scopes)):
            raise next(iter(blind.values()))
        found += [BrokerClient(text, None, None, consumers=1, unacked=1) for text in blind]
        return found

    async def close(self) -> None:
        clusters, self._clusters = self._clusters, {}
        for cluster in clusters.values():
            await cluster.close()


def _with_group_errors(reading: Reading) -> Reading:
    """The reading with each group's committed offsets' group-level error told as such."""
    committed = {name: _committed_error(name, found) for name, found in reading.committed.items()}
    return Reading(reading.taken_at, reading.partitions, reading.ends, reading.starts,
                   committed, reading.groups)


def _lags(
    scope: GroupScope,
    committed: Committed | SourceError,
    group: Group | SourceError,
    ends: Mapping[TopicPartition, int | SourceError],
    cluster: Cluster,
) -> dict[TopicPartition, int | None]:
    """Each partition's lag for the group (None: not known), over its members' partitions
    and those it committed on."""
    if isinstance(committed, SourceError):
        return {}
    partitions = set(committed.offsets) | set(committed.errors or ())
    if isinstance(group, Group):
        for member in group.members:
            for topic, indexes in (member.assignment or {}).items():
                partitions.update((topic, index) for index in indexes)
    lags: dict[TopicPartition, int | None] = {}
    for where in partitions:
        end = ends.get(where)
        if not isinstance(end, int) or where in (committed.errors or {}):
            lags[where] = None
            continue
        lags[where] = partition_lag(end, cluster.start_offset(where),
                                    committed.offsets.get(where), scope.reset)
    return lags
