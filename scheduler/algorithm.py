"""One scheduling decision: filter the nodes, score the feasible ones, pick the best.

schedule_one(pod, snapshot) is pure apart from two pieces of state kept on
purpose, both deterministic: the seeded random source that breaks ties
between equally scored nodes (a test hands in random.Random(seed) and gets
the same choices back), and the index where the next search starts.

Sampling (Kubernetes' percentageOfNodesToScore): in a large cluster the
search stops once enough feasible nodes are found, and only those are
scored. The default is adaptive: 50% minus one point per 125 nodes, never
under 5%, never fewer than 100 nodes (5,000 nodes -> 500). The search starts
where the previous one stopped, so over successive Pods every node is
looked at, and the choice among the sample is still by score. Set
percentage_of_nodes_to_score=100 to look at every node every time.

Memoisation: the answers of node-local plugins (see framework) are kept on
the snapshot's NodeInfos, keyed by the Pod's signature, until the node
changes. Replicas of one ReplicaSet share a signature, so after the first
one a decision re-runs the plugins only on the nodes that changed since
(usually the one that took the previous replica) and otherwise reads
remembered answers; normalization and the choice still happen every time.
A score that comes out equal on every candidate is left out of the sum: it
cannot change which node wins.

A Pod that fits nowhere gets a FitError whose message counts the reasons
node by node, like Kubernetes:

    0/3 nodes are available: 2 Insufficient cpu, 1 node(s) had untolerated taint {a: b}.

The reasons are sorted by their text. (Kubernetes sorts the "count reason"
strings, so its order depends on the counts; sorting on the reason alone
keeps the order stable while counts change.)
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

from scheduler.framework import (
    MAX_NODE_SCORE,
    SUCCESS,
    Code,
    CycleState,
    Framework,
    NodeInfo,
    NodeLister,
    NodeName,
    ScorePlugin,
    Status,
    error,
    is_node_local,
)
from scheduler.podinfo import PodInfo

MIN_FEASIBLE_NODES_TO_FIND = 100
MEMO_ENTRIES_PER_NODE = 32  # distinct Pod signatures remembered per node, oldest out first
MAX_SIGNATURES = 10_000  # interned signatures before the table starts over

# (weighted sum of the memoised plugins without normalize, raw scores of those with it)
ScoreEntry = tuple[int, tuple[int, ...]]

# Shared by every Algorithm, so two profiles scheduling over one snapshot never read
# each other's remembered answers.
_SIGNATURE_IDS = itertools.count(1)
MIN_FEASIBLE_NODES_PERCENTAGE = 5
NO_NODES_MESSAGE = "no nodes available to schedule pods"
INVALID_POD_PLUGIN = "PodSpec"


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Why a Pod fits nowhere: the status of each node, and who said no."""

    node_statuses: Mapping[NodeName, Status]
    unschedulable_plugins: frozenset[str]
    pre_filter_message: str = ""


@dataclasses.dataclass(frozen=True)
class FitError:
    pod_key: str
    num_all_nodes: int
    diagnosis: Diagnosis

    @property
    def message(self) -> str:
        if self.num_all_nodes == 0:
            return NO_NODES_MESSAGE
        head = f"0/{self.num_all_nodes} nodes are available"
        if self.diagnosis.pre_filter_message:
            return f"{head}: {self.diagnosis.pre_filter_message}."
        counts = collections.Counter(
            reason for status in self.diagnosis.node_statuses.values() for reason in status.reasons
        )
        histogram = ", ".join(f"{count} {reason}" for reason, count in sorted(counts.items()))
        return f"{head}: {histogram}." if histogram else f"{head}."

    def __str__(self) -> str:
        return self.message


@dataclasses.dataclass(frozen=True)
class ScheduleResult:
    """The decision: a node, or why not (fit_error), or a plugin failure (error)."""

    node_name: NodeName | None
    evaluated_nodes: int = 0
    feasible_nodes: int = 0
    fit_error: FitError | None = None
    error: Status | None = None

    @property
    def ok(self) -> bool:
        return self.node_name is not None


