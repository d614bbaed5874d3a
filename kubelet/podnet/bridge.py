"""The bridge network plugin: every Pod of the node on one bridge, with an address of its range.

BridgeNetwork is the kubelet's PodNetwork (kubelet/network.py). It runs in the
node's network namespace, where the kubelet runs.

Node level, made once and repaired by resync() (which status() runs every
resync_period): IPv4 forwarding on, bridged traffic through iptables
(br_netfilter, so Service DNAT between two Pods of one bridge is undone on the
reply), the bridge `<prefix>0` holding the range's first address as the Pods'
gateway, with a fixed MAC derived from that address (a bridge otherwise takes
its lowest port's MAC, which changes as Pods come and go and leaves stale ARP
entries in every Pod), and the iptables chains of kubelet.podnet.iptables.

The node's range is its spec.podCIDR, assigned by the node IPAM controller
after the Node registers, so it may be unknown at start: it is taken from the
config, else the pod_cidrs callable handed in (the kubelet's view of its
Node), else the first request carrying it, else the state directory, where the
range is written once known. A state directory holding another range is
refused rather than mixed: its addresses would be outside the bridge's subnet.

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

Methods are blocking and thread-safe (the kubelet runs them on its pool).
Changes to rules and records are serialized by a lock file in the state
directory, so two processes on one state directory (a kubelet and its
restarted successor overlapping) never interleave them.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from kubelet.network import NetworkStatus, PodNetworkRequest, PodNetworkResult
from kubelet.podnet import netlink
from kubelet.podnet.config import (
    PodNetConfig,
    PodNetworkError,
    RetryableError,
    check_pod_cidr,
    veth_name,
)
from kubelet.podnet.conntrack import forget_udp_flows
from kubelet.podnet.hostports import (
    HostPortConflict,
    HostPortRecord,
    HostPortStore,
    port_requests,
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
from machinery.clock import Clock, RealClock

IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"
BRIDGE_NF_CALL_IPTABLES = "/proc/sys/net/bridge/bridge-nf-call-iptables"


def bridge_mac(gateway: ipaddress.IPv4Address) -> str:
    """A locally administered unicast MAC holding the gateway address, stable per node."""
    return "0a:58:" + ":".join(f"{b:02x}" for b in gateway.packed)


class NoPodCidr(RetryableError):
    """The node has no spec.podCIDR yet: the node IPAM controller assigns one shortly."""


class BridgeNetwork:
    """The Pod network of one node; runs in the node's network namespace."""

    def __init__(
        self,
        config: PodNetConfig,
        *,
        pod_cidrs: Callable[[], Sequence[str]] | None = None,
        iptables: IptablesRunner | None = None,
        clock: Clock | None = None,
        resync_period: float = 60.0,
    ) -> None:
        self.base = config
        self._pod_cidrs = pod_cidrs
        self._iptables = iptables or IptablesRunner(config.iptables)
        self._clock = clock or RealClock()
        self._resync_period = resync_period
        config.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._hostports = HostPortStore(config.state_dir / "hostports")
        self._lock_path = config.state_dir / "lock"
        self._cidr_path = config.state_dir / "pod_cidr"
        self._mutex = threading.RLock()
        self.config: PodNetConfig | None = None  # base with the node's podCIDR, once known
        self._ipam: IpAllocator | None = None
        self._prepared_at: float | None = None
        self._mtu = 0

    # -- the seam the kubelet calls --------------------------------------------------------

    def setup(self, request: PodNetworkRequest) -> PodNetworkResult:
        """Wire the sandbox into the node's Pod network; the Pod's address."""
        pod = f"{request.namespace}/{request.name}"
        if not request.netns_path:
            raise PodNetworkError(f"failed to set up the network of Pod {pod}: no netns path")
        # Refuse a bad spec or a missing namespace before taking an address.
        ports = port_requests(request.port_mappings, pod=pod)
        fd = netlink.open_netns_fd(request.netns_path)
        try:
            config, ipam = self._prepare(request.pod_cidrs)
            address = ipam.allocate(Owner(request.sandbox_id, request.uid))
            self._wire(config, request.netns_path, fd, request.sandbox_id, address)
        except NetlinkError as err:
            raise netlink.failed(f"wire Pod {pod} into the bridge", err) from None
        finally:
            os.close(fd)
        if ports:
            self._add_hostports(
                config, HostPortRecord(request.sandbox_id, pod, str(address), tuple(ports))
            )
        return PodNetworkResult(ips=(str(address),))

    def teardown(self, request: PodNetworkRequest) -> None:
        """Undo setup (hostPort rules, veth, address); safe to repeat, even with the netns gone."""
        # The range the sandbox was set up in: this process's, or the state directory's.
        try:
            config, ipam = self._resolve(())
        except PodNetworkError:
            config, ipam = None, None  # no usable range was known, so no address was given
        with self._locked():
            record = self._hostports.remove(request.sandbox_id)
            if record is not None and config is not None:
                self._restore_nat(config)
                forget_udp_flows(record.udp_host_ports())
        try:
            with netlink.iproute() as ipr:
                netlink.delete_link(ipr, self._veth(request.sandbox_id))
        except NetlinkError as err:
            raise netlink.failed(f"delete the veth of sandbox {request.sandbox_id}", err) from None
        if ipam is not None:
            ipam.release(request.sandbox_id)

    def status(self) -> NetworkStatus:
        """Ready once the node's range is known and its bridge, rules and sysctls are in place;
        every resync_period this also repairs them."""
        try:
            config, _ = self._resolve(())
        except NoPodCidr as err:
            if self._pod_cidrs is None:
                # Nothing tells us the range before the first Pod; saying "not ready"
                # here would keep Pods away for good.
                return NetworkStatus(True, "waiting for the node's podCIDR from the first Pod")
            return NetworkStatus(False, str(err))
        except PodNetworkError as err:
            return NetworkStatus(False, str(err))
        try:
            if self._due():
                self.resync()
            else:
                self._prepare(())
        except PodNetworkError as err:
            return NetworkStatus(False, str(err))
        return NetworkStatus(True, f"bridge {config.bridge} on {config.pod_cidr}")

    # -- node level ------------------------------------------------------------------------

    def prepare(self, pod_cidrs: Sequence[str] = ()) -> PodNetConfig:
        """Make the node's part once (setup calls it); the config with the node's range."""
        return self._prepare(pod_cidrs)[0]

    def resync(self) -> None:
        """Repair the node's part: what someone removed is made again."""
        config, _ = self._resolve(())
        with self._locked():
            self._prepare_node(config)
            self._prepared_at = self._clock.monotonic()

    def pod_ip(self, sandbox_id: str) -> str | None:
        """The address held for a sandbox, as the state directory says."""
        try:
            _, ipam = self._resolve(())
        except NoPodCidr:
            return None
        address = ipam.lookup(sandbox_id)
        return str(address) if address is not None else None

    def release_orphans(self, live_sandbox_ids: Iterable[str]) -> list[str]:
        """Free addresses and hostPorts of sandboxes that are gone (a crash skipped teardown).

        NB: only while no setup is in flight, e.g. at kubelet start before the Pod workers."""
        live = set(live_sandbox_ids)
        with self._locked():
            stale = [r.sandbox_id for r in self._hostports.all() if r.sandbox_id not in live]
            for sandbox_id in stale:
                self._hostports.remove(sandbox_id)
            if stale and self.config is not None:
                self._restore_nat(self.config)
        with netlink.iproute() as ipr:
            for sandbox_id in stale:
                netlink.delete_link(ipr, self._veth(sandbox_id))
        try:
            _, ipam = self._resolve(())
        except NoPodCidr:
            return []
        return [str(a) for a in ipam.release_orphans(live)]

    def _prepare(self, pod_cidrs: Sequence[str]) -> tuple[PodNetConfig, IpAllocator]:
        config, ipam = self._resolve(pod_cidrs)
        if self._prepared_at is None:
            with self._locked():
                if self._prepared_at is None:
                    self._prepare_node(config)
                    self._prepared_at = self._clock.monotonic()
        return config, ipam

    def _due(self) -> bool:
        at = self._prepared_at
        return at is None or self._clock.monotonic() - at >= self._resync_period

    def _resolve(self, offered: Sequence[str]) -> tuple[PodNetConfig, IpAllocator]:
        """The config with the node's range, and its allocator; see the module docstring."""
        with self._mutex:
            wanted = _first_ipv4(offered)
            if self.config is not None and self._ipam is not None:
                if wanted and wanted != self.config.pod_cidr:
                    raise PodNetworkError(
                        f"the node's podCIDR changed from {self.config.pod_cidr} to {wanted}: "
                        "clean up its Pod network (and its Pods) to move to the new range"
                    )
                return self.config, self._ipam
            stored = self._stored_cidr()
            cidr = wanted or self._offered_by_node() or self.base.pod_cidr or stored
            if not cidr:
                raise NoPodCidr("this node has no spec.podCIDR yet")
            check_pod_cidr(cidr, self.base.cluster_cidr)
            if stored and stored != cidr:
                raise PodNetworkError(
                    f"state directory {self.base.state_dir} holds Pods of podCIDR {stored}, "
                    f"but the node's is {cidr}: clean up its Pod network first"
                )
            if not stored:
                self._cidr_path.write_text(cidr + "\n")
            self.config = self.base.with_pod_cidr(cidr)
            self._ipam = IpAllocator(self.config.network, self.base.state_dir / "ips")
            return self.config, self._ipam

    def _offered_by_node(self) -> str:
        return _first_ipv4(self._pod_cidrs()) if self._pod_cidrs is not None else ""

    def _stored_cidr(self) -> str:
        try:
            return self._cidr_path.read_text().strip()
        except FileNotFoundError:
            return ""

    def _prepare_node(self, config: PodNetConfig) -> None:
        netlink.write_sysctl(IP_FORWARD, "1")
        # Absent where br_netfilter is not loaded; Services between Pods of one node
        # then need the proxy's hairpin masquerade instead.
        netlink.write_sysctl(BRIDGE_NF_CALL_IPTABLES, "1")
        try:
            with netlink.iproute() as ipr:
                self._mtu = config.mtu or netlink.mtu_of(
                    ipr, uplink=config.uplink, node_ip=config.node_ip
                )
                self._ensure_bridge(config, ipr)
        except NetlinkError as err:
            raise netlink.failed(f"set up bridge {config.bridge}", err) from None
        self._restore_all(config)

    def _ensure_bridge(self, config: PodNetConfig, ipr: Any) -> int:
        gateway = ipaddress.IPv4Interface(f"{config.gateway}/{config.network.prefixlen}")
        return netlink.ensure_bridge(
            ipr, name=config.bridge, gateway=gateway, mtu=self._mtu, mac=bridge_mac(config.gateway)
        )

    # -- Pod level -------------------------------------------------------------------------

    def _wire(
        self,
        config: PodNetConfig,
        netns_path: str,
        netns_fd: int,
        sandbox_id: str,
        address: ipaddress.IPv4Address,
    ) -> None:
        iface = ipaddress.IPv4Interface(f"{address}/{config.network.prefixlen}")
        host_name = self._veth(sandbox_id)
        with netlink.iproute() as ipr, netlink.iproute(netns_path) as pod:
            bridge = netlink.bridge_index(ipr, config.bridge) or self._ensure_bridge(config, ipr)
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
            netlink.configure_pod_side(pod, address=iface, gateway=config.gateway)

    def _veth(self, sandbox_id: str) -> str:
        return veth_name(self.base.prefix, sandbox_id)

    def _add_hostports(self, config: PodNetConfig, record: HostPortRecord) -> None:
        with self._locked():
            conflict = self._hostports.conflict(record)
            if conflict is not None:
                raise HostPortConflict(
                    f"failed to set up hostPorts of Pod {record.pod}: {conflict}"
                )
            self._hostports.put(record)
            self._restore_nat(config)
            forget_udp_flows(record.udp_host_ports())

    # -- iptables --------------------------------------------------------------------------

    def _restore_nat(self, config: PodNetConfig) -> None:
        hostports = [h for r in self._hostports.all() for h in r.hostports()]
        self._iptables.restore(restore_text({"nat": render_nat(config, hostports)}))

    def _restore_all(self, config: PodNetConfig) -> None:
        """Chains and every missing jump, in one restore."""
        nat = self._iptables.save("nat")
        filt = self._iptables.save("filter")
        forward = filt.policies.get("FORWARD") == "DROP" or config.chains.forward in filt.chains
        hostports = [h for r in self._hostports.all() for h in r.hostports()]
        tables = {"nat": render_nat(config, hostports), "filter": []}
        if forward:
            tables["filter"] = render_forward(config)
        views = {"nat": nat, "filter": filt}
        missing = [j for j in jumps(config, forward=forward) if not views[j.table].has_jump(j)]
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


def _first_ipv4(cidrs: Sequence[str]) -> str:
    return next((c for c in cidrs if c and ":" not in c), "")
