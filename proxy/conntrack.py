"""Forgetting UDP flows to endpoints that are gone.

NAT is decided on a flow's first packet: conntrack then rewrites every later
packet the same way. For TCP a dead endpoint ends the connection; a UDP flow
(a DNS client reusing its socket, say) would keep being sent to the removed
address until its conntrack entry times out, tens of seconds later. After
each sync the runner compares the UDP endpoints behind every ClusterIP and
NodePort with those of the sync before and deletes the entries DNATed to an
address that is no longer behind that port.

The first sync of a process has nothing to compare with and deletes nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterable, Sequence
from typing import Protocol

from proxy.model import Endpoints, Service


class ConntrackError(Exception):
    """The conntrack tool failed; the message carries its stderr."""


class Conntrack(Protocol):
    async def delete(self, filters: Sequence[str]) -> None:
        """Delete the entries matching the filters (none matching is not an error)."""


class ConntrackCommand:
    """The conntrack tool, optionally inside a named network namespace."""

    def __init__(self, *, netns: str | None = None) -> None:
        self._prefix = ["ip", "netns", "exec", netns] if netns else []

    async def delete(self, filters: Sequence[str]) -> None:
        argv = [*self._prefix, "conntrack", "-D", *filters]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise ConntrackError("failed to run conntrack: not installed") from None
        _, err = await proc.communicate()
        # Exit status 1 with "0 flow entries have been deleted" means none matched.
        if proc.returncode not in (0, 1):
            raise ConntrackError(
                f"failed to delete conntrack entries ({' '.join(filters)}): {err.decode().strip()}"
            )


@dataclasses.dataclass(frozen=True)
class UdpPort:
    """Where UDP clients send: a ClusterIP and port, and the NodePort if there is one."""

    cluster_ip: str
    port: int
    node_port: int | None


UdpBackends = dict[UdpPort, frozenset[str]]


def udp_backends(services: Iterable[Service], endpoints: Iterable[Endpoints]) -> UdpBackends:
    """The ready endpoint addresses behind every UDP Service port."""
    by_key = {ep.key: ep for ep in endpoints}
    out: UdpBackends = {}
    for svc in services:
        if svc.cluster_ip is None:
            continue
        eps = by_key.get(svc.key)
        for port in svc.ports:
            if port.protocol != "UDP":
                continue
            ready = eps.ready(port.name, "UDP") if eps else ()
            out[UdpPort(svc.cluster_ip, port.port, port.node_port)] = frozenset(
                ip for ip, _ in ready
            )
    return out


def stale_flow_filters(before: UdpBackends, after: UdpBackends) -> list[list[str]]:
    """conntrack -D filters for the flows DNATed to endpoints that left their port."""
    filters: list[list[str]] = []
    for port, old in sorted(before.items(), key=lambda item: (item[0].cluster_ip, item[0].port)):
        for ip in sorted(old - after.get(port, frozenset())):
            filters.append(
                [
                    "-p",
                    "udp",
                    "--orig-dst",
                    port.cluster_ip,
                    "--orig-port-dst",
                    str(port.port),
                    "--dst-nat",
                    ip,
                ]
            )
            if port.node_port:
                filters.append(
                    ["-p", "udp", "--orig-port-dst", str(port.node_port), "--dst-nat", ip]
                )
    return filters