def num_feasible_nodes_to_find(num_all_nodes: int, percentage: int) -> int:
    """How many feasible nodes to find before scoring (Kubernetes' formula)."""
    if num_all_nodes < MIN_FEASIBLE_NODES_TO_FIND or percentage >= 100:
        return num_all_nodes
    if percentage <= 0:
        percentage = max(50 - num_all_nodes // 125, MIN_FEASIBLE_NODES_PERCENTAGE)
    return max(num_all_nodes * percentage // 100, MIN_FEASIBLE_NODES_TO_FIND)


class Algorithm:
    def __init__(
        self,
        framework: Framework,
        *,
        rng: random.Random,
        percentage_of_nodes_to_score: int = 0,
        memoize: bool = True,
    ) -> None:
        if not 0 <= percentage_of_nodes_to_score <= 100:
            raise ValueError(
                "percentage_of_nodes_to_score must be from 0 (adaptive) to 100,"
                f" got {percentage_of_nodes_to_score}"
            )
        self.framework = framework
        self._rng = rng
        self._percentage = percentage_of_nodes_to_score
        self._next_start = 0
        self._memoize = memoize
        self._signature_ids: dict[tuple[object, ...], int] = {}

    def schedule_one(self, pod: PodInfo, snapshot: NodeLister) -> ScheduleResult:
        nodes = snapshot.list()
        if not nodes:
            return self._fit_error(pod, nodes, {}, pre_filter=NO_NODES_MESSAGE)

        # Refuse a Pod whose spec could not be read, saying where.
        if pod.errors:
            return self._fit_error(
                pod, nodes, {}, pre_filter="invalid Pod: " + "; ".join(pod.errors)
            )

        # PreFilter: once per Pod.
        state = CycleState()
        status = self.framework.run_pre_filter(state, pod, snapshot)
        if status.code is Code.ERROR:
            return ScheduleResult(None, error=status)
        if not status.ok:
            statuses = {n.name: status for n in nodes}
            return self._fit_error(pod, nodes, statuses, pre_filter=status.message)

        # Filter: until enough feasible nodes are found.
        sid = self._signature_id(pod) if self._memoize else None
        feasible, statuses, evaluated, failure = self._find_feasible(state, pod, nodes, sid)
        if failure is not None:
            return ScheduleResult(None, evaluated_nodes=evaluated, error=failure)
        if not feasible:
            return self._fit_error(pod, nodes, statuses)
        if len(feasible) == 1:
            return ScheduleResult(feasible[0].name, evaluated, 1)

        # Score the sample and pick the best.
        chosen = self._choose(state, pod, feasible, sid)
        if isinstance(chosen, Status):
            return ScheduleResult(None, evaluated_nodes=evaluated, error=chosen)
        return ScheduleResult(chosen.name, evaluated, len(feasible))

    def _signature_id(self, pod: PodInfo) -> int:
        signature = pod.signature
        sid = self._signature_ids.get(signature)
        if sid is None:
            if len(self._signature_ids) >= MAX_SIGNATURES:
                self._signature_ids.clear()  # ids never repeat, so no old memo is ever matched
            sid = self._signature_ids[signature] = next(_SIGNATURE_IDS)
        return sid

    def _find_feasible(
        self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo], sid: int | None
    ) -> tuple[list[NodeInfo], dict[NodeName, Status], int, Status | None]:
        """(feasible nodes, statuses of the rejected ones, nodes evaluated, a plugin Error).

        Nodes are taken in runs from the rotating start: each run's remembered answers
        are read in one pass, only the nodes without one are filtered, and the search
        stops at the node that completes `wanted` feasible ones, exactly as a one-by-one
        search would.
        """
        active = self.framework.active_filters(state)
        filters = [p.filter for p in active]
        memo_key = sid if sid is not None and all(is_node_local(p) for p in active) else None
        total = len(nodes)
        wanted = num_feasible_nodes_to_find(total, self._percentage)
        position = self._next_start % total
        feasible: list[NodeInfo] = []
        statuses: dict[NodeName, Status] = {}
        evaluated = 0
        while evaluated < total and len(feasible) < wanted:
            size = min(max(wanted - len(feasible), 32), total - evaluated, total - position)
            run = nodes[position : position + size]
            answers = _answers(filters, state, pod, run, memo_key)
            if isinstance(answers, Status):
                return [], {}, evaluated, answers
            needed = wanted - len(feasible)
            if answers.count(SUCCESS) == size:  # the usual case: every node of the run fits
                used = min(needed, size)
                feasible.extend(run[:used])
            else:
                hits = [i for i, answer in enumerate(answers) if answer is SUCCESS]
                used = hits[needed - 1] + 1 if len(hits) >= needed else size
                feasible.extend([run[i] for i in hits[:needed]])
                statuses.update(
                    (node_info.name, answer)
                    for node_info, answer in zip(run[:used], answers[:used], strict=True)
                    if answer is not SUCCESS
                )
            evaluated += used
            position = (position + used) % total
        self._next_start = position
        return feasible, statuses, evaluated, None

    def _choose(
        self, state: CycleState, pod: PodInfo, feasible: Sequence[NodeInfo], sid: int | None
    ) -> NodeInfo | Status:
        status = self.framework.run_pre_score(state, pod, feasible)
        if not status.ok:
            return status
        totals = self._totals(state, pod, feasible, sid)
        if isinstance(totals, Status):
            return totals
        best = max(totals)
        if totals.count(best) == 1:
            return feasible[totals.index(best)]
        ties = [i for i, total in enumerate(totals) if total == best]
        return feasible[ties[self._rng.randrange(len(ties))]]

    def _totals(
        self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo], sid: int | None
    ) -> list[int] | Status:
        """A weighted total per node that ranks the nodes as the full sum would."""
        normalizers = self.framework.normalizers
        active = [p for p in self.framework.scores if p.name not in state.skip_score]
        remembered = [p for p in active if sid is not None and is_node_local(p)]
        direct = [p for p in remembered if p.name not in normalizers]  # weighted sum memoised
        raw = [p for p in remembered if p.name in normalizers]  # raw scores memoised
        live = [p for p in active if p not in remembered]

        # Remembered answers, computed for the nodes that changed.
        totals = [0] * len(nodes)
        if sid is not None and remembered:
            entries = _score_entries(state, pod, nodes, sid, direct, raw)
            if isinstance(entries, Status):
                return entries
            totals = [entry[0] for entry in entries]
            for k, plugin in enumerate(raw):
                added = self._add_normalized(
                    state, pod, plugin, [entry[1][k] for entry in entries], totals
                )
                if isinstance(added, Status):
                    return added
                totals = added

        # Plugins whose answers depend on more than one node run every time.
        for plugin in live:
            score = plugin.score
            scores = [score(state, pod, node_info) for node_info in nodes]
            added = self._add_normalized(state, pod, plugin, scores, totals)
            if isinstance(added, Status):
                return added
            totals = added
        return totals

    def _add_normalized(
        self,
        state: CycleState,
        pod: PodInfo,
        plugin: ScorePlugin,
        scores: list[int],
        totals: list[int],
    ) -> list[int] | Status:
        normalize = self.framework.normalizers.get(plugin.name)
        if normalize is not None:
            normalize(state, pod, scores)
        low, high = min(scores), max(scores)
        if low < 0 or high > MAX_NODE_SCORE:
            return error(plugin.name, f"plugin {plugin.name} scored outside 0..100")
        if low == high:
            return totals  # the same for every node: it cannot change the ranking
        weight = plugin.weight
        return [t + weight * s for t, s in zip(totals, scores, strict=True)]

    def _fit_error(
        self,
        pod: PodInfo,
        nodes: Sequence[NodeInfo],
        statuses: dict[NodeName, Status],
        *,
        pre_filter: str = "",
    ) -> ScheduleResult:
        plugins = frozenset(s.plugin for s in statuses.values() if s.plugin)
        if pod.errors:
            # Only a change to the Pod itself can help; no cluster event names this plugin.
            plugins = frozenset({INVALID_POD_PLUGIN})
        diagnosis = Diagnosis(statuses, plugins, pre_filter)
        error = FitError(pod.key, len(nodes), diagnosis)
        return ScheduleResult(None, evaluated_nodes=len(statuses), fit_error=error)


