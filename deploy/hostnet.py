"""The host side of a one-host cluster: a bridge, and a network namespace per node.

Each node of a one-host cluster is a network namespace named
`<cluster>-node-<i>` whose eth0 is one end of a veth pair; the other end,
`<cluster>-<i>`, hangs on the cluster bridge `<cluster>-br`. The bridge holds
the first address of the cluster's node network (its gateway), so the
control plane, which runs in the host namespace, listens there and nodes
reach it as they would reach a server across a LAN. Nodes get the following
addresses. Nothing else on the host changes: no host route but the bridge's
own connected one, no host iptables rule.

These steps run once per bring-up, not per Pod, so they shell out to `ip`.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import subprocess


class HostNetError(Exception):
    pass


def _ip(*args: str, check: bool = True, netns: str = "") -> subprocess.CompletedProcess[str]:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HostNetError(f"failed to run {' '.join(argv)}: {result.stderr.strip()}")
    return result


@dataclasses.dataclass(frozen=True)
class ClusterNet:
    name: str
    subnet: ipaddress.IPv4Network

    @property
    def bridge(self) -> str:
        return f"{self.name}-br"

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    def node_ip(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)

    def netns(self, index: int) -> str:
        return f"{self.name}-node-{index}"

    def host_veth(self, index: int) -> str:
        return f"{self.name}-{index}"


def used_subnets() -> list[ipaddress.IPv4Network]:
    """Networks the host already routes, so a new cluster never overlaps one."""
    out = _ip("-4", "route", "show", "table", "all").stdout
    nets = []
    for line in out.splitlines():
        first = line.split()[0] if line.split() else ""
        if first in ("default", "broadcast", "local"):
            continue
        try:
            nets.append(ipaddress.ip_network(first, strict=False))
        except ValueError:
            continue
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    taken = used_subnets()
    for third in range(30, 250):
        candidate = ipaddress.ip_network(f"172.31.{third}.0/24")
        if not any(candidate.overlaps(t) for t in taken):
            return candidate
    raise HostNetError("no free /24 in 172.31.0.0/16 for the cluster's node network")


def link_exists(name: str, netns: str = "") -> bool:
    return _ip("link", "show", name, check=False, netns=netns).returncode == 0


def netns_exists(name: str) -> bool:
    return name in _ip("netns", "list").stdout.split()


def ensure_bridge(net: ClusterNet) -> None:
    if not link_exists(net.bridge):
        _ip("link", "add", net.bridge, "type", "bridge")
    addr = f"{net.gateway}/{net.subnet.prefixlen}"
    if addr not in _ip("-4", "addr", "show", "dev", net.bridge).stdout:
        _ip("addr", "add", addr, "dev", net.bridge)
    _ip("link", "set", net.bridge, "up")


def ensure_node(net: ClusterNet, index: int) -> None:
    """The node's namespace, wired to the bridge, with its address and a route to the bridge."""
    ns, host_end = net.netns(index), net.host_veth(index)
    if not netns_exists(ns):
        _ip("netns", "add", ns)
    if not link_exists("eth0", ns):
        if link_exists(host_end):
            _ip("link", "del", host_end)
        peer = f"{host_end}p"
        _ip("link", "add", host_end, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", ns)
        _ip("link", "set", peer, "name", "eth0", netns=ns)
    _ip("link", "set", host_end, "master", net.bridge)
    _ip("link", "set", host_end, "up")
    addr = f"{net.node_ip(index)}/{net.subnet.prefixlen}"
    if addr not in _ip("-4", "addr", "show", "dev", "eth0", netns=ns).stdout:
        _ip("addr", "add", addr, "dev", "eth0", netns=ns)
    _ip("link", "set", "lo", "up", netns=ns)
    _ip("link", "set", "eth0", "up", netns=ns)
    # Everything a node reaches beyond its LAN (the API server's other address, nothing
    # else here) goes through the host end of the bridge, as through a VM's gateway.
    _ip("route", "replace", "default", "via", net.gateway, netns=ns)
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"],
        check=False,
        capture_output=True,
    )


def delete_node(net: ClusterNet, index: int) -> None:
    if link_exists(net.host_veth(index)):
        _ip("link", "del", net.host_veth(index), check=False)
    if netns_exists(net.netns(index)):
        _ip("netns", "del", net.netns(index), check=False)


def cluster_netns(name: str) -> list[str]:
    """Every node namespace of the cluster, whatever its index."""
    return [n for n in _ip("netns", "list").stdout.split() if n.startswith(f"{name}-node-")]


def delete_all(name: str) -> None:
    for ns in cluster_netns(name):
        _ip("netns", "del", ns, check=False)
    for line in _ip("-o", "link", "show").stdout.splitlines():
        parts = line.split(":")
        if len(parts) > 1:
            link = parts[1].strip().split("@")[0]
            if link == f"{name}-br" or (
                link.startswith(f"{name}-") and link[len(name) + 1 :].isdigit()
            ):
                _ip("link", "del", link, check=False)
