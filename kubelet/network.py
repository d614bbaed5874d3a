"""The Pod network seam: what the kubelet asks of the code that wires a Pod to the network.

The kubelet calls `setup` right after the runtime made a Pod's sandbox (its network
namespace exists and is pinned at `netns_path`) and before any container starts, and
`teardown` after every container is stopped and before the sandbox is removed. Both are
blocking (netlink work) and run on the kubelet's thread pool. `setup` returns the Pod's
addresses, which the kubelet records on the sandbox (/etc/hosts) and reports as
status.podIP/podIPs; a failed setup raises NetworkError and the kubelet retries the Pod's
sandbox later (the Pod stays Pending with an Event). `teardown` must be idempotent: it may
be called for a sandbox whose setup failed or that was already torn down (a kubelet that
crashed half-way through a deletion does it again).

hostNetwork Pods never reach this seam: they use the node's namespace and the kubelet
reports the node's IP as their podIP, as Kubernetes does.

LoopbackNetwork is what a node has until the bridge network (issue 5) is plugged in: the
runtime brings up loopback in every sandbox and nothing else, so a Pod reaches itself and
nothing outside. It reports no Pod IP: status.podIP stays empty rather than showing an
address nobody can reach the Pod at (the node's IP would be a lie, and Endpoints built from
it would send Service traffic to the node). Users see an empty IP column in `kctl get pods
-o wide`; probes still work because they run inside the Pod's network namespace.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol


class NetworkError(Exception):
    """Pod network setup failed; the message names the Pod and the cause."""


@dataclasses.dataclass(frozen=True)
class PortMapping:
    """A hostPort: traffic to host_ip:host_port on the node goes to the Pod's container_port."""

    host_port: int
    container_port: int
    protocol: str = "TCP"
    host_ip: str = ""


@dataclasses.dataclass(frozen=True)
class PodNetworkRequest:
    namespace: str
    name: str
    uid: str
    sandbox_id: str
    netns_path: str
    pod_cidrs: tuple[str, ...]  # the node's spec.podCIDRs, empty until IPAM assigns them
    port_mappings: tuple[PortMapping, ...] = ()


@dataclasses.dataclass(frozen=True)
class PodNetworkResult:
    ips: tuple[str, ...]  # the Pod's addresses, IPv4 first; empty: loopback only


@dataclasses.dataclass(frozen=True)
class NetworkStatus:
    ready: bool
    message: str = ""


class PodNetwork(Protocol):
    def setup(self, request: PodNetworkRequest) -> PodNetworkResult: ...

    def teardown(self, request: PodNetworkRequest) -> None: ...

    def status(self) -> NetworkStatus:
        """Whether Pods can be wired now (the Node's Ready condition message says why not)."""


class LoopbackNetwork:
    """Loopback only: the runtime already brought `lo` up in the sandbox."""

    def setup(self, request: PodNetworkRequest) -> PodNetworkResult:
        del request
        return PodNetworkResult(ips=())

    def teardown(self, request: PodNetworkRequest) -> None:
        del request

    def status(self) -> NetworkStatus:
        return NetworkStatus(ready=True, message="loopback only: no Pod network is configured")