def _run_filters(
    filters: Sequence[Any], state: CycleState, pod: PodInfo, node_info: NodeInfo
) -> Status:
    """The first rejection (or Error) among `filters`, else the SUCCESS constant."""
    for check in filters:
        status = check(state, pod, node_info)
        if status is not SUCCESS and status.code is not Code.SUCCESS:
            return status
    return SUCCESS


def _answers(
    filters: Sequence[Any],
    state: CycleState,
    pod: PodInfo,
    run: Sequence[NodeInfo],
    memo_key: int | None,
) -> list[Status] | Status:
    """The filter verdict for each node of `run` (remembered where possible), or an Error."""
    if memo_key is None:
        answers = [_run_filters(filters, state, pod, node_info) for node_info in run]
        failed = next((a for a in answers if a.code is Code.ERROR), None)
        return failed if failed is not None else answers
    remembered = [node_info.filter_memo.get(memo_key) for node_info in run]
    if None not in remembered:  # Status compares by identity, so this scan stays in C
        return remembered  # type: ignore[return-value]
    fresh: list[Status] = []
    for node_info, answer in zip(run, remembered, strict=True):
        if answer is None:
            answer = _run_filters(filters, state, pod, node_info)
            if answer.code is Code.ERROR:
                return answer
            _remember(node_info.filter_memo, memo_key, answer)
        fresh.append(answer)
    return fresh


