"""The bridge network plugin: every Pod of the node on one bridge, with an address of its range.

Node level, made once and repaired by resync(): IPv4 forwarding on, bridged
traffic through iptables (br_netfilter, so Service DNAT between two Pods of one
bridge is undone on the reply), the bridge `<prefix>0` holding the range's
first address as the Pods' gateway, with a fixed MAC derived from that address
(a bridge otherwise takes its lowest port's MAC, which changes as Pods come and
go and leaves stale ARP entries in every Pod), and the iptables chains of
kubelet.podnet.iptables.

Pod level, in setup(): an address from the allocator, a veth pair whose host end
(named from the sandbox id, so a later call finds it) hangs on the bridge and
whose peer is created directly in the sandbox's namespace as eth0, with the
uplink's MTU, the address, loopback up and a default route via the bridge.
Setup is idempotent: a second call for the same sandbox (a retry, or a
restarted kubelet with the same state directory) returns the same address and
only redoes what is missing. A failed setup keeps its address until teardown,
so a retry gets the same one.

Teardown removes the sandbox's hostPort rules, its veth (both ends go together)
and frees its address; it is idempotent and works after the namespace is gone.

hostNetwork sandboxes (network_namespace_path None) get the node's IP and
nothing else. Methods are blocking and thread-safe; an asyncio kubelet calls
them through asyncio.to_thread. Changes to rules and records are serialized by
a lock file in the state directory, so two processes on one state directory
(a kubelet and its restarted successor overlapping) never interleave them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

from kubelet.podnet import netlink
from kubelet.podnet.config import PodNetConfig, veth_name
from kubelet.podnet.hostports import (
    HostPortConflict,
    HostPortRecord,
    HostPortStore,
    requested_ports,
)
from kubelet.podnet.ipam import IpAllocator, Owner
from kubelet.podnet.iptables import (
    IptablesRunner,
    jump_lines,
    jumps,
    render_forward,
    render_nat,
    restore_text,
)
from kubelet.runtime.interface import SandboxStatus

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
BRIDGE_NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def bridge_mac(gateway: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC holding the gateway address, stable per node."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in gateway.packed)


class BridgeNetwork:
    """The Pod network of one node; runs in the node's network namespace."""

    def __init__(self, config: PodNetConfig, *, iptables: IptablesRunner | None = None) -> None:
        self.config = config
        self._iptables = iptables or IptablesRunner(config.iptables)
        self._ipam = IpAllocator(config.network, config.state_dir / "ips")
        self._hostports = HostPortStore(config.state_dir / "hostports")
        self._lock_path = config.state_dir / "lock"
        self._mutex = threading.Lock()
        self._prepared = False
        self._mtu = 0

    # -- the seam the kubelet calls --------------------------------------------------------

    def setup(self, sandbox: SandboxStatus, pod: dict[str, Any]) -> list[str]:
        """Wire the sandbox into the node's Pod network; the Pod's IPs."""
        if sandbox.network_namespace_path is None:
            return [self.config.node_ip]
        # Refuse a bad spec or a missing namespace before taking an address.
        ports = requested_ports(pod)
        fd = netlink.open_netns_fd(sandbox.network_namespace_path)
        try:
            self.prepare()
            address = self._ipam.allocate(Owner(sandbox.id, sandbox.uid))
            self._wire(sandbox.network_namespace_path, fd, sandbox.id, address)
        finally:
            os.close(fd)
        if ports:
            record = HostPortRecord(
                sandbox.id, f"{sandbox.namespace}/{sandbox.name}", str(address), tuple(ports)
            )
            self._add_hostports(record)
        return [str(address)]

    def teardown(self, sandbox: SandboxStatus, pod: dict[str, Any]) -> None:
        """Undo setup (hostPort rules, veth, address); safe to repeat, even with the netns gone."""
        if sandbox.network_namespace_path is None:
            return
        with self._locked():
            if self._hostports.remove(sandbox.id):
                self._restore_nat()
        with netlink.iproute() as ipr:
            netlink.delete_link(ipr, self._veth(sandbox.id))
        self._ipam.release(sandbox.id)

    # -- node level ------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make the node's part (sysctls, bridge, chains and jumps) once; setup calls it."""
        if self._prepared:
            return
        with self._locked():
            if not self._prepared:
                self._prepare_node()
                self._prepared = True

    def resync(self) -> None:
        """Repair the node's part: what someone removed is made again. Call it periodically."""
        with self._locked():
            self._prepare_node()
            self._prepared = True

    def pod_ip(self, sandbox_id: str) -> str | None:
        """The address held for a sandbox, as the state directory says."""
        address = self._ipam.lookup(sandbox_id)
        return str(address) if address is not None else None

    def release_orphans(self, live_sandbox_ids: Iterable[str]) -> list[str]:
        """Free addresses and hostPorts of sandboxes that are gone (a crash skipped teardown).

        NB: only while no setup is in flight, e.g. at kubelet start before the Pod workers."""
        live = set(live_sandbox_ids)
        with self._locked():
            stale = [r.sandbox_id for r in self._hostports.all() if r.sandbox_id not in live]
            for sandbox_id in stale:
                self._hostports.remove(sandbox_id)
            if stale:
                self._restore_nat()
        with netlink.iproute() as ipr:
            for sandbox_id in stale:
                netlink.delete_link(ipr, self._veth(sandbox_id))
        return [str(a) for a in self._ipam.release_orphans(live)]

    def _prepare_node(self) -> None:
        netlink.write_sysctl(IP_FORWARD, "1")
        # Absent where br_netfilter is not loaded; Services between Pods of one node
        # then need the proxy's hairpin masquerade instead.
        netlink.write_sysctl(BRIDGE_NF_CALL_IPTABLES, "1")
        with netlink.iproute() as ipr:
            self._mtu = self.config.mtu or netlink.mtu_of(
                ipr, uplink=self.config.uplink, node_ip=self.config.node_ip
            )
            self._ensure_bridge(ipr)
        self._restore_all()

    def _ensure_bridge(self, ipr: Any) -> int:
        gateway = ipaddress.IPv4Interface(f"{self.config.gateway}/{self.config.network.prefixlen}")
        return netlink.ensure_bridge(
            ipr,
            name=self.config.bridge,
            gateway=gateway,
            mtu=self._mtu,
            mac=bridge_mac(self.config.gateway),
        )

    # -- Pod level -------------------------------------------------------------------------

    def _wire(
        self, netns_path: str, netns_fd: int, sandbox_id: str, address: ipaddress.IPv4Address
    ) -> None:
        iface = ipaddress.IPv4Interface(f"{address}/{self.config.network.prefixlen}")
        host_name = self._veth(sandbox_id)
        with netlink.iproute() as ipr, netlink.iproute(netns_path) as pod:
            bridge = netlink.bridge_index(ipr, self.config.bridge) or self._ensure_bridge(ipr)
            if netlink.veth_is_ready(
                ipr, pod, host_name=host_name, bridge_index=bridge, address=iface
            ):
                return
            # The sandbox's namespace is ours to wire: an eth0 left by someone
            # else would block creating the peer under that name.
            netlink.delete_link(ipr, host_name)
            netlink.delete_link(pod, netlink.POD_IFNAME)
            netlink.create_veth(
                ipr, host_name=host_name, netns_fd=netns_fd, mtu=self._mtu, bridge_index=bridge
            )
            netlink.configure_pod_side(pod, address=iface, gateway=self.config.gateway)

    def _veth(self, sandbox_id: str) -> str:
        return veth_name(self.config.prefix, sandbox_id)

    def _add_hostports(self, record: HostPortRecord) -> None:
        with self._locked():
            conflict = self._hostports.conflict(record)
            if conflict is not None:
                raise HostPortConflict(
                    f"failed to set up hostPorts of Pod {record.pod}: {conflict}"
                )
            self._hostports.put(record)
            self._restore_nat()

    # -- iptables --------------------------------------------------------------------------

    def _restore_nat(self) -> None:
        hostports = [h for r in self._hostports.all() for h in r.hostports()]
        self._iptables.restore(restore_text({"nat": render_nat(self.config, hostports)}))

    def _restore_all(self) -> None:
        """Chains and every missing jump, in one restore."""
        nat = self._iptables.save("nat")
        filt = self._iptables.save("filter")
        forward = (
            filt.policies.get("FORWARD") == "DROP" or self.config.chains.forward in filt.chains
        )
        hostports = [h for r in self._hostports.all() for h in r.hostports()]
        tables = {"nat": render_nat(self.config, hostports), "filter": []}
        if forward:
            tables["filter"] = render_forward(self.config)
        views = {"nat": nat, "filter": filt}
        missing = [j for j in jumps(self.config, forward=forward) if not views[j.table].has_jump(j)]
        for table, lines in jump_lines(missing).items():
            tables[table].extend(lines)
        self._iptables.restore(restore_text(tables))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with self._mutex:
            fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)
