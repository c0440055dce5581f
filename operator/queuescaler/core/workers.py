"""Which of a target's pods are busy, and how to mark them so a scale-down spares them. Pure.

The broker knows which connections hold unacknowledged messages; Kubernetes knows the
target's pods. A connection belongs to a pod when the name its client gave it is the
pod's name (workers set it from the downward API), or else when it comes from the pod's
IP. A connection that matches no pod is the QueueScaler's business only if it consumes
one of its queues (or the broker could not say what it consumes: `serves`): another pool's
busy connection in the same vhost is not. From that, `match_workers` counts matched and busy
pods, and `deletion_marks` says which pods need a new
`controller.kubernetes.io/pod-deletion-cost`, which the ReplicaSet controller reads to
choose the pods it removes: known idle pods first, then pods it could not match (or could
not tell from a busy connection on no pod), busy pods last and the busiest of them after
the others.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

from queuescaler.core.sample import BrokerClient, QueueRef
from queuescaler.core.status import Condition

DELETION_COST: Final = "controller.kubernetes.io/pod-deletion-cost"
"""Read by the ReplicaSet controller: on a scale-down, lower costs go first."""
MARKED_BY: Final = "queuescaler.io/marked-by"
"""Our own annotation: the QueueScaler that set the cost, so its marks can be cleared."""
IDLE_COST: Final = -1
"""A pod matched to its consumers and holding nothing."""
UNKNOWN_COST: Final = 0
"""A pod no connection matched, or a doubtful one (`WorkerReport.doubtful`): the cost every
unannotated pod has, after the idle ones."""
MAX_COST: Final = 2**31 - 1
"""The annotation is an int32."""
CONDITION: Final = "WorkersMatched"

Marks = dict[str, dict[str, str | None]]
"""Pod name -> the annotations to merge-patch (None removes one)."""


@dataclass(frozen=True, slots=True)
class Pod:
    """One pod of the target, as far as matching and marking need."""

    name: str
    ip: str | None = None
    deleting: bool = False
    """It has a deletionTimestamp: already on its way out, neither counted nor marked."""
    deletion_cost: str | None = None
    """Its pod-deletion-cost annotation as found."""
    marked_by: str | None = None
    """Its queuescaler.io/marked-by annotation as found."""
    other_ips: tuple[str, ...] = ()
    """Its further addresses (`status.podIPs` after the first: a dual-stack pod's other
    family): a connection may come from any of them."""
    node_ip: str | None = None
    """Its node's address (`status.hostIP`), where a per-node SNAT shows its connections."""
    owner: str | None = None
    """The controller that owns it, as `kind/name` (its controlling ownerReference: a
    Deployment's ReplicaSet, `ReplicaSet/worker-5d4f8`), None for a pod no controller owns."""
    scheduled: bool = True
    """It has a node (`spec.nodeName`)."""
    phase: str | None = "Running"
    ready: bool = True
    """Its Ready condition is True."""

    @property
    def addresses(self) -> frozenset[str]:
        return frozenset(ip for ip in (self.ip, *self.other_ips) if ip)


@dataclass(frozen=True, slots=True)
class WorkerReport:
    """The target's pods as seen by the broker."""

    pods: int
    """Pods of the target, not being deleted."""
    consuming: int
    """Consuming (or message-holding) connections of its pods or its queues."""
    held: Mapping[str, int] = field(default_factory=dict)
    """Matched pod -> unacknowledged messages on its connections."""
    by_name: int = 0
    """Connections matched by their client-provided name."""
    by_address: int = 0
    """Connections matched by their peer address."""
    unattributed: int = 0
    """Connections holding messages that matched no pod: each is some pod, busy."""
    doubtful: frozenset[str] = frozenset()
    """Matched pods holding nothing that may still own one of the `unattributed`: one came
    from an address theirs came from (their IP not listed, or NAT), an address is unknown,
    or they were seen at an address neither their own nor their node's, so from anywhere
    (`match_workers`)."""
    stray: int = 0
    """Of the `unattributed`, those from an address no doubtful pod was seen at (none when a
    doubtful pod may show connections anywhere): only an unmatched pod can be theirs."""

    @property
    def matched(self) -> int:
        return len(self.held)

    @property
    def busy(self) -> int:
        return sum(1 for count in self.held.values() if count > 0)

    @property
    def unmatched(self) -> int:
        """Pods no connection matched."""
        return max(0, self.pods - self.matched)

    @property
    def unsure(self) -> int:
        """Pods a busy connection that matched no pod may be on: the unmatched and the
        doubtful."""
        return self.unmatched + len(self.doubtful)

    @property
    def placed(self) -> bool:
        """Whether every busy connection that matched no pod can be a pod we are unsure of:
        more of them than such pods (or, from addresses no doubtful pod was seen at, than
        the unmatched pods) means a pod we call idle holds work we cannot see."""
        return self.unattributed <= self.unsure and self.stray <= self.unmatched

    @property
    def protected(self) -> int:
        """Pods a scale-down must keep: the busy ones and, while any busy connection could
        not be placed on a pod, every pod it could be on (protection fails closed)."""
        return self.busy + (self.unsure if self.unattributed else 0)


