"""The scheduling framework: statuses, per-node state, and the plugin seams.

A scheduling decision runs plugins at a few extension points, as
kube-scheduler's framework does:

  PreFilter(state, pod, snapshot)  once per Pod: reject it outright, or say Skip
                                   so that its Filter is not run on any node;
  Filter(state, pod, node_info)    per node: may the Pod run there?
  PreScore(state, pod, nodes)      once over the feasible nodes; may say Skip;
  Score(state, pod, node_info)     per feasible node, an integer, then an optional
                                   normalize over all of them to 0..100, times the
                                   plugin's weight.

Every answer is a Status value with readable reasons ("Insufficient cpu");
"does not fit" is never an exception. A plugin is any object with a `name`
and the methods of the points it takes part in; `events()` says which cluster
events may make a Pod it rejected schedulable, which the queue uses to retry
only the Pods an event can help.

NodeInfo is the scheduler's view of one node: the node object parsed once
(allocatable, taints, labels, readiness) plus the Pods on it, assumed ones
included, with their summed requests, owners and host ports kept up to date
incrementally so that no Filter or Score ever walks the Pods of a node.
Invariant: the aggregates always equal the sums over `pods`.

A plugin may declare `node_local = True`: its Filter and Score answers for a
node depend only on the Pod's signature (PodInfo.signature) and that
NodeInfo, and its PreFilter / PreScore only on the Pod. The algorithm then
remembers those answers on the snapshot's NodeInfo until the node changes,
so the replicas of one ReplicaSet re-evaluate only the nodes that changed
since the previous replica. A plugin that looks across nodes (topology
spreading, inter-Pod affinity) must not declare it.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NewType, Protocol, runtime_checkable

from machinery.quantity import QuantityError
from scheduler import podinfo, taints
from scheduler.podinfo import HostPort, PodInfo, PodUID
from scheduler.taints import Taint

NodeName = NewType("NodeName", str)

MAX_NODE_SCORE = 100


class Code(enum.Enum):
    SUCCESS = "Success"
    # The Pod does not fit now; something changing on the node (a Pod leaving) may help.
    UNSCHEDULABLE = "Unschedulable"
    # The Pod cannot fit this node whatever happens to the Pods on it (labels, taints).
    UNSCHEDULABLE_AND_UNRESOLVABLE = "UnschedulableAndUnresolvable"
    # The plugin failed; the decision is not trustworthy and should be retried.
    ERROR = "Error"
    # From PreFilter / PreScore: this plugin has nothing to say about this Pod.
    SKIP = "Skip"


@dataclasses.dataclass(frozen=True, slots=True, eq=False)
class Status:
    """A plugin's answer. Compared by identity (a hot-path scan relies on it); compare
    `code` and `reasons` to compare meaning."""

    code: Code
    reasons: tuple[str, ...] = ()
    plugin: str = ""

    @property
    def ok(self) -> bool:
        return self.code is Code.SUCCESS

    @property
    def rejected(self) -> bool:
        return self.code in (Code.UNSCHEDULABLE, Code.UNSCHEDULABLE_AND_UNRESOLVABLE)

    @property
    def message(self) -> str:
        return ", ".join(self.reasons)


SUCCESS = Status(Code.SUCCESS)
SKIP = Status(Code.SKIP)


def unschedulable(plugin: str, *reasons: str, resolvable: bool = True) -> Status:
    code = Code.UNSCHEDULABLE if resolvable else Code.UNSCHEDULABLE_AND_UNRESOLVABLE
    return Status(code, reasons, plugin)


def error(plugin: str, *reasons: str) -> Status:
    return Status(Code.ERROR, reasons, plugin)


class CycleState:
    """Scratch space of one scheduling cycle, shared by the plugins of that cycle."""

    __slots__ = ("data", "skip_filter", "skip_score")

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.skip_filter: set[str] = set()
        self.skip_score: set[str] = set()


# Cluster events -----------------------------------------------------------------------------


class Action(enum.Flag):
    ADD = 1
    DELETE = 2
    UPDATE_ALLOCATABLE = 4
    UPDATE_LABEL = 8
    UPDATE_TAINT = 16
    UPDATE_CONDITION = 32
    UPDATE_UNSCHEDULABLE = 64
    UPDATE = 128  # any other change, e.g. a Pod's spec
    ALL = 255


NODE = "Node"
ASSIGNED_POD = "AssignedPod"
WILDCARD = "*"


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterEvent:
    """Something that changed in the cluster: a resource and what happened to it."""

    resource: str
    action: Action
    label: str = ""  # a readable name for logs and metrics

    def helps(self, interest: ClusterEvent) -> bool:
        """Whether this event is one of those `interest` (a plugin's registration) covers."""
        if self.resource == WILDCARD:
            return True
        return self.resource == interest.resource and bool(self.action & interest.action)


NODE_ADD = ClusterEvent(NODE, Action.ADD, "NodeAdd")
ASSIGNED_POD_DELETE = ClusterEvent(ASSIGNED_POD, Action.DELETE, "AssignedPodDelete")
UNSCHEDULABLE_TIMEOUT = ClusterEvent(WILDCARD, Action.ALL, "UnschedulableTimeout")


# Plugin seams ---------------------------------------------------------------------------------


class Plugin(Protocol):
    name: str


@runtime_checkable
class PreFilterPlugin(Protocol):
    name: str

    def pre_filter(self, state: CycleState, pod: PodInfo, snapshot: NodeLister) -> Status: ...


@runtime_checkable
class FilterPlugin(Protocol):
    name: str

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status: ...


@runtime_checkable
class PreScorePlugin(Protocol):
    name: str

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]) -> Status: ...


