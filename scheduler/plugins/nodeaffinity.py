"""NodeAffinity: spec.nodeSelector and node affinity, required and preferred.

Filter: every nodeSelector label must be on the node with that value, and,
if the Pod has required node affinity, one of its terms must match. Score:
the sum of the weights of the preferred terms the node matches, scaled so
the best node gets 100. Both parts say Skip for a Pod without them, so that
most Pods pay nothing for this plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.framework import (
    NODE,
    SKIP,
    SUCCESS,
    Action,
    ClusterEvent,
    CycleState,
    NodeInfo,
    NodeLister,
    Status,
    normalize_max,
    unschedulable,
)
from scheduler.podinfo import PodInfo

NAME = "NodeAffinity"
REASON = "node(s) didn't match Pod's node affinity/selector"

_REJECTED = unschedulable(NAME, REASON, resolvable=False)


class NodeAffinity:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def __init__(self, *, weight: int = 2) -> None:
        self.weight = weight

    def pre_filter(self, state: CycleState, pod: PodInfo, snapshot: NodeLister) -> Status:
        return SUCCESS if pod.node_selector or pod.required_affinity else SKIP

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        labels = node_info.labels
        for key, value in pod.node_selector:
            if labels.get(key) != value:
                return _REJECTED
        required = pod.required_affinity
        if required is not None and not required.matches(labels, node_info.name):
            return _REJECTED
        return SUCCESS

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]) -> Status:
        return SUCCESS if pod.preferred_affinity else SKIP

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int:
        labels, name = node_info.labels, node_info.name
        return sum(p.weight for p in pod.preferred_affinity if p.term.matches(labels, name))

    def normalize(self, state: CycleState, pod: PodInfo, scores: list[int]) -> None:
        normalize_max(scores)

    def events(self) -> tuple[ClusterEvent, ...]:
        return (ClusterEvent(NODE, Action.ADD | Action.UPDATE_LABEL),)
