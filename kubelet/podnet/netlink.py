"""Netlink through pyroute2: the node's bridge, a sandbox's veth, and reaching into namespaces.

A netlink socket belongs to the network namespace it was created in, whatever
thread later uses it. To talk to a Pod's namespace, a short-lived thread enters
it with setns(2) (network namespaces are per thread, so the rest of the process
stays where it is), opens the socket and exits; pyroute2 then drives that
socket from the caller's thread. That costs a thread start, about a millisecond,
where pyroute2's own NetNS forks a helper process.

Every IPRoute here is opened per operation and closed after it: pyroute2's
synchronous IPRoute is not safe to share between threads, and opening one is
cheap next to the kernel work it does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import threading
from collections.abc import Iterator
from typing import Any

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from kubelet.podnet.config import PodNetworkError, RetryableError

CLONE_NEWNET = 0x40000000
NETLINK_ROUTE = 0
AF_INET = socket.AF_INET
MAIN_TABLE = 254
POD_IFNAME = "eth0"
LOOPBACK_INDEX = 1  # the kernel gives lo index 1 in every namespace

_libc = ctypes.CDLL(None, use_errno=True)


class NamespaceGone(PodNetworkError):
    """The sandbox's network namespace file no longer exists or is not a namespace."""


@contextlib.contextmanager
def iproute(netns_path: str | None = None) -> Iterator[IPRoute]:
    """An IPRoute on the namespace at netns_path, or on the calling thread's own."""
    if netns_path is None:
        ipr = IPRoute()
    else:
        ipr = IPRoute(fileno=_netlink_socket_in(netns_path).detach())
    try:
        yield ipr
    finally:
        ipr.close()


def _netlink_socket_in(netns_path: str) -> socket.socket:
    try:
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NamespaceGone(f"failed to open network namespace {netns_path}: {err}") from None
    result: dict[str, Any] = {}

    def enter_and_open() -> None:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            result["error"] = f"setns: {os.strerror(code)}"
            return
        result["socket"] = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)

    try:
        thread = threading.Thread(target=enter_and_open, name="podnet-setns")
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in result:
        raise NamespaceGone(f"failed to enter network namespace {netns_path}: {result['error']}")
    return result["socket"]


def open_netns_fd(netns_path: str) -> int:
    try:
        return os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as err:
        raise NamespaceGone(f"failed to open network namespace {netns_path}: {err}") from None


# -- lookups -------------------------------------------------------------------------------


def get_link(ipr: IPRoute, name: str) -> Any | None:
    """The link's message, by one RTM_GETLINK (pyroute2's link_lookup dumps every link)."""
    try:
        return ipr.link("get", ifname=name)[0]
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return None
        raise failed(f"look up link {name}", err) from None


def link_index(ipr: IPRoute, name: str) -> int | None:
    msg = get_link(ipr, name)
    return msg["index"] if msg is not None else None


def link_attrs(msg: Any) -> dict[str, Any]:
    return {
        "index": msg["index"],
        "mtu": msg.get("mtu"),
        "master": msg.get("master"),
        "up": bool(msg["flags"] & 1),
        "kind": link_kind(msg),
    }


def link_kind(msg: Any) -> str | None:
    info = msg.get("IFLA_LINKINFO")
    return info.get("IFLA_INFO_KIND") if info is not None else None


def ipv4_addresses(ipr: IPRoute, index: int) -> set[ipaddress.IPv4Interface]:
    return {
        ipaddress.IPv4Interface(f"{msg.get('address')}/{msg['prefixlen']}")
        for msg in ipr.get_addr(family=AF_INET, index=index)
    }


def mtu_of(ipr: IPRoute, *, uplink: str, node_ip: str) -> int:
    """The MTU of the uplink: the named interface, else the one holding node_ip."""
    if uplink:
        index = link_index(ipr, uplink)
        if index is None:
            raise PodNetworkError(f"failed to read the uplink's MTU: no interface {uplink!r}")
    else:
        held = ipr.get_addr(family=AF_INET, address=node_ip)
        if not held:
            raise PodNetworkError(
                f"failed to find the uplink: no interface here holds node IP {node_ip} "
                "(name the uplink, or set the MTU)"
            )
        index = held[0]["index"]
    return int(ipr.link("get", index=index)[0].get("mtu"))


# -- the node's bridge -------------------------------------------------------------------