@runtime_checkable
class ScorePlugin(Protocol):
    name: str
    weight: int

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int: ...


@runtime_checkable
class NormalizeScorePlugin(Protocol):
    name: str

    def normalize(self, state: CycleState, pod: PodInfo, scores: list[int]) -> None:
        """Rescale `scores` (one per feasible node, in order) in place to 0..100."""


@runtime_checkable
class EnqueueExtensions(Protocol):
    name: str

    def events(self) -> tuple[ClusterEvent, ...]: ...


def is_node_local(plugin: object) -> bool:
    return getattr(plugin, "node_local", False) is True


class NodeLister(Protocol):
    def list(self) -> Sequence[NodeInfo]: ...

    def get(self, name: str) -> NodeInfo | None: ...


def normalize_max(scores: list[int], *, reverse: bool = False) -> None:
    """Scale scores so the largest becomes 100 (reverse: the largest becomes 0)."""
    top = max(scores, default=0)
    if top == 0:
        if reverse:
            scores[:] = [MAX_NODE_SCORE] * len(scores)
        return
    if reverse:
        table = [MAX_NODE_SCORE - MAX_NODE_SCORE * s // top for s in range(min(top, 1024) + 1)]
    else:
        table = [MAX_NODE_SCORE * s // top for s in range(min(top, 1024) + 1)]
    if top <= 1024 and min(scores) >= 0:
        # Raw scores are small counts; indexing a table beats the arithmetic per node.
        scores[:] = [table[s] for s in scores]
    elif reverse:
        scores[:] = [MAX_NODE_SCORE - MAX_NODE_SCORE * s // top for s in scores]
    else:
        scores[:] = [MAX_NODE_SCORE * s // top for s in scores]


# Node info ----------------------------------------------------------------------------------


class NodeInfo:
    """One node and the Pods on it, with aggregates kept incrementally."""

    __slots__ = (
        "node",
        "name",
        "labels",
        "unschedulable",
        "ready",
        "not_ready_taint",
        "hard_taints",
        "soft_taints",
        "alloc_cpu",
        "alloc_memory",
        "alloc_ephemeral",
        "alloc_pods",
        "alloc_scalar",
        "node_errors",
        "pods",
        "req_cpu",
        "req_memory",
        "req_ephemeral",
        "req_scalar",
        "nonzero_cpu",
        "nonzero_memory",
        "owners",
        "ports",
        "ports_any_ip",
        "generation",
        "filter_memo",
        "score_memo",
    )

    def __init__(self, node: Mapping[str, Any] | None = None, *, name: str = "") -> None:
        self.pods: dict[PodUID, PodInfo] = {}
        self.req_cpu = self.req_memory = self.req_ephemeral = 0
        self.nonzero_cpu = self.nonzero_memory = 0
        self.req_scalar: dict[str, int] = {}
        self.owners: dict[str, int] = {}
        self.ports: dict[HostPort, int] = {}
        self.ports_any_ip: dict[tuple[str, int], int] = {}
        self.generation = 0
        # Answers of node-local plugins for this node as it is now, by Pod signature id;
        # only snapshot copies fill them, and every change to the node empties them.
        self.filter_memo: dict[int, Status] = {}
        self.score_memo: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.node: Mapping[str, Any] | None = None
        self.name = NodeName(name)
        self._clear_node()
        if node is not None:
            self.set_node(node)

    # The node object -----------------------------------------------------------------------

    def _clear_node(self) -> None:
        self.labels: Mapping[str, str] = {}
        self.unschedulable = False
        self.ready = False
        self.not_ready_taint: Taint | None = None
        self.hard_taints: tuple[Taint, ...] = ()
        self.soft_taints: tuple[Taint, ...] = ()
        self.alloc_cpu = self.alloc_memory = self.alloc_ephemeral = self.alloc_pods = 0
        self.alloc_scalar: dict[str, int] = {}
        self.node_errors: tuple[str, ...] = ()

    def set_node(self, node: Mapping[str, Any]) -> None:
        """Parse the node object once; the filters read only the parsed fields."""
        self._forget_answers()
        errors: list[str] = []
        meta, spec = node.get("metadata") or {}, node.get("spec") or {}
        status = node.get("status") or {}
        self.node = node
        self.name = NodeName(meta.get("name") or "")
        self.labels = meta.get("labels") or {}
        self.unschedulable = bool(spec.get("unschedulable"))
        all_taints = taints.parse_taints(spec.get("taints"), "spec.taints", errors)
        self.hard_taints = tuple(t for t in all_taints if t.effect != taints.PREFER_NO_SCHEDULE)
        self.soft_taints = tuple(t for t in all_taints if t.effect == taints.PREFER_NO_SCHEDULE)
        self.ready, self.not_ready_taint = _readiness(status.get("conditions") or [])
        self._set_allocatable(status, errors)
        self.node_errors = tuple(errors)

    def clear_node(self) -> None:
        """The node object is gone but Pods still point at it (until they are deleted)."""
        self.node = None
        self._forget_answers()
        self._clear_node()

    def _set_allocatable(self, status: Mapping[str, Any], errors: list[str]) -> None:
        # A node that reports no allocatable is taken at its capacity, as Kubernetes does.
        field = "status.allocatable" if status.get("allocatable") else "status.capacity"
        raw = status.get("allocatable") or status.get("capacity") or {}
        amounts: dict[str, int] = {}
        for resource, value in raw.items():
            try:
                amounts[resource] = _parse_amount(resource, value)
            except (QuantityError, TypeError) as exc:
                errors.append(f"{field}.{resource}: {exc}")
        self.alloc_cpu = amounts.pop(podinfo.CPU, 0)
        self.alloc_memory = amounts.pop(podinfo.MEMORY, 0)
        self.alloc_ephemeral = amounts.pop(podinfo.EPHEMERAL_STORAGE, 0)
        self.alloc_pods = amounts.pop(podinfo.PODS, 0)
        self.alloc_scalar = amounts

    # The Pods on the node ----------------------------------------------------------------

    def add_pod(self, pod: PodInfo) -> None:
        if pod.uid in self.pods:
            self.remove_pod(pod.uid)
        self.pods[pod.uid] = pod
        self._account(pod, 1)

    def remove_pod(self, uid: PodUID) -> PodInfo | None:
        pod = self.pods.pop(uid, None)
        if pod is not None:
            self._account(pod, -1)
        return pod

    def _forget_answers(self) -> None:
        if self.filter_memo:
            self.filter_memo = {}
        if self.score_memo:
            self.score_memo = {}

    def _account(self, pod: PodInfo, sign: int) -> None:
        self._forget_answers()
        r = pod.requests
        self.req_cpu += sign * r.cpu
        self.req_memory += sign * r.memory
        self.req_ephemeral += sign * r.ephemeral_storage
        self.nonzero_cpu += sign * pod.nonzero_cpu
        self.nonzero_memory += sign * pod.nonzero_memory
        for name, value in r.scalar:
            _bump(self.req_scalar, name, sign * value)
        if pod.owner:
            _bump(self.owners, pod.owner, sign)
        for port in pod.host_ports:
            _bump(self.ports, port, sign)
            _bump(self.ports_any_ip, (port.protocol, port.port), sign)

    @property
    def pod_count(self) -> int:
        return len(self.pods)

    def clone(self) -> NodeInfo:
        copy = NodeInfo.__new__(NodeInfo)
        copy.copy_from(self)
        return copy

    def copy_from(self, other: NodeInfo) -> None:
        """Become an independent copy of `other`; parsed node fields are shared (immutable)."""
        for slot in NodeInfo.__slots__:
            setattr(self, slot, getattr(other, slot))
        self.pods = dict(other.pods)
        self.req_scalar = dict(other.req_scalar)
        self.owners = dict(other.owners)
        self.ports = dict(other.ports)
        self.ports_any_ip = dict(other.ports_any_ip)
        self.filter_memo = {}
        self.score_memo = {}

    def __repr__(self) -> str:
        return (
            f"NodeInfo({self.name}, pods={len(self.pods)}, cpu={self.req_cpu}/{self.alloc_cpu}m,"
            f" memory={self.req_memory}/{self.alloc_memory})"
        )


def _bump(counts: dict[Any, int], key: Any, delta: int) -> None:
    value = counts.get(key, 0) + delta
    if value:
        counts[key] = value
    else:
        counts.pop(key, None)


def _parse_amount(resource: str, value: Any) -> int:
    return podinfo._parse(resource, value)


def scheduling_view(node: Mapping[str, Any]) -> tuple[Any, ...]:
    """The parts of a Node object that NodeInfo reads; equal views parse the same."""
    meta, spec = node.get("metadata") or {}, node.get("spec") or {}
    status = node.get("status") or {}
    ready = [c.get("status") for c in status.get("conditions") or [] if c.get("type") == "Ready"]
    return (
        meta.get("name"),
        meta.get("labels"),
        bool(spec.get("unschedulable")),
        spec.get("taints"),
        status.get("allocatable") or status.get("capacity"),
        ready[:1],
    )


def _readiness(conditions: Iterable[Mapping[str, Any]]) -> tuple[bool, Taint | None]:
    """(ready, the taint Kubernetes would put on the node for its readiness, or None)."""
    for condition in conditions:
        if condition.get("type") == "Ready":
            status = condition.get("status")
            if status == "True":
                return True, None
            key = taints.NOT_READY_KEY if status == "False" else taints.UNREACHABLE_KEY
            return False, Taint(key, "", taints.NO_SCHEDULE)
    # A node that never reported readiness is treated as unreachable.
    return False, Taint(taints.UNREACHABLE_KEY, "", taints.NO_SCHEDULE)


# The framework ------------------------------------------------------------------------------


class Framework:
    """The plugins of one scheduler profile, sorted into extension points.

    Filters run in the order given, and a node's evaluation stops at the first
    rejecting filter, so cheap and decisive filters come first.
    """

    def __init__(self, plugins: Sequence[object]) -> None:
        names = [getattr(p, "name", None) for p in plugins]
        if len(set(names)) != len(names) or None in names:
            raise ValueError(f"scheduler plugins need distinct names, got {names}")
        self.plugins = tuple(plugins)
        self.pre_filters = tuple(p for p in plugins if isinstance(p, PreFilterPlugin))
        self.filters = tuple(p for p in plugins if isinstance(p, FilterPlugin))
        self.pre_scores = tuple(p for p in plugins if isinstance(p, PreScorePlugin))
        self.scores = tuple(p for p in plugins if isinstance(p, ScorePlugin))
        # Looked up once: isinstance() against a runtime Protocol is slow on the hot path.
        self.normalizers = {
            p.name: p.normalize for p in self.scores if isinstance(p, NormalizeScorePlugin)
        }
        for plugin in self.scores:
            if not isinstance(plugin.weight, int) or plugin.weight < 1:
                raise ValueError(f"score plugin {plugin.name} needs a positive integer weight")

    def run_pre_filter(self, state: CycleState, pod: PodInfo, nodes: NodeLister) -> Status:
        """SUCCESS, or the first rejection; Skips are recorded in the state."""
        for plugin in self.pre_filters:
            status = plugin.pre_filter(state, pod, nodes)
            if status.code is Code.SKIP:
                state.skip_filter.add(plugin.name)
            elif not status.ok:
                return dataclasses.replace(status, plugin=status.plugin or plugin.name)
        return SUCCESS

    def active_filters(self, state: CycleState) -> list[FilterPlugin]:
        return [p for p in self.filters if p.name not in state.skip_filter]

    def run_filters(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        for plugin in self.active_filters(state):
            status = plugin.filter(state, pod, node_info)
            if status is not SUCCESS and not status.ok:
                return status
        return SUCCESS

    def run_pre_score(self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]) -> Status:
        for plugin in self.pre_scores:
            status = plugin.pre_score(state, pod, nodes)
            if status.code is Code.SKIP:
                state.skip_score.add(plugin.name)
            elif not status.ok:
                return dataclasses.replace(status, plugin=status.plugin or plugin.name)
        return SUCCESS

    def run_scores(
        self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]
    ) -> list[int] | Status:
        """The weighted total per node (in the order of `nodes`), or an Error status."""
        totals = [0] * len(nodes)
        for plugin in self.scores:
            if plugin.name in state.skip_score:
                continue
            score = plugin.score
            scores = [score(state, pod, node_info) for node_info in nodes]
            normalize = self.normalizers.get(plugin.name)
            if normalize is not None:
                normalize(state, pod, scores)
            if scores and (min(scores) < 0 or max(scores) > MAX_NODE_SCORE):
                return error(plugin.name, f"plugin {plugin.name} scored outside 0..100")
            weight = plugin.weight
            totals = [t + weight * s for t, s in zip(totals, scores, strict=True)]
        return totals

    def events_by_plugin(self) -> dict[str, tuple[ClusterEvent, ...]]:
        return {p.name: p.events() for p in self.plugins if isinstance(p, EnqueueExtensions)}
