"""NodeReady: Pods go only to nodes whose Ready condition is True.

Kubernetes expresses this through the node.kubernetes.io/not-ready and
/unreachable taints that its node controller adds; kubelite reads the
condition directly and lets a Pod that tolerates the matching NoSchedule
taint (as DaemonSet Pods do) through anyway. A node whose spec or status
could not be parsed is refused too, since nothing else about it can be
trusted; its parse errors are on NodeInfo.node_errors.
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
from scheduler.taints import tolerated

NAME = "NodeReady"
REASON_NOT_READY = "node(s) were not ready"
REASON_INVALID = "node(s) had an unreadable spec or status"

_NOT_READY = unschedulable(NAME, REASON_NOT_READY, resolvable=False)
_INVALID = unschedulable(NAME, REASON_INVALID, resolvable=False)


class NodeReady:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        if node_info.node_errors:
            return _INVALID
        if node_info.ready:
            return SUCCESS
        taint = node_info.not_ready_taint
        if taint is not None and tolerated(taint, pod.tolerations):
            return SUCCESS
        return _NOT_READY

    def events(self) -> tuple[ClusterEvent, ...]:
        return (ClusterEvent(NODE, Action.ADD | Action.UPDATE_CONDITION),)