def ensure_bridge(
    ipr: IPRoute, *, name: str, gateway: ipaddress.IPv4Interface, mtu: int, mac: str
) -> int:
    """The bridge, created if missing, holding the gateway address, up; its index."""
    msg = get_link(ipr, name)
    if msg is None:
        try:
            ipr.link("add", ifname=name, kind="bridge", address=mac, mtu=mtu)
        except NetlinkError as err:
            if err.code != errno.EEXIST:  # a concurrent setup made it first
                raise failed(f"create bridge {name}", err) from None
        msg = get_link(ipr, name)
        if msg is None:
            raise RetryableError(f"failed to create bridge {name}: it vanished right after")
    attrs = link_attrs(msg)
    if attrs["kind"] != "bridge":
        raise PodNetworkError(f"failed to set up bridge {name}: a {attrs['kind']} has the name")
    index = attrs["index"]
    if gateway not in ipv4_addresses(ipr, index):
        _ignore_exists(
            lambda: ipr.addr(
                "add", index=index, address=str(gateway.ip), prefixlen=gateway.network.prefixlen
            ),
            f"add {gateway} to bridge {name}",
        )
    if not attrs["up"]:
        ipr.link("set", index=index, state="up")
    return index


def bridge_index(ipr: IPRoute, name: str) -> int | None:
    """The bridge's index if it is there and up (the per-Pod check; ensure_bridge repairs)."""
    msg = get_link(ipr, name)
    if msg is None or link_kind(msg) != "bridge" or not msg["flags"] & 1:
        return None
    return msg["index"]


# -- a sandbox's veth ----------------------------------------------------------------------


def veth_is_ready(
    ipr: IPRoute,
    pod: IPRoute,
    *,
    host_name: str,
    bridge_index: int,
    address: ipaddress.IPv4Interface,
) -> bool:
    """Whether an earlier setup finished: host end on the bridge and up, eth0 with the address."""
    host = get_link(ipr, host_name)
    if host is None or host.get("master") != bridge_index or not host["flags"] & 1:
        return False
    eth0 = get_link(pod, POD_IFNAME)
    if eth0 is None or not eth0["flags"] & 1:
        return False
    if address not in ipv4_addresses(pod, eth0["index"]):
        return False
    return any(r.get("gateway") for r in pod.get_default_routes(family=AF_INET))


def create_veth(
    ipr: IPRoute, *, host_name: str, netns_fd: int, mtu: int, bridge_index: int
) -> None:
    """A veth pair: host_name on the bridge, up, in hairpin mode; its peer made directly in the
    Pod as eth0. Neither name may exist yet."""
    try:
        ipr.link(
            "add",
            ifname=host_name,
            kind="veth",
            mtu=mtu,
            master=bridge_index,
            state="up",
            peer={"ifname": POD_IFNAME, "net_ns_fd": netns_fd, "mtu": mtu},
        )
    except NetlinkError as err:
        raise failed(f"create veth {host_name}", err) from None
    index = link_index(ipr, host_name)
    if index is None:
        raise RetryableError(f"failed to create veth {host_name}: it vanished right after")
    # Hairpin: with bridged traffic going through iptables, a Pod reaching itself
    # through a DNAT (a hostPort, a Service) is bridged back out the port it came in on.
    ipr.brport("set", index=index, mode=1)


def configure_pod_side(
    pod: IPRoute, *, address: ipaddress.IPv4Interface, gateway: ipaddress.IPv4Address
) -> None:
    """Inside the Pod: eth0 with its address and up, loopback up, default route via the bridge."""
    eth0 = link_index(pod, POD_IFNAME)
    if eth0 is None:
        raise RetryableError("failed to configure the Pod side: eth0 is missing")
    pod.link("set", index=LOOPBACK_INDEX, state="up")
    _ignore_exists(
        lambda: pod.addr(
            "add", index=eth0, address=str(address.ip), prefixlen=address.network.prefixlen
        ),
        f"add {address} to eth0",
    )
    pod.link("set", index=eth0, state="up")
    try:
        pod.route("replace", dst="0.0.0.0/0", gateway=str(gateway), oif=eth0)
    except NetlinkError as err:
        raise failed(f"add the default route via {gateway}", err) from None


def delete_link(ipr: IPRoute, name: str) -> bool:
    """Delete the link if it exists; whether it did."""
    return _delete_quietly(ipr, name)


def _delete_quietly(ipr: IPRoute, name: str) -> bool:
    try:
        ipr.link("del", ifname=name)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            return False
        raise failed(f"delete link {name}", err) from None
    return True


def _ignore_exists(call: Any, what: str) -> None:
    try:
        call()
    except NetlinkError as err:
        if err.code != errno.EEXIST:
            raise failed(what, err) from None


def failed(what: str, err: NetlinkError) -> PodNetworkError:
    cls = (
        RetryableError
        if err.code in (errno.EBUSY, errno.EAGAIN, errno.ENOBUFS)
        else PodNetworkError
    )
    return cls(f"failed to {what}: {os.strerror(err.code)}")


# -- sysctls -------------------------------------------------------------------------------


def write_sysctl(path: str, value: str) -> bool:
    """Set a /proc/sys value of the calling thread's namespace; False when the key is absent."""
    try:
        with open(path) as f:
            if f.read().strip() == value:
                return True
        with open(path, "w") as f:
            f.write(value)
    except FileNotFoundError:
        return False
    except OSError as err:
        raise PodNetworkError(f"failed to set {path} to {value}: {err}") from None
    return True