def serves(
    client: BrokerClient,
    queues: Collection[QueueRef],
    others: Collection[QueueRef] = frozenset(),
) -> bool:
    """Whether `client` may be a worker of the pool that reads `queues`.

    It is unless it is positively another pool's: it consumes none of `queues`, and every
    queue it consumes is one of `others` (the queues other QueueScalers on the broker
    read). What it consumes unknown (the consumer listing failed, or one of its channels is
    missing from it), or any queue no QueueScaler reads (a retry or dead-letter queue our
    own workers also consume), and it counts: protection fails closed. A client consuming
    queues of several pools serves each of them.
    """
    if client.scope not in {ref.scope for ref in queues}:
        return False
    if client.queues is None or not client.queues.isdisjoint(queues):
        return True
    return not client.queues or not client.queues <= frozenset(others)


def match_workers(
    pods: Iterable[Pod],
    clients: Iterable[BrokerClient],
    queues: Collection[QueueRef],
    others: Collection[QueueRef] = frozenset(),
) -> WorkerReport:
    """Match the consuming connections in the vhosts of `queues` to `pods`: by name, then
    by IP.

    A connection that matches a pod counts whatever it consumes: the pod holds what it
    holds. One that matches no pod counts unless it is positively another pool's (`serves`):
    another pool's busy connection in the same vhost is then neither busy nor unplaced for
    this one. An IP that several live pods share (host networking) matches none of them: it
    cannot say which pod a connection comes from. One that a live pod shares only with pods
    on their way out is the live pod's when busy (it keeps that pod), and nobody's when idle
    (review 47: an idle connection of the leaving pod marked a busy pod idle; review 48:
    matched to nobody, a busy one was placed on another pod, and the busy pod marked idle).

    A connection of a pod being deleted counts nowhere: the pod already left the replicas,
    so no scale-down can stop it again, and its tasks finish in its grace period. Counted
    as on no pod, it held the whole pool for that long after every scale-down. Only where
    its name and its address both say so, and no other pod has that address: a name may be
    wrong (one hard-coded for every worker; reviews 44 and 47), and an address a leaving
    pod shows may be a live pod's already, one listed without its IP yet, or a node's that
    SNAT gives every pod on it (review 46: a busy pod marked idle and removed).

    A pod may have connections its worker names and others a library leaves unnamed. A
    matched pod holding nothing is `doubtful`, kept and never marked idle, while a busy
    connection matched no pod and may be its own: from an address one of its own came
    from, from an unknown address, or from anywhere if the pod was seen at an address
    that is neither its own nor its node's (its IP not listed yet, a gateway: review 51).
    Under per-node SNAT, a pod seen at another node's address is not in doubt. Where a
    named connection comes from an address not its pod's own, a connection named after a
    leaving pod from there is not taken for that pod's alone. A name that is one live
    pod's on a connection from other live pods' own address (review 50: one name
    hard-coded for every worker, or a listing that still shows an old address) is
    believed for neither: busy, it keeps both (each counted as matched, one by its name,
    one by its address); idle, it says nothing.
    """
    queues = frozenset(queues)
    scopes = {ref.scope for ref in queues}
    pods = list(pods)
    clients = [c for c in clients
               if c.scope in scopes and (c.consumers > 0 or c.unacked > 0)]
    live = [pod for pod in pods if not pod.deleting]
    leaving = {pod.name: pod.addresses for pod in pods if pod.deleting}
    own = {pod.name: pod.addresses for pod in live}
    listed: dict[str, set[str]] = {}  # address -> the live pods that list it
    for each in live:
        for address in each.addresses:
            listed.setdefault(address, set()).add(each.name)

    def disputed(client: BrokerClient) -> bool:
        """Whether the connection's name is a live pod's and its address other live pods'
        own: a name hard-coded for every worker (review 50), or a listing that still shows
        a pod's old address. Either may be the truth."""
        name, address = client.client_name, client.peer_host or ""
        return name in own and name not in listed.get(address, {name})

    shared = Counter(address for pod in pods for address in pod.addresses)
    claims = {
        (client.peer_host, client.client_name) for client in clients
        if client.client_name in own and not disputed(client) and client.peer_host
        and client.peer_host not in own[client.client_name]
    }
    for address, _ in claims:  # a named connection's address that is not its pod's own
        shared[address] += 1  # so not taken for a leaving pod's alone
    by_ip = {address: next(iter(names)) for address, names in listed.items() if len(names) == 1}
    held: dict[str, int] = {}
    seen_at: dict[str, set[str]] = {}
    unplaced: list[str] = []  # the addresses of busy connections on no pod
    named = addressed = consuming = 0
    for client in clients:
        address = client.peer_host or ""
        if disputed(client):
            if client.unacked <= 0:
                continue  # idle: it says nothing of either pod
            # busy: both pods keep it, or the name's and whichever shares the address
            mentioned = [client.client_name or "", by_ip.get(address)]
            for owner in filter(None, mentioned):
                held[owner] = held.get(owner, 0) + client.unacked
                seen_at.setdefault(owner, set()).add(address)
            if mentioned[1] is None:
                unplaced.append(address)
            named += 1
            addressed += mentioned[1] is not None
            consuming += 1
            continue
        named_pod = client.client_name if client.client_name in own else None
        leaving_at = frozenset() if named_pod else leaving.get(client.client_name or "")
        if leaving_at and address in leaving_at and shared[address] == 1:
            continue  # a pod on its way out, by its name and its address
        addressed_pod = None if named_pod else by_ip.get(address)
        if addressed_pod and shared[address] > 1 and client.unacked <= 0:
            continue  # idle, and maybe the leaving pod's: it says nothing of the live one
        pod = named_pod or addressed_pod
        if pod is not None:
            named += named_pod is not None
            addressed += addressed_pod is not None
            held[pod] = held.get(pod, 0) + max(client.unacked, 0)
            seen_at.setdefault(pod, set()).add(address)
        elif not serves(client, queues, others):
            continue
        elif client.unacked > 0:
            unplaced.append(address)
        consuming += 1
    # a pod seen only at its own addresses or its node's shows every connection there; one
    # seen elsewhere (a gateway with several addresses, an IP not listed) may show the next
    # one anywhere (review 51: a busy pod's second connection left by another gateway IP)
    home = {pod.name: pod.addresses | {pod.node_ip or ""} - {""} for pod in live}
    roaming = {pod for pod in held if not seen_at[pod] <= home[pod]}
    doubtful = frozenset(
        pod for pod, count in held.items()
        if unplaced and count <= 0
        and (pod in roaming or "" in unplaced or seen_at[pod] & set(unplaced))
    )
    doubted_at = set().union(*(seen_at[pod] for pod in doubtful))
    stray = 0 if doubtful & roaming else sum(
        1 for at in unplaced if at and at not in doubted_at)  # unknown: any pod's
    return WorkerReport(
        len(live), consuming, held, named, addressed, len(unplaced), doubtful, stray)


