"""The synchronous half of a scheduling cycle, and what follows each outcome.

The scheduler's loop (wired in scheduler/main.py) does, per Pod:

    queued = await core.queue.pop()
    decision = core.schedule(queued)        # snapshot, decide, assume or requeue
    if decision.node_name:                  # bind through pods/<name>/binding
        ok = await api.bind(decision.binding())
        core.bound(decision) if ok else core.bind_failed(decision)
    else:                                   # write decision.condition(now) and an Event
        ...

schedule() never awaits, so nothing changes the cache between the snapshot
and the assumption, and the next decision already sees this one. Binding
happens afterwards, concurrently with the next cycles.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from typing import Any

from machinery.clock import Clock, rfc3339
from machinery.log import get_logger
from scheduler import plugins as plugin_registry
from scheduler.algorithm import INVALID_POD_PLUGIN, Algorithm, ScheduleResult
from scheduler.cache import DEFAULT_ASSUMED_TTL, Cache, Snapshot
from scheduler.framework import ASSIGNED_POD_DELETE, Framework, NodeName
from scheduler.podinfo import PodInfo
from scheduler.queue import QueuedPodInfo, SchedulingQueue

log = get_logger("scheduler")

SCHEDULED_REASON = "Scheduled"
FAILED_SCHEDULING_REASON = "FailedScheduling"


@dataclasses.dataclass(frozen=True)
class Decision:
    queued: QueuedPodInfo
    result: ScheduleResult
    skipped: bool = False  # the Pod was being deleted; nothing to do

    @property
    def pod(self) -> PodInfo:
        return self.queued.pod

    @property
    def node_name(self) -> NodeName | None:
        return self.result.node_name

    @property
    def message(self) -> str:
        """For the FailedScheduling Event and the PodScheduled condition."""
        if self.skipped:
            return f"skipped scheduling pod {self.pod.key}: it is being deleted"
        if self.result.fit_error is not None:
            return self.result.fit_error.message
        if self.result.error is not None:
            return f"scheduling failed: {self.result.error.plugin}: {self.result.error.message}"
        return scheduled_message(self.pod, self.node_name or "")

    def binding(self) -> dict[str, Any]:
        if self.node_name is None:
            raise ValueError(f"pod {self.pod.key} was not placed; there is nothing to bind")
        return binding_for(self.pod, self.node_name)

    def condition(self, now: float) -> dict[str, Any]:
        return unschedulable_condition(self.message, now=now)


class SchedulerCore:
    """Cache, queue and algorithm of one scheduler, and the steps of its cycle."""

    def __init__(self, *, cache: Cache, queue: SchedulingQueue, algorithm: Algorithm) -> None:
        self.cache = cache
        self.queue = queue
        self.algorithm = algorithm
        self.snapshot = Snapshot()

    @classmethod
    def build(
        cls,
        *,
        clock: Clock,
        rng: random.Random,
        plugins: Sequence[object] | None = None,
        percentage_of_nodes_to_score: int = 0,
        assumed_ttl: float = DEFAULT_ASSUMED_TTL,
    ) -> SchedulerCore:
        framework = Framework(plugin_registry.default_plugins() if plugins is None else plugins)
        interests = {**framework.events_by_plugin(), INVALID_POD_PLUGIN: ()}
        return cls(
            cache=Cache(clock=clock, assumed_ttl=assumed_ttl),
            queue=SchedulingQueue(clock=clock, plugin_events=interests),
            algorithm=Algorithm(
                framework, rng=rng, percentage_of_nodes_to_score=percentage_of_nodes_to_score
            ),
        )

    def schedule(self, queued: QueuedPodInfo) -> Decision:
        """Decide for one popped Pod; on success it is assumed, on failure requeued."""
        pod = queued.pod
        if (pod.obj.get("metadata") or {}).get("deletionTimestamp"):
            self.queue.done(pod.uid)
            return Decision(queued, ScheduleResult(None), skipped=True)

        self.cache.update_snapshot(self.snapshot)
        result = self.algorithm.schedule_one(pod, self.snapshot)
        decision = Decision(queued, result)
        if result.node_name is not None:
            self.cache.assume_pod(pod, result.node_name)
            log.debug("assumed pod", pod=pod.key, node=result.node_name)
            return decision

        plugins = result.fit_error.diagnosis.unschedulable_plugins if result.fit_error else None
        self.queue.add_unschedulable_if_not_present(
            queued, unschedulable_plugins=plugins or frozenset()
        )
        log.debug("pod unschedulable", pod=pod.key, reason=decision.message)
        return decision

    def bound(self, decision: Decision) -> None:
        """The binding was accepted by the API server."""
        self.cache.finish_binding(decision.pod.uid)
        self.queue.done(decision.pod.uid)

    def bind_failed(self, decision: Decision) -> None:
        """Roll the assumption back and retry the Pod after its back-off."""
        uid = decision.pod.uid
        if not self.cache.is_assumed(uid):
            # The watch already showed it bound (the request failed late) or it was deleted.
            self.queue.done(uid)
            return
        self.cache.forget_pod(uid)
        self.queue.add_unschedulable_if_not_present(decision.queued)
        # What this Pod held on the node is free again; Pods waiting for room may fit.
        self.queue.move_all_to_active_or_backoff(ASSIGNED_POD_DELETE)

    def expire_assumed(self) -> list[PodInfo]:
        """Drop assumptions the watch never confirmed; call about once a second."""
        expired = self.cache.cleanup_expired()
        for pod in expired:
            log.warning("assumed pod expired", pod=pod.key, node=pod.node_name)
        if expired:
            self.queue.move_all_to_active_or_backoff(ASSIGNED_POD_DELETE)
        return expired


def binding_for(pod: PodInfo, node_name: str) -> dict[str, Any]:
    """The body of a Pod's binding subresource, as Kubernetes' Binding object."""
    meta = pod.obj.get("metadata") or {}
    binding_meta = {"name": meta.get("name"), "namespace": meta.get("namespace") or "default"}
    if meta.get("uid"):
        binding_meta["uid"] = meta["uid"]
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": binding_meta,
        "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
    }


def unschedulable_condition(message: str, *, now: float) -> dict[str, Any]:
    """The PodScheduled=False condition that `kctl describe pod` shows."""
    return {
        "type": "PodScheduled",
        "status": "False",
        "reason": "Unschedulable",
        "message": message,
        "lastProbeTime": None,
        "lastTransitionTime": rfc3339(now),
    }


def scheduled_message(pod: PodInfo, node_name: str) -> str:
    return f"Successfully assigned {pod.key} to {node_name}"
