"""NodeResourcesBalancedAllocation: prefer nodes whose cpu and memory use stay even.

With f = requested / allocatable per resource (this Pod included, capped at
1), the score is (1 - standard deviation of the fractions) * 100; for two
resources the deviation is |f_cpu - f_memory| / 2. This keeps a node from
filling up on one resource while the other lies idle.
"""

from __future__ import annotations

from scheduler.framework import MAX_NODE_SCORE, CycleState, NodeInfo
from scheduler.podinfo import PodInfo

NAME = "NodeResourcesBalancedAllocation"


def _fraction(requested: int, allocatable: int) -> float:
    if allocatable <= 0:
        return 1.0
    return min(requested / allocatable, 1.0)


class BalancedAllocation:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def __init__(self, *, weight: int = 1) -> None:
        self.weight = weight

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int:
        r = pod.requests
        cpu = _fraction(node_info.req_cpu + r.cpu, node_info.alloc_cpu)
        memory = _fraction(node_info.req_memory + r.memory, node_info.alloc_memory)
        return int((1.0 - abs(cpu - memory) / 2) * MAX_NODE_SCORE)
