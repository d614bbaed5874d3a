"""A Pod's resolv.conf and /etc/hosts entries, from its dnsPolicy, dnsConfig and hostAliases.

As Kubernetes defines it:
- ClusterFirst: the cluster DNS servers (--cluster-dns), search `<ns>.svc.<domain>
  svc.<domain> <domain>` then the node's own search domains, `options ndots:5`. Without
  --cluster-dns configured, or for a hostNetwork Pod, it falls back to Default.
- ClusterFirstWithHostNet: ClusterFirst, for hostNetwork Pods too.
- Default: the node's resolv.conf (servers, search, options).
- None: only what dnsConfig says.
dnsConfig is merged on top of any policy: its nameservers are added (at most 3 kept), its
searches added (duplicates dropped, at most 32), its options override by name.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from kubelet.runtime.interface import DnsConfig, HostAlias

MAX_NAMESERVERS = 3
MAX_SEARCHES = 32


@dataclasses.dataclass(frozen=True)
class HostResolv:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


def parse_resolv_conf(text: str) -> HostResolv:
    servers: list[str] = []
    searches: list[str] = []
    options: list[str] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        fields = line.split()
        if not fields:
            continue
        if fields[0] == "nameserver" and len(fields) > 1:
            servers.append(fields[1])
        elif fields[0] in ("search", "domain"):
            searches = fields[1:]  # the last search/domain line wins, as in resolv.conf(5)
        elif fields[0] == "options":
            options.extend(fields[1:])
    return HostResolv(tuple(servers), tuple(searches), tuple(options))


def read_host_resolv(path: Path) -> HostResolv:
    try:
        return parse_resolv_conf(path.read_text())
    except FileNotFoundError:
        return HostResolv()


def pod_dns(
    pod: dict[str, Any],
    *,
    cluster_dns: tuple[str, ...],
    cluster_domain: str,
    host: HostResolv,
) -> DnsConfig:
    spec = pod.get("spec", {})
    namespace = pod.get("metadata", {}).get("namespace", "default")
    policy = spec.get("dnsPolicy") or "ClusterFirst"
    host_network = bool(spec.get("hostNetwork"))
    if policy == "ClusterFirst" and host_network:
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet") and not cluster_dns:
        policy = "Default"
    if policy in ("ClusterFirst", "ClusterFirstWithHostNet"):
        domain = cluster_domain.strip(".")
        searches = (f"{namespace}.svc.{domain}", f"svc.{domain}", domain, *host.searches)
        base = DnsConfig(tuple(cluster_dns), searches, ("ndots:5",))
    elif policy == "Default":
        base = DnsConfig(host.servers, host.searches, host.options)
    else:  # None
        base = DnsConfig()
    return _merge(base, spec.get("dnsConfig") or {})


def _merge(base: DnsConfig, extra: dict[str, Any]) -> DnsConfig:
    servers = list(base.servers)
    for server in extra.get("nameservers") or []:
        if server not in servers:
            servers.append(server)
    searches = list(base.searches)
    for search in extra.get("searches") or []:
        if search not in searches:
            searches.append(search)
    options: dict[str, str] = {}
    for option in base.options:
        name, _, value = option.partition(":")
        options[name] = option
    for option in extra.get("options") or []:
        name = option.get("name", "")
        if name:
            value = option.get("value")
            options[name] = f"{name}:{value}" if value not in (None, "") else name
    return DnsConfig(
        tuple(servers[:MAX_NAMESERVERS]), tuple(searches[:MAX_SEARCHES]), tuple(options.values())
    )


def host_aliases(pod: dict[str, Any]) -> tuple[HostAlias, ...]:
    return tuple(
        HostAlias(alias.get("ip", ""), tuple(alias.get("hostnames") or ()))
        for alias in pod.get("spec", {}).get("hostAliases") or []
        if alias.get("ip")
    )
