"""TaintToleration: taints keep Pods away unless the Pod tolerates them.

Filter: a NoSchedule or NoExecute taint the Pod does not tolerate rejects the
node; the message names the first such taint in Kubernetes' {key: value}
form. Score: the fewer PreferNoSchedule taints a node has that the Pod does
not tolerate, the better; a node with none scores 100.
"""

from __future__ import annotations

from collections.abc import Sequence

from scheduler.framework import (
    NODE,
    SUCCESS,
    Action,
    ClusterEvent,
    CycleState,
    NodeInfo,
    Status,
    normalize_max,
    unschedulable,
)
from scheduler.podinfo import PodInfo
from scheduler.taints import PREFER_NO_SCHEDULE, tolerated

NAME = "TaintToleration"
_SOFT_TOLERATIONS = NAME + "/prefer-no-schedule"


def reason(taint: object) -> str:
    return f"node(s) had untolerated taint {taint}"


class TaintToleration:
    name = NAME
    node_local = True  # answers depend on this node and the Pod only

    def __init__(self, *, weight: int = 3) -> None:
        self.weight = weight

    def filter(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> Status:
        for taint in node_info.hard_taints:
            if not tolerated(taint, pod.tolerations):
                return unschedulable(NAME, reason(taint), resolvable=False)
        return SUCCESS

    def pre_score(self, state: CycleState, pod: PodInfo, nodes: Sequence[NodeInfo]) -> Status:
        # Only tolerations that can match a PreferNoSchedule taint matter for the score.
        state.data[_SOFT_TOLERATIONS] = tuple(
            t for t in pod.tolerations if t.effect in ("", PREFER_NO_SCHEDULE)
        )
        return SUCCESS

    def score(self, state: CycleState, pod: PodInfo, node_info: NodeInfo) -> int:
        if not node_info.soft_taints:
            return 0
        tolerations = state.data[_SOFT_TOLERATIONS]
        return sum(1 for t in node_info.soft_taints if not tolerated(t, tolerations))

    def normalize(self, state: CycleState, pod: PodInfo, scores: list[int]) -> None:
        normalize_max(scores, reverse=True)

    def events(self) -> tuple[ClusterEvent, ...]:
        return (ClusterEvent(NODE, Action.ADD | Action.UPDATE_TAINT),)
