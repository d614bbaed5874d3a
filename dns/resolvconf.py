"""resolv.conf files: the one each Pod gets, and the host's, read for upstream servers.

A Pod's resolv.conf names the cluster DNS Service's ClusterIP and the usual
search path, so that a bare Service name (`wget http://httpd-app`) resolves in
the Pod's own namespace, `<svc>.<other-ns>` in another namespace, and any
name with fewer than five dots is tried against the search path first
(ndots:5, as Kubernetes does: names like web.default.svc must be found
through the search path).
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from dns.config import DEFAULT_DOMAIN, Upstream, check_domain

_NAMESPACE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def pod_resolv_conf(
    *,
    nameserver: str,
    namespace: str,
    cluster_domain: str = DEFAULT_DOMAIN,
    ndots: int = 5,
) -> str:
    """The resolv.conf text for a Pod in `namespace`; ValueError naming a bad argument."""
    try:
        ipaddress.ip_address(nameserver)
    except ValueError:
        raise ValueError(f"resolv.conf nameserver: not an IP address: {nameserver!r}") from None
    if not _NAMESPACE.match(namespace):
        raise ValueError(f"resolv.conf namespace: not a DNS label: {namespace!r}")
    if not 0 <= ndots <= 15:
        raise ValueError(f"resolv.conf ndots: must be 0-15, got {ndots}")
    domain = check_domain(cluster_domain)
    search = f"{namespace}.svc.{domain} svc.{domain} {domain}"
    return f"nameserver {nameserver}\nsearch {search}\noptions ndots:{ndots}\n"


def upstreams_from_resolv_conf(path: str | Path = "/etc/resolv.conf") -> tuple[Upstream, ...]:
    """The `nameserver` entries of a resolv.conf, as (address, 53), in file order.

    Raises ValueError naming the file and line for an entry that is not an IP
    address; an unreadable file raises OSError. A file with no nameserver
    lines gives an empty tuple (the server then answers SERVFAIL for names
    outside the cluster).
    """
    found: list[Upstream] = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        address = fields[1].split("%", 1)[0]  # fe80::1%eth0: the zone is not ours to use
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise ValueError(
                f"{path}:{number}: nameserver is not an IP address: {fields[1]!r}"
            ) from None
        if (address, 53) not in found:
            found.append((address, 53))
    return tuple(found)
