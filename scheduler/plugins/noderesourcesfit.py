"""NodeResourcesFit: the Pod's requests must fit what the node has left.

What is left is status.allocatable minus the requests of the Pods already on
the node, assumed ones included. Checked: the pod count, cpu, memory, and
ephemeral-storage and extended resources when the Pod asks for them. Every
shortfall is reported (a node can lack both cpu and memory), in Kubernetes'
words: "Too many pods", "Insufficient cpu", ...
"""

from __future__ import annotations

from scheduler.framework import (
    ASSIGNED_POD,
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

NAME = "NodeResourcesFit"
TOO_MANY_PODS = "Too many pods"


def insufficient(resource: str) -> str:
    return f"Insufficient {resource}"


class NodeResourcesFit:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        r = pod.requests
        # The common case, a fit, costs four comparisons.
        if (
            len(node_info.pods) < node_info.alloc_pods
            and (not r.cpu or node_info.req_cpu + r.cpu <= node_info.alloc_cpu)
            and (not r.memory or node_info.req_memory + r.memory <= node_info.alloc_memory)
            and (
                not r.ephemeral_storage
                or node_info.req_ephemeral + r.ephemeral_storage <= node_info.alloc_ephemeral
            )
            and not r.scalar
        ):
            return SUCCESS
        reasons = shortfalls(pod, node_info)
        return unschedulable(NAME, *reasons) if reasons else SUCCESS

    def events(self) -> tuple[ClusterEvent, ...]:
        return (
            ClusterEvent(NODE, Action.ADD | Action.UPDATE_ALLOCATABLE),
            ClusterEvent(ASSIGNED_POD, Action.DELETE | Action.UPDATE),
        )


def shortfalls(pod: PodInfo, node_info: NodeInfo) -> list[str]:
    """The reasons the Pod does not fit the node, in Kubernetes' order; empty if it fits."""
    r = pod.requests
    reasons = []
    if len(node_info.pods) + 1 > node_info.alloc_pods:
        reasons.append(TOO_MANY_PODS)
    if r.cpu and node_info.req_cpu + r.cpu > node_info.alloc_cpu:
        reasons.append(insufficient("cpu"))
    if r.memory and node_info.req_memory + r.memory > node_info.alloc_memory:
        reasons.append(insufficient("memory"))
    if r.ephemeral_storage and (
        node_info.req_ephemeral + r.ephemeral_storage > node_info.alloc_ephemeral
    ):
        reasons.append(insufficient("ephemeral-storage"))
    for resource, amount in r.scalar:
        used = node_info.req_scalar.get(resource, 0)
        if used + amount > node_info.alloc_scalar.get(resource, 0):
            reasons.append(insufficient(resource))
    return reasons
