"""OwnerSpread: spread the Pods of one controller (ReplicaSet, ...) across nodes.

The raw score of a node is how many Pods with the same controller
ownerReference are already on it (assumed ones included, so a burst of
replicas spreads before the watch catches up); normalized in reverse, the
node with the most scores 0 and nodes with none score 100. Pods without a
controller skip this plugin.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.framework import SKIP, SUCCESS, CycleState, NodeInfo, Status, normalize_max
from scheduler.podinfo import PodInfo

NAME = "OwnerSpread"


class OwnerSpread:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def __init__(self, *, weight: int = 2) -> None:
        self.weight = weight

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]) -> Status:
        return SUCCESS if pod.owner else SKIP

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int:
        return node_info.owners.get(pod.owner, 0)

    def normalize(self, state: CycleState, pod: PodInfo, scores: list[int]) -> None:
        normalize_max(scores, reverse=True)
