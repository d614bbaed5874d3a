"""NodePorts: two Pods on one node cannot bind the same host port.

Ports conflict when protocol and port agree and the host IPs overlap: equal,
or either one is 0.0.0.0 (every address). NodeInfo keeps the used ports both
exactly and by (protocol, port), so each check is a dictionary lookup.
"""

from __future__ import annotations

from scheduler.framework import (
    ASSIGNED_POD,
    NODE_ADD,
    SKIP,
    SUCCESS,
    Action,
    ClusterEvent,
    CycleState,
    NodeInfo,
    NodeLister,
    Status,
    unschedulable,
)
from scheduler.podinfo import HostPort, PodInfo

NAME = "NodePorts"
REASON = "node(s) didn't have free ports for the requested pod ports"
ANY_IP = "0.0.0.0"

_REJECTED = unschedulable(NAME, REASON)


def conflicts(port: HostPort, node_info: NodeInfo) -> bool:
    if port.host_ip == ANY_IP:
        return (port.protocol, port.port) in node_info.ports_any_ip
    return port in node_info.ports or HostPort(port.protocol, ANY_IP, port.port) in node_info.ports


class NodePorts:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def pre_filter(self, state: CycleState, pod: PodInfo, snapshot: NodeLister) -> Status:
        return SUCCESS if pod.host_ports else SKIP

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        if not node_info.ports:
            return SUCCESS
        for port in pod.host_ports:
            if conflicts(port, node_info):
                return _REJECTED
        return SUCCESS

    def events(self) -> tuple[ClusterEvent, ...]:
        return (NODE_ADD, ClusterEvent(ASSIGNED_POD, Action.DELETE))
