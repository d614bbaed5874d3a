"""Routes between nodes: every other node's podCIDR via that node's InternalIP.

plan_routes() turns Node objects into the wanted routes, and says why a node
gets none (no podCIDR yet, no InternalIP, a range overlapping another node's).
RouteSyncer.apply() makes the main routing table of its namespace hold exactly
those: it adds or replaces what is missing or points elsewhere and deletes
what is no longer wanted (a node gone, a podCIDR changed).

Ownership is the routing protocol field: every route made here carries
ROUTE_PROTOCOL, and only routes with that protocol are ever replaced or
deleted. A destination someone else already routes (another protocol) is left
alone and reported. The nodes must reach one another's InternalIPs directly
(one L2 segment, as host-gw style routing needs); a gateway the kernel cannot
reach is reported per route and the rest still applies.

Routes go straight to netlink; with netns_path the syncer manages that
namespace's table while the process stays where it is.
"""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import os
from collections.abc import Iterable
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from kubelet.podnet import netlink
from kubelet.podnet.config import ROUTE_PROTOCOL

Net = ipaddress.IPv4Network
Addr = ipaddress.IPv4Address


@dataclasses.dataclass(frozen=True)
class PodRoute:
    destination: Net
    gateway: Addr
    node: str


@dataclasses.dataclass(frozen=True)
class Skipped:
    node: str
    reason: str


@dataclasses.dataclass(frozen=True)
class RoutePlan:
    routes: tuple[PodRoute, ...]
    skipped: tuple[Skipped, ...]


@dataclasses.dataclass(frozen=True)
class RouteSyncResult:
    added: tuple[PodRoute, ...] = ()  # added or re-pointed
    removed: tuple[Net, ...] = ()
    failed: tuple[Skipped, ...] = ()  # routes the kernel refused, or left to their owner
    skipped: tuple[Skipped, ...] = ()  # nodes that get no route, and why

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed)

    @property
    def ok(self) -> bool:
        return not self.failed


def pod_cidr(node: dict[str, Any]) -> str:
    spec = node.get("spec") or {}
    if spec.get("podCIDR"):
        return str(spec["podCIDR"])
    v4 = [c for c in spec.get("podCIDRs") or () if ":" not in c]
    return v4[0] if v4 else ""


def internal_ip(node: dict[str, Any]) -> str:
    for address in (node.get("status") or {}).get("addresses") or ():
        if address.get("type") == "InternalIP" and ":" not in address.get("address", ""):
            return str(address["address"])
    return ""


def plan_routes(nodes: Iterable[dict[str, Any]], *, node_name: str) -> RoutePlan:
    """The routes this node wants to the others; nodes sorted by name, first claim wins."""
    routes: list[PodRoute] = []
    skipped: list[Skipped] = []
    claimed: list[tuple[Net, str]] = []
    ordered = sorted(nodes, key=lambda n: (n.get("metadata") or {}).get("name", ""))
    # This node's own range first, so another node overlapping it is the one skipped.
    ordered.sort(key=lambda n: (n.get("metadata") or {}).get("name") != node_name)
    for node in ordered:
        name = (node.get("metadata") or {}).get("name", "")
        is_self = name == node_name
        destination, reason = _claim(node, claimed)
        if destination is not None:
            claimed.append((destination, name))
            if not is_self:
                gateway, reason = _gateway(node)
                if gateway is not None:
                    routes.append(PodRoute(destination, gateway, name))
        if reason and not is_self:
            skipped.append(Skipped(name, reason))
    return RoutePlan(tuple(routes), tuple(skipped))


def _claim(node: dict[str, Any], claimed: list[tuple[Net, str]]) -> tuple[Net | None, str]:
    cidr = pod_cidr(node)
    if not cidr:
        return None, "no spec.podCIDR yet"
    try:
        destination = ipaddress.IPv4Network(cidr)
    except ValueError:
        return None, f"invalid spec.podCIDR {cidr!r}"
    for other, owner in claimed:
        if destination.overlaps(other):
            return None, f"spec.podCIDR {destination} overlaps node {owner}'s {other}"
    return destination, ""


def _gateway(node: dict[str, Any]) -> tuple[Addr | None, str]:
    address = internal_ip(node)
    if not address:
        return None, "no InternalIP address"
    try:
        return ipaddress.IPv4Address(address), ""
    except ValueError:
        return None, f"invalid InternalIP {address!r}"


class RouteSyncer:
    """Keeps the main table's ROUTE_PROTOCOL routes equal to the planned ones. Thread-safe
    as long as one thread applies at a time (the controller guarantees it)."""

    def __init__(
        self, *, node_name: str, protocol: int = ROUTE_PROTOCOL, netns_path: str | None = None
    ) -> None:
        if not 0 < protocol < 256:
            raise ValueError(f"invalid routing protocol {protocol}: want 1-255")
        self.node_name = node_name
        self.protocol = protocol
        self.netns_path = netns_path

    def apply(self, nodes: Iterable[dict[str, Any]]) -> RouteSyncResult:
        """Make the table match the Node objects; what changed, and what could not."""
        plan = plan_routes(nodes, node_name=self.node_name)
        added: list[PodRoute] = []
        removed: list[Net] = []
        failed: list[Skipped] = []
        with netlink.iproute(self.netns_path) as ipr:
            ours, foreign = self._table(ipr)
            wanted = {r.destination: r for r in plan.routes}
            for destination, route in wanted.items():
                if destination in foreign:
                    failed.append(
                        Skipped(route.node, f"{destination} is already routed by another")
                    )
                elif ours.get(destination) != route.gateway:
                    error = self._replace(ipr, route)
                    (failed.append(Skipped(route.node, error)) if error else added.append(route))
            for destination in ours.keys() - wanted.keys():
                if self._delete(ipr, destination):
                    removed.append(destination)
        return RouteSyncResult(tuple(added), tuple(removed), tuple(failed), plan.skipped)

    def current(self) -> dict[Net, Addr]:
        """The routes this syncer owns now: destination -> gateway."""
        with netlink.iproute(self.netns_path) as ipr:
            return self._table(ipr)[0]

    def remove_all(self) -> int:
        """Delete every route with our protocol; how many went."""
        with netlink.iproute(self.netns_path) as ipr:
            return sum(self._delete(ipr, d) for d in self._table(ipr)[0])

    def _table(self, ipr: Any) -> tuple[dict[Net, Addr], set[Net]]:
        ours: dict[Net, Addr] = {}
        foreign: set[Net] = set()
        for msg in ipr.get_routes(family=netlink.AF_INET, table=netlink.MAIN_TABLE):
            destination = ipaddress.IPv4Network(f"{msg.get('dst') or '0.0.0.0'}/{msg['dst_len']}")
            if msg["proto"] == self.protocol and msg.get("gateway"):
                ours[destination] = ipaddress.IPv4Address(msg.get("gateway"))
            else:
                foreign.add(destination)
        return ours, foreign

    def _replace(self, ipr: Any, route: PodRoute) -> str:
        try:
            ipr.route(
                "replace",
                dst=str(route.destination),
                gateway=str(route.gateway),
                proto=self.protocol,
                table=netlink.MAIN_TABLE,
            )
        except NetlinkError as err:
            return (
                f"failed to route {route.destination} via {route.gateway}: {os.strerror(err.code)}"
            )
        return ""

    def _delete(self, ipr: Any, destination: Net) -> bool:
        try:
            ipr.route("del", dst=str(destination), proto=self.protocol, table=netlink.MAIN_TABLE)
        except NetlinkError as err:
            if err.code in (errno.ESRCH, errno.ENOENT):
                return False
            raise
        return True
