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

from collections import Counter
from collections.abc import Collection, Iterable, Mapping
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
    """The controller that owns it (its controlling ownerReference: a Deployment's
    ReplicaSet), None for a pod no controller owns."""

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


def idle_by_owner(pods: Iterable[Pod], report: WorkerReport) -> dict[str | None, int] | None:
    """Per controller, its live pods known idle (`IDLE_COST`), where the live pods have
    several controllers (a Deployment mid-rollout: its old and new ReplicaSets); else None.

    The Deployment controller shares a scale-down among its ReplicaSets in proportions set
    by their sizes and its surge, and each ReplicaSet reads the deletion costs of its own
    pods only: an idle pod of one does not spare a busy pod of the other. A scale-down of k
    spares every busy pod, whatever the share, only while each controller has k idle pods.
    """
    live = [pod for pod in pods if not pod.deleting]
    owners = {pod.owner for pod in live}
    if len(owners) < 2:
        return None
    idle = dict.fromkeys(owners, 0)
    for pod in live:
        if deletion_cost(report, pod.name) == IDLE_COST:
            idle[pod.owner] += 1
    return idle


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
