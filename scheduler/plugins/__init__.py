"""The scheduler's plugins, one module each, registered in one list.

A new plugin is a new module here plus one line in PLUGINS. Filters run in
list order and a node's evaluation stops at its first rejection, so the
cheap and decisive filters come first; Kubernetes reports the first failing
filter per node too, which is what the unschedulable message counts.
"""

from __future__ import annotations

from scheduler.plugins.balancedallocation import BalancedAllocation
from scheduler.plugins.leastallocated import LeastAllocated
from scheduler.plugins.nodeaffinity import NodeAffinity
from scheduler.plugins.nodename import NodeName
from scheduler.plugins.nodeports import NodePorts
from scheduler.plugins.nodeready import NodeReady
from scheduler.plugins.noderesourcesfit import NodeResourcesFit
from scheduler.plugins.nodeunschedulable import NodeUnschedulable
from scheduler.plugins.ownerspread import OwnerSpread
from scheduler.plugins.tainttoleration import TaintToleration

PLUGINS: tuple[type, ...] = (
    NodeReady,
    NodeUnschedulable,
    NodeName,
    TaintToleration,
    NodeAffinity,
    NodePorts,
    NodeResourcesFit,
    LeastAllocated,
    BalancedAllocation,
    OwnerSpread,
)


def default_plugins() -> list[object]:
    """One instance of every registered plugin, with its default weight."""
    return [plugin() for plugin in PLUGINS]
