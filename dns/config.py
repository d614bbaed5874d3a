"""The cluster DNS server's settings, validated once at start."""

from __future__ import annotations

import dataclasses
import ipaddress
import re

DEFAULT_DOMAIN = "cluster.local"
_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")

Upstream = tuple[str, int]  # (address, port)


def check_domain(domain: str, what: str = "cluster_domain") -> str:
    """The domain lower-cased and without a trailing dot; ValueError naming `what` if malformed."""
    name = domain.strip().rstrip(".").lower()
    if not name or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"{what}: not a DNS domain name: {domain!r}")
    return name


@dataclasses.dataclass(frozen=True)
class DnsConfig:
    """How the server listens, what it answers, and where it forwards the rest.

    ttl: seconds on every answer from the cluster zone, and the negative TTL
        of its SOA; short, because Services and endpoints come and go.
    upstreams: servers for names outside the cluster domain, tried in order;
        see upstreams_from_resolv_conf() for the host's. None configured means
        such names get SERVFAIL.
    forward_timeout: seconds to wait for one upstream before trying the next.
    """

    listen_host: str = "0.0.0.0"
    listen_port: int = 53
    cluster_domain: str = DEFAULT_DOMAIN
    ttl: int = 5
    upstreams: tuple[Upstream, ...] = ()
    forward_timeout: float = 2.0
    tcp_idle_timeout: float = 10.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cluster_domain", check_domain(self.cluster_domain))
        _check_address(self.listen_host, "listen_host")
        _check_port(self.listen_port, "listen_port", allow_zero=True)
        if not 0 <= self.ttl <= 2**31 - 1:
            raise ValueError(f"dns config ttl: must be 0-2147483647 seconds, got {self.ttl}")
        if self.forward_timeout <= 0:
            raise ValueError(
                f"dns config forward_timeout: must be positive, got {self.forward_timeout}"
            )
        for i, (host, port) in enumerate(self.upstreams):
            _check_address(host, f"upstreams[{i}]")
            _check_port(port, f"upstreams[{i}] port", allow_zero=False)
            if (host, port) == (self.listen_host, self.listen_port):
                raise ValueError(
                    f"dns config upstreams[{i}]: {host}:{port} is this server's own address; "
                    "forwarding to it would loop"
                )


def _check_address(host: str, what: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"dns config {what}: not an IP address: {host!r}") from None


def _check_port(port: int, what: str, *, allow_zero: bool) -> None:
    low = 0 if allow_zero else 1
    if isinstance(port, bool) or not isinstance(port, int) or not low <= port <= 65535:
        raise ValueError(f"dns config {what}: must be an integer {low}-65535, got {port!r}")
