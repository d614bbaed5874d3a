"""What a one-host cluster is made of, as command lines, from its cluster.json.

The layout (written once by `deploy/up.sh`, kept in <state>/cluster.json)
fixes the cluster's name, ports, node network and node count; this module
turns it into the components the supervisor runs, control plane first,
then per node a kubelet and a proxy inside the node's network namespace.
Every host-level name carries the cluster's name: the node namespaces,
links, cgroup roots, etcd key prefix and state directories.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import pathlib
import sys
from typing import Any

from deploy.hostnet import ClusterNet

SERVICE_CIDR = "10.96.0.0/12"
CLUSTER_CIDR = "10.244.0.0/16"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"


@dataclasses.dataclass
class Component:
    name: str
    argv: list[str]
    netns: str = ""  # run inside this network namespace (a node's)
    env: dict[str, str] = dataclasses.field(default_factory=dict)


def cluster_net(layout: dict[str, Any]) -> ClusterNet:
    return ClusterNet(layout["name"], ipaddress.ip_network(layout["node_subnet"]))


def node_name(index: int) -> str:
    return f"node-{index}"


def api_address(layout: dict[str, Any]) -> str:
    """Where nodes reach the API server: the bridge's address."""
    return f"{cluster_net(layout).gateway}:{layout['ports']['apiserver']}"


def registry_address(layout: dict[str, Any]) -> str:
    return f"{cluster_net(layout).gateway}:{layout['ports']['registry']}"


def control_plane(state: pathlib.Path, layout: dict[str, Any]) -> list[Component]:
    python = sys.executable
    ports = layout["ports"]
    name = layout["name"]
    net = cluster_net(layout)
    api_local = f"127.0.0.1:{ports['apiserver']}"
    return [
        Component(
            "etcd",
            [
                "etcd",
                f"--name={name}",
                f"--data-dir={state / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-cluster={name}=http://127.0.0.1:{ports['etcd_peer']}",
                "--log-level=warn",
                "--logger=zap",
            ],
        ),
        Component(
            "apiserver",
            [
                python,
                "-m",
                "apiserver.main",
                f"--etcd-servers=127.0.0.1:{ports['etcd']}",
                f"--listen={api_local},{net.gateway}:{ports['apiserver']}",
                f"--etcd-prefix=/registry/{name}",
                f"--metrics-port={ports['apiserver_metrics']}",
                f"--encryption-key-file={state / 'encryption-key'}",
            ],
        ),
        Component(
            "registry",
            ["/usr/bin/docker-registry", "serve", str(state / "registry" / "config.json")],
        ),
        Component(
            "controller-manager",
            [
                python,
                "-m",
                "controllers.manager",
                f"--server={api_local}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={ports['controller_manager_metrics']}",
                f"--node-monitor-grace-period={layout.get('node_grace_period', 40)}",
                f"--pod-eviction-timeout={layout.get('pod_eviction_timeout', 300)}",
            ],
        ),
        Component(
            "scheduler",
            [
                python,
                "-m",
                "scheduler.main",
                f"--server={api_local}",
                f"--metrics-port={ports['scheduler_metrics']}",
            ],
        ),
        Component(
            "dns",
            [
                python,
                "-m",
                "dns.main",
                f"--server={api_local}",
                f"--listen={net.gateway}:53",
                f"--cluster-domain={CLUSTER_DOMAIN}",
                f"--metrics-port={ports['dns_metrics']}",
            ],
        ),
    ]


def node_components(state: pathlib.Path, layout: dict[str, Any], index: int) -> list[Component]:
    python = sys.executable
    net = cluster_net(layout)
    node = node_name(index)
    node_ip = net.node_ip(index)
    node_state = state / "nodes" / node
    return [
        Component(
            f"{node}/kubelet",
            [
                python,
                "-m",
                "kubelet.main",
                f"--server={api_address(layout)}",
                f"--node-name={node}",
                f"--node-ip={node_ip}",
                f"--address={node_ip}",
                f"--state-dir={node_state}",
                f"--cgroup-root=kubelite-{layout['name']}-{node}",
                f"--registry={registry_address(layout)}",
                f"--insecure-registry={registry_address(layout)}",
                f"--cluster-dns={DNS_SERVICE_IP}",
                f"--cluster-domain={CLUSTER_DOMAIN}",
                "--network=bridge",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={10255}",
            ],
            netns=net.netns(index),
        ),
        Component(
            f"{node}/proxy",
            [
                python,
                "-m",
                "proxy.main",
                f"--server={api_address(layout)}",
                f"--node-name={node}",
                f"--node-ip={node_ip}",
                f"--cluster-cidr={CLUSTER_CIDR}",
                f"--metrics-port={10249}",
            ],
            netns=net.netns(index),
        ),
    ]


def components(state: pathlib.Path, layout: dict[str, Any]) -> list[Component]:
    result = control_plane(state, layout)
    for index in range(1, layout.get("nodes", 0) + 1):
        result += node_components(state, layout, index)
    return result