def ordinal(pod: str) -> int | None:
    """A StatefulSet pod's ordinal (`name-3` -> 3), None for any other name."""
    _, dash, number = pod.rpartition("-")
    return int(number) if dash and number.isdigit() else None


def ordinal_floor(report: WorkerReport) -> int | None:
    """The replicas a StatefulSet must keep so that no busy pod is removed: it removes the
    highest ordinals first and ignores deletion costs. None when a busy worker could not be
    placed (then nothing is safe to remove)."""
    if report.unattributed:
        return None
    busy = [ordinal(pod) for pod, held in report.held.items() if held > 0]
    if any(number is None for number in busy):
        return None
    return max((number + 1 for number in busy if number is not None), default=0)


_PHASE_ORDER: Final = {"Pending": 0, "Unknown": 1, "Running": 2}
"""The ReplicaSet controller removes Pending pods first, then Unknown, then Running."""


def removal_rank(pod: Pod, cost: int) -> tuple[int, int, int, int]:
    """Where the ReplicaSet controller puts a pod when it picks the ones to remove, lowest
    first: not scheduled, then by phase, not ready, and only then by deletion cost. What it
    looks at after the cost (pods doubled up on a node, time ready, restarts, age) is not
    known here: pods equal this far may go in either order."""
    return (int(pod.scheduled), _PHASE_ORDER.get(pod.phase or "", 0), int(pod.ready), cost)


@dataclass(frozen=True, slots=True)
class RemovalFloor:
    """The fewest replicas that spare every pod that must stay, and the pod that sets it."""

    replicas: int
    pod: Pod
    before: int
    """The pods its controller removes before it, whatever the order of equals."""
    controllers: int
    """The controllers of the pods the scale may remove: more than one mid-rollout."""


