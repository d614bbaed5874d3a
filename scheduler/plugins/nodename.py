"""NodeName: a Pod that names its node (spec.nodeName) fits only that node."""

from __future__ import annotations

from scheduler.framework import (
    NODE_ADD,
    SKIP,
    SUCCESS,
    ClusterEvent,
    CycleState,
    NodeInfo,
    NodeLister,
    Status,
    unschedulable,
)
from scheduler.podinfo import PodInfo

NAME = "NodeName"
REASON = "node(s) didn't match the requested node name"

_REJECTED = unschedulable(NAME, REASON, resolvable=False)


class NodeName:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def pre_filter(self, state: CycleState, pod: PodInfo, snapshot: NodeLister) -> Status:
        return SUCCESS if pod.node_name else SKIP

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        return SUCCESS if node_info.name == pod.node_name else _REJECTED

    def events(self) -> tuple[ClusterEvent, ...]:
        return (NODE_ADD,)
