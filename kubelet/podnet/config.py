"""What one node's Pod network is made of, validated once, and the names derived from it.

Every name the package gives to a kernel object comes from `prefix` (default
"kubelite"), so two plugins in one namespace, or a test beside a real node,
never collide: the bridge `<prefix>0`, host-side veths `<prefix><7 hex>` (Linux
allows 15 characters, hence the 8-character limit on the prefix), iptables
chains `PODNET-<PREFIX>-*`. The chains deliberately do not start with
"KUBELITE-": the proxy owns every chain of that name and deletes the ones it
does not know.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import re
from pathlib import Path

from kubelet.network import NetworkError

# An unassigned routing protocol number (rt_protos lists 0-18 and a few above
# 42; 75 is free), so the route syncer can tell its routes from everyone else's.
ROUTE_PROTOCOL = 0x4B

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")
IFNAMSIZ = 15


class PodNetworkError(NetworkError):
    """A Pod network operation failed; the message names the object and the cause.

    `retryable` says whether the same call may succeed later unchanged (a busy
    kernel, an address range that frees up), as opposed to a bad config."""

    retryable = False


class ConfigError(PodNetworkError):
    pass


class RetryableError(PodNetworkError):
    retryable = True


@dataclasses.dataclass(frozen=True)
class Chains:
    masquerade: str  # nat POSTROUTING: Pod traffic leaving the cluster, hostPort hairpins
    hostports: str  # nat PREROUTING and OUTPUT: node address:hostPort -> Pod
    forward: str  # filter FORWARD, only when its policy is DROP: let bridge traffic through

    @classmethod
    def for_prefix(cls, prefix: str) -> Chains:
        base = f"PODNET-{prefix.upper()}"
        return cls(f"{base}-MASQ", f"{base}-HOSTPORTS", f"{base}-FORWARD")

    def all(self) -> tuple[str, str, str]:
        return (self.masquerade, self.hostports, self.forward)


def bridge_name(prefix: str) -> str:
    return f"{prefix}0"


def veth_name(prefix: str, sandbox_id: str) -> str:
    """The host end of a sandbox's veth: stable for a sandbox, so setup can find it again."""
    digest = hashlib.sha256(sandbox_id.encode()).hexdigest()
    return prefix + digest[: IFNAMSIZ - len(prefix)]


def check_prefix(prefix: str) -> str:
    if not _PREFIX.match(prefix):
        raise ConfigError(
            f"invalid Pod network prefix {prefix!r}: want 1-8 lower-case letters and digits, "
            "starting with a letter (it names links of at most 15 characters)"
        )
    return prefix


@dataclasses.dataclass(frozen=True)
class PodNetConfig:
    """One node's Pod network.

    cluster_cidr holds every node's Pods (traffic from a Pod to outside it is
    masqueraded). pod_cidr is the node's spec.podCIDR; empty means it is learnt
    later (from the kubelet's requests, see BridgeNetwork). uplink names the
    interface whose MTU the Pods get; empty means the one holding node_ip. mtu,
    when set, wins over the uplink's."""

    cluster_cidr: str
    node_ip: str
    state_dir: Path
    pod_cidr: str = ""
    prefix: str = "kubelite"
    uplink: str = ""
    mtu: int = 0
    iptables: str = "iptables"  # or iptables-legacy / iptables-nft

    def __post_init__(self) -> None:
        check_prefix(self.prefix)
        _network("cluster_cidr", self.cluster_cidr)
        if self.pod_cidr:
            check_pod_cidr(self.pod_cidr, self.cluster_cidr)
        try:
            ipaddress.IPv4Address(self.node_ip)
        except ValueError:
            raise ConfigError(f"invalid node_ip {self.node_ip!r}: want an IPv4 address") from None
        if self.mtu and not 576 <= self.mtu <= 65535:
            raise ConfigError(f"invalid mtu {self.mtu}: want 576-65535, or 0 for the uplink's")
        object.__setattr__(self, "state_dir", Path(self.state_dir))

    def with_pod_cidr(self, pod_cidr: str) -> PodNetConfig:
        return dataclasses.replace(self, pod_cidr=pod_cidr)

    @property
    def network(self) -> ipaddress.IPv4Network:
        if not self.pod_cidr:
            raise ConfigError("the node's podCIDR is not known yet")
        return ipaddress.IPv4Network(self.pod_cidr)

    @property
    def gateway(self) -> ipaddress.IPv4Address:
        """The bridge's address: the first of the node's range."""
        return self.network.network_address + 1

    @property
    def bridge(self) -> str:
        return bridge_name(self.prefix)

    @property
    def chains(self) -> Chains:
        return Chains.for_prefix(self.prefix)


def check_pod_cidr(pod_cidr: str, cluster_cidr: str) -> ipaddress.IPv4Network:
    pod = _network("pod_cidr", pod_cidr)
    if pod.prefixlen > 30:
        raise ConfigError(f"pod_cidr {pod_cidr} is too small: it needs a /30 or larger")
    if not pod.subnet_of(ipaddress.IPv4Network(cluster_cidr)):
        raise ConfigError(f"pod_cidr {pod_cidr} is not inside cluster_cidr {cluster_cidr}")
    return pod


def _network(field: str, value: str) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.IPv4Network(value, strict=False)
    except ValueError:
        raise ConfigError(
            f"invalid {field} {value!r}: want an IPv4 CIDR like 10.244.1.0/24"
        ) from None
    if str(net) != value:
        raise ConfigError(f"invalid {field} {value!r}: host bits set (did you mean {net}?)")
    return net