def _score_entries(
    state: CycleState,
    pod: PodInfo,
    nodes: Sequence[NodeInfo],
    sid: int,
    direct: Sequence[ScorePlugin],
    raw: Sequence[ScorePlugin],
) -> list[ScoreEntry] | Status:
    """The remembered score entry of each node, computing the missing ones."""
    remembered = [node_info.score_memo.get(sid) for node_info in nodes]
    if None not in remembered:
        return remembered  # type: ignore[return-value]
    entries: list[ScoreEntry] = []
    for node_info, entry in zip(nodes, remembered, strict=True):
        if entry is None:
            computed = _score_entry(state, pod, node_info, direct, raw)
            if isinstance(computed, Status):
                return computed
            _remember(node_info.score_memo, sid, computed)
            entry = computed
        entries.append(entry)
    return entries


def _score_entry(
    state: CycleState,
    pod: PodInfo,
    node_info: NodeInfo,
    direct: Sequence[ScorePlugin],
    raw: Sequence[ScorePlugin],
) -> ScoreEntry | Status:
    """(weighted sum of the plugins without normalize, raw scores of those with it)."""
    weighted = 0
    for plugin in direct:
        score = plugin.score(state, pod, node_info)
        if not 0 <= score <= MAX_NODE_SCORE:
            return error(plugin.name, f"plugin {plugin.name} scored {score}, outside 0..100")
        weighted += plugin.weight * score
    return weighted, tuple(plugin.score(state, pod, node_info) for plugin in raw)


def _remember(memo: dict[int, Any], key: int, value: Any) -> None:
    if len(memo) >= MEMO_ENTRIES_PER_NODE:
        del memo[next(iter(memo))]  # dicts keep insertion order: this is the oldest
    memo[key] = value
