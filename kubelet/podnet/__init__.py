"""The Pod network: a bridge per node, a veth per Pod, routes between nodes, NAT at the edges.

    BridgeNetwork(PodNetConfig(...), pod_cidrs=...)   the kubelet's PodNetwork (kubelet/network.py):
                                       setup(request) -> PodNetworkResult, teardown, status
    RouteSyncer(node_name=...)         apply(nodes) -> RouteSyncResult
    RouteController(informer, syncer)  run(): Node objects drive apply
    cleanup(prefix, state_dir=...)     removes all of it

Everything runs in the node's network namespace (the kubelet's). Netlink work
goes through pyroute2, one socket per operation, never an `ip` process; iptables
rules through one iptables-restore --noflush of our own chains. Pod-to-Pod
traffic, on one node or across nodes, is routed and never NATed; traffic from
the node's Pods to outside the cluster CIDR is masqueraded.
"""

from kubelet.podnet.bridge import BridgeNetwork, NoPodCidr
from kubelet.podnet.cleanup import CleanupResult, cleanup
from kubelet.podnet.config import (
    ROUTE_PROTOCOL,
    ConfigError,
    PodNetConfig,
    PodNetworkError,
    RetryableError,
)
from kubelet.podnet.controller import RouteController
from kubelet.podnet.routes import RouteSyncer, RouteSyncResult, plan_routes

__all__ = [
    "ROUTE_PROTOCOL",
    "BridgeNetwork",
    "CleanupResult",
    "ConfigError",
    "NoPodCidr",
    "PodNetConfig",
    "PodNetworkError",
    "RetryableError",
    "RouteController",
    "RouteSyncResult",
    "RouteSyncer",
    "cleanup",
    "plan_routes",
]
