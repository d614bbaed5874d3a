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

Wiring in a kubelet (names of the kubelet's own are illustrative):

    network = BridgeNetwork(
        PodNetConfig(cluster_cidr="10.244.0.0/16", node_ip=config.node_ip,
                     state_dir=config.state_dir / "podnet"),
        pod_cidrs=lambda: kubelet.node.pod_cidrs,     # the Node's spec.podCIDRs as observed
    )
    kubelet = Kubelet(config, network=network)
    network.release_orphans(live_sandbox_ids)        # at start, before any Pod worker runs
    nodes = Informer(client, "nodes")                # every Node, not only this one
    routes = RouteController(nodes, RouteSyncer(node_name=config.node_name))
    nodes.start(); asyncio.create_task(routes.run())
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
