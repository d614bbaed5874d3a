"""Removing everything the Pod network made in the calling thread's namespace.

What is ours is read from the kernel and the disk, not from a running plugin,
so cleanup works from a fresh process after a crash:

- iptables: every rule of any chain that jumps to a PODNET-<PREFIX>-* chain
  (one -D each), then those chains, flushed and deleted in one restore;
- links: the bridge `<prefix>0` and every veth named `<prefix><hex>` exactly
  as veth_name() makes them (so `<prefix>-br` or `<prefix>-0`, the one-host
  bring-up's names, never match); a veth's Pod end goes with it;
- routes: every route of the main table carrying the route protocol;
- the state directory, when given (held addresses, hostPort records).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

from kubelet.podnet import netlink
from kubelet.podnet.config import IFNAMSIZ, ROUTE_PROTOCOL, Chains, bridge_name, check_prefix
from kubelet.podnet.iptables import IptablesRunner, restore_text
from kubelet.podnet.routes import RouteSyncer


@dataclasses.dataclass(frozen=True)
class CleanupResult:
    jumps: int
    chains: int
    links: int
    routes: int
    state_removed: bool


def cleanup(
    prefix: str = "kubelite",
    *,
    state_dir: Path | None = None,
    iptables: str = "iptables",
    protocol: int = ROUTE_PROTOCOL,
) -> CleanupResult:
    """Delete the Pod network of `prefix`; what went. Raises PodNetworkError on a failure."""
    check_prefix(prefix)
    jumps, chains = _cleanup_iptables(Chains.for_prefix(prefix), IptablesRunner(iptables))
    links = _cleanup_links(prefix)
    routes = RouteSyncer(node_name="", protocol=protocol).remove_all()
    removed = False
    if state_dir is not None and Path(state_dir).exists():
        shutil.rmtree(state_dir)
        removed = True
    return CleanupResult(jumps, chains, links, routes, removed)


def _cleanup_iptables(chains: Chains, runner: IptablesRunner) -> tuple[int, int]:
    ours = set(chains.all())
    jumps = 0
    tables: dict[str, list[str]] = {}
    for table in ("nat", "filter"):
        view = runner.save(table)
        for rule in view.jump_rules(ours):
            runner.delete_rule(table, rule)
            jumps += 1
        present = sorted(ours & view.chains)
        tables[table] = [f":{c} - [0:0]" for c in present] + [f"-X {c}" for c in present]
    deleted = sum(len(lines) // 2 for lines in tables.values())
    if deleted:
        runner.restore(restore_text(tables))
    return jumps, deleted


def _cleanup_links(prefix: str) -> int:
    veth = re.compile(re.escape(prefix) + f"[0-9a-f]{{{IFNAMSIZ - len(prefix)}}}")
    bridge = bridge_name(prefix)
    removed = 0
    with netlink.iproute() as ipr:
        for msg in ipr.get_links():
            name = msg.get("ifname")
            kind = netlink.link_kind(msg)
            if (kind == "veth" and veth.fullmatch(name)) or (kind == "bridge" and name == bridge):
                removed += netlink.delete_link(ipr, name)
    return removed
