"""NodeUnschedulable: a cordoned node (spec.unschedulable) takes no new Pods.

A Pod that tolerates the node.kubernetes.io/unschedulable NoSchedule taint
may still go there, as in Kubernetes.
"""

from __future__ import annotations

from scheduler.framework import (
    NODE,
    SUCCESS,
    Action,
    ClusterEvent,
    CycleState,
    NodeInfo,
    Status,
    unschedulable,
)
from scheduler.podinfo import PodInfo
from scheduler.taints import NO_SCHEDULE, UNSCHEDULABLE_KEY, Taint, tolerated

NAME = "NodeUnschedulable"
REASON = "node(s) were unschedulable"

_CORDON_TAINT = Taint(UNSCHEDULABLE_KEY, "", NO_SCHEDULE)
_REJECTED = unschedulable(NAME, REASON, resolvable=False)


class NodeUnschedulable:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        if not node_info.unschedulable or tolerated(_CORDON_TAINT, pod.tolerations):
            return SUCCESS
        return _REJECTED

    def events(self) -> tuple[ClusterEvent, ...]:
        return (ClusterEvent(NODE, Action.ADD | Action.UPDATE_UNSCHEDULABLE | Action.UPDATE_TAINT),)
