"""NodeResourcesLeastAllocated: prefer the node with the most cpu and memory left.

Per resource, score = (allocatable - requested) * 100 / allocatable, where
requested counts the Pods already there and this one by their non-zero
requests (a request-less container counts as 100m / 200Mi, so that such Pods
still spread); the node's score is the mean over cpu and memory. A node with
nothing allocatable, or already over, scores 0 for that resource.
"""

from __future__ import annotations

from scheduler.framework import MAX_NODE_SCORE, CycleState, NodeInfo
from scheduler.podinfo import PodInfo

NAME = "NodeResourcesLeastAllocated"


def _free_share(requested: int, allocatable: int) -> int:
    if allocatable <= 0 or requested > allocatable:
        return 0
    return (allocatable - requested) * MAX_NODE_SCORE // allocatable


class LeastAllocated:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def __init__(self, *, weight: int = 1) -> None:
        self.weight = weight

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int:
        cpu = _free_share(node_info.nonzero_cpu + pod.nonzero_cpu, node_info.alloc_cpu)
        memory = _free_share(node_info.nonzero_memory + pod.nonzero_memory, node_info.alloc_memory)
        return (cpu + memory) // 2