def removal_floor(
    pods: Iterable[Pod],
    report: WorkerReport,
    current: int,
    unmatched_stay: bool,
    removable: Callable[[Pod], bool] = lambda pod: True,
) -> RemovalFloor | None:
    """The fewest replicas a scale-down may leave so that no pod that must stay is removed,
    whatever the controllers choose; None when no pod must stay. Must stay: busy pods,
    doubtful ones and, with `unmatched_stay`, those no connection matched that are on a
    node (a pod on none runs nothing yet). Only pods the target's scale-down can remove
    (`removable`: owned by one of its ReplicaSets) count; a pod of no controller, or of
    another workload matching the selector, stays anyway.

    A ReplicaSet removes its pods in `removal_rank` order, so a busy pod that is not ready
    (a readiness probe that times out while it works, a node gone NotReady) goes before
    idle ready pods, whatever its cost. Mid-rollout a Deployment's pods belong to several
    ReplicaSets; each ranks only its own, and the Deployment shares the removal among them
    by their sizes: any one may lose all of it. The removal is taken as the live pods
    beyond the replicas left, the surge pods too (a percentage surge shrinks with the
    count). So a scale-down removes no more than each such pod's controller ranks strictly
    before it.
    """
    live = [pod for pod in pods if not pod.deleting and removable(pod)]
    # (with no pod matched no marks are set, but then only unmatched pods can stay, all)
    ranks = {pod.name: removal_rank(pod, deletion_cost(report, pod.name)) for pod in live}
    by_owner: dict[str | None, list[tuple[int, int, int, int]]] = {}
    for pod in live:
        by_owner.setdefault(pod.owner, []).append(ranks[pod.name])
    for group in by_owner.values():
        group.sort()
    most = max(current, len(live))
    floor: RemovalFloor | None = None
    for pod in live:
        held = report.held.get(pod.name)
        # review 54: a pod on no node runs nothing; review 55: a Pending one may (a
        # sidecar still pulling its image keeps the pod Pending while the worker consumes)
        stays = ((held or 0) > 0 or pod.name in report.doubtful
                 or (held is None and unmatched_stay and pod.scheduled))
        if not stays:
            continue
        before = bisect.bisect_left(by_owner[pod.owner], ranks[pod.name])
        if floor is None or most - before > floor.replicas:
            floor = RemovalFloor(most - before, pod, before, len(by_owner))
    return floor


def deletion_cost(report: WorkerReport, pod: str) -> int:
    """The cost a pod should carry: what it holds if busy, else idle or unknown."""
    held = report.held.get(pod)
    if held is None or pod in report.doubtful:
        return UNKNOWN_COST
    return min(held, MAX_COST) if held > 0 else IDLE_COST


def deletion_marks(pods: Iterable[Pod], report: WorkerReport, owner: str) -> Marks:
    """The pods whose marks must change before a scale-down, and their new annotations.

    Nothing when no pod matched: marks would all be equal, and say nothing.
    """
    if report.matched == 0:
        return {}
    marks: Marks = {}
    for pod in pods:
        if pod.deleting:
            continue
        cost = str(deletion_cost(report, pod.name))
        if pod.deletion_cost != cost or pod.marked_by != owner:
            marks[pod.name] = {DELETION_COST: cost, MARKED_BY: owner}
    return marks


def cleared_marks(pods: Iterable[Pod], owner: str) -> Marks:
    """The annotations to remove from the pods `owner` marked (when it goes away)."""
    return {
        pod.name: {DELETION_COST: None, MARKED_BY: None}
        for pod in pods
        if pod.marked_by == owner and not pod.deleting
    }


def workers_condition(
    report: WorkerReport | None, where: str, *, enabled: bool, problem: str | None = None
) -> Condition:
    """The WorkersMatched condition: True once a consumer matched a pod, else why not.

    `where` is where the consumers connect, in words (the source spec's `where`);
    `problem` says why the pods or the connections could not be listed.
    """
    off = "busy workers are not protected"
    if not enabled:
        return Condition(
            CONDITION, False, "ProtectionDisabled",
            "behavior.scaleDown.protectBusyWorkers is false: consumers are not matched to pods",
        )
    if report is None:
        return Condition(CONDITION, False, "NotListed", f"{off}: {problem or 'nothing listed'}")
    if report.matched:
        ways = [
            f"{count} by {how}"
            for count, how in ((report.by_name, "connection name"), (report.by_address, "address"))
            if count
        ]
        return Condition(
            CONDITION, True, "Matched",
            f"{report.matched} of {report.pods} pods matched to consumers ({', '.join(ways)}),"
            f" {report.busy} busy",
        )
    if report.pods == 0:
        why = "the target has no pods"
    elif report.consuming == 0:
        why = f"no consumer of its queues is connected in {where}"
    else:
        why = (
            f"none of the {report.consuming} connections consuming its queues in {where}"
            f" is named after one of the {report.pods} pods or comes from a pod's IP (name"
            " each consumer's connection or client after its pod)"
        )
    return Condition(CONDITION, False, "NoConsumersMatched", f"{off}: {why}")
