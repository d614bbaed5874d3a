"""What a one-host cluster is made of, as command lines, from its cluster.json.

The layout (written once by `deploy/up.sh`, kept in <state>/cluster.json)
fixes the cluster's name, ports, node network and node count; this module
turns it into the components the supervisor runs, control plane first,
then per node a kubelet and a proxy inside the node's network namespace.
Every host-level name carries the cluster's name: the node namespaces,
links, cgroup roots, etcd key prefix and state directories.

Every component proves who it is: the API server serves TLS with the
certificate deploy/pki.py issued into <state>/pki and requires client
certificates on its port (bearer tokens on the next one); each control-plane
component and each node's proxy has a client config <state>/kubeconfig/
<component>.conf naming its own certificate; a kubelet joins with its node's
bootstrap config (a join token) and keeps the certificate it is issued in
<node state>/pki, with <node state>/kubelet.conf pointing at it. etcd listens
on loopback only, so it needs no TLS of its own here.
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


def pki_dir(state: pathlib.Path) -> pathlib.Path:
    return state / "pki"


def kubeconfig(state: pathlib.Path, component: str) -> pathlib.Path:
    return state / "kubeconfig" / f"{component}.conf"


def node_state(state: pathlib.Path, node: str) -> pathlib.Path:
    return state / "nodes" / node


def bootstrap_kubeconfig(state: pathlib.Path, node: str) -> pathlib.Path:
    return node_state(state, node) / "bootstrap-kubelet.conf"


def cluster_net(layout: dict[str, Any]) -> ClusterNet:
    return ClusterNet(layout["name"], ipaddress.ip_network(layout["node_subnet"]))


def node_name(index: int) -> str:
    return f"node-{index}"


def api_address(layout: dict[str, Any]) -> str:
    """Where nodes reach the API server: the bridge's address."""
    return f"{cluster_net(layout).gateway}:{layout['ports']['apiserver']}"


def token_address(layout: dict[str, Any]) -> str:
    """Where nodes present a bearer token (their join token): the bridge's address."""
    return f"{cluster_net(layout).gateway}:{layout['ports']['apiserver_token']}"


def local_api_address(layout: dict[str, Any]) -> str:
    return f"127.0.0.1:{layout['ports']['apiserver']}"


def apiserver_listen(layout: dict[str, Any]) -> tuple[str, str]:
    """The API server's mTLS and token listen addresses: loopback and the bridge."""
    ports, gateway = layout["ports"], cluster_net(layout).gateway
    return (
        f"127.0.0.1:{ports['apiserver']},{gateway}:{ports['apiserver']}",
        f"127.0.0.1:{ports['apiserver_token']},{gateway}:{ports['apiserver_token']}",
    )


def registry_auth_dir(state: pathlib.Path) -> pathlib.Path:
    """The registry's user: its htpasswd, password and the clients' auth file."""
    return state / "registry" / "auth"


def registry_address(layout: dict[str, Any]) -> str:
    return f"{cluster_net(layout).gateway}:{layout['ports']['registry']}"


def control_plane(state: pathlib.Path, layout: dict[str, Any]) -> list[Component]:
    python = sys.executable
    ports = layout["ports"]
    name = layout["name"]
    net = cluster_net(layout)
    pki = pki_dir(state)
    listen, token_listen = apiserver_listen(layout)
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
                f"--listen={listen}",
                f"--token-listen={token_listen}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={pki / 'ca.crt'}",
                f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
                f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
                f"--etcd-prefix=/registry/{name}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
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
                f"--kubeconfig={kubeconfig(state, 'controller-manager')}",
                f"--cluster-signing-cert-file={pki / 'ca.crt'}",
                f"--cluster-signing-key-file={pki / 'ca.key'}",
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
                f"--kubeconfig={kubeconfig(state, 'scheduler')}",
                f"--metrics-port={ports['scheduler_metrics']}",
            ],
        ),
        Component(
            "dns",
            [
                python,
                "-m",
                "dns.main",
                f"--kubeconfig={kubeconfig(state, 'dns')}",
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
    home = node_state(state, node)
    return [
        Component(
            f"{node}/kubelet",
            [
                python,
                "-m",
                "kubelet.main",
                f"--bootstrap-kubeconfig={bootstrap_kubeconfig(state, node)}",
                f"--kubeconfig={home / 'kubelet.conf'}",
                f"--cert-dir={home / 'pki'}",
                f"--node-name={node}",
                f"--node-ip={node_ip}",
                f"--address={node_ip}",
                f"--state-dir={home}",
                f"--cgroup-root=kubelite-{layout['name']}-{node}",
                f"--registry={registry_address(layout)}",
                f"--registry-ca-file={pki_dir(state) / 'ca.crt'}",
                f"--registry-auth-file={registry_auth_dir(state) / 'auth.json'}",
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
                f"--kubeconfig={kubeconfig(state, 'proxy')}",
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
