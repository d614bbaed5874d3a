"""From watch events to the cache and the queue.

The scheduler's informers call these for every Pod and Node event. Bound
Pods (spec.nodeName set) go to the cache, where they confirm an assumption
or count on their node; pending Pods meant for this scheduler go to the
queue. Changes that may free room or widen the choice (a node added, a node
whose allocatable, labels, taints, readiness or cordon changed, a bound Pod
deleted or finished) move the unschedulable Pods they may help back into
the queue.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scheduler.cache import Cache
from scheduler.framework import (
    ASSIGNED_POD,
    ASSIGNED_POD_DELETE,
    NODE,
    NODE_ADD,
    Action,
    ClusterEvent,
)
from scheduler.podinfo import TERMINAL_PHASES, PodInfo, PodUID
from scheduler.queue import SchedulingQueue

DEFAULT_SCHEDULER_NAME = "default-scheduler"


class EventHandlers:
    def __init__(
        self,
        *,
        cache: Cache,
        queue: SchedulingQueue,
        scheduler_name: str = DEFAULT_SCHEDULER_NAME,
    ) -> None:
        self._cache = cache
        self._queue = queue
        self._scheduler_name = scheduler_name

    # Pods -------------------------------------------------------------------------------

    def on_pod_add(self, pod: Mapping[str, Any]) -> None:
        info = PodInfo.of(pod)
        if info.node_name:
            self._queue.delete(info.uid)
            self._cache.add_pod(info)
        elif self._pending_for_us(info) and not self._cache.is_assumed(info.uid):
            # (An assumed Pod seen again on a re-list is being bound by us already.)
            self._queue.add(info)

    def on_pod_update(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        if _node_name(new):
            self._bound_pod_updated(old, new)
            return
        info = PodInfo.of(new)
        if not self._pending_for_us(info):
            self._queue.delete(info.uid)
        elif not self._cache.is_assumed(info.uid):
            # An assumed Pod is being bound by us; its next event will show the node.
            self._queue.update(info)

    def on_pod_delete(self, pod: Mapping[str, Any]) -> None:
        uid = PodUID(_uid(pod))
        self._queue.delete(uid)
        if self._cache.node_of(uid) is not None:
            self._cache.remove_pod(uid)
            self._queue.move_all_to_active_or_backoff(ASSIGNED_POD_DELETE)

    def _bound_pod_updated(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        uid = PodUID(_uid(new))
        known = self._cache.node_of(uid) is not None and not self._cache.is_assumed(uid)
        if known and _same_for_scheduling(old, new):
            return  # a status change of a running Pod: nothing the scheduler counts moved
        info = PodInfo.of(new)
        self._queue.delete(uid)
        self._cache.update_pod(info)
        if info.terminal:
            self._queue.move_all_to_active_or_backoff(ASSIGNED_POD_DELETE)
        elif known:
            event = ClusterEvent(ASSIGNED_POD, Action.UPDATE, "AssignedPodUpdate")
            self._queue.move_all_to_active_or_backoff(event)

    def _pending_for_us(self, info: PodInfo) -> bool:
        name = info.scheduler_name or DEFAULT_SCHEDULER_NAME
        return name == self._scheduler_name and not info.terminal

    # Nodes ------------------------------------------------------------------------------

    def on_node_add(self, node: Mapping[str, Any]) -> None:
        self._cache.add_node(node)
        self._queue.move_all_to_active_or_backoff(NODE_ADD)

    def on_node_update(self, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
        self._cache.update_node(new)
        action = node_changes(old, new)
        if action:
            self._queue.move_all_to_active_or_backoff(ClusterEvent(NODE, action, "NodeUpdate"))

    def on_node_delete(self, node: Mapping[str, Any]) -> None:
        self._cache.remove_node((node.get("metadata") or {}).get("name") or "")


def node_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> Action:
    """Which scheduling-relevant parts of a Node changed (an empty Action if none)."""
    action = Action(0)
    if _status(old).get("allocatable") != _status(new).get("allocatable"):
        action |= Action.UPDATE_ALLOCATABLE
    if _meta(old).get("labels") != _meta(new).get("labels"):
        action |= Action.UPDATE_LABEL
    if _spec(old).get("taints") != _spec(new).get("taints"):
        action |= Action.UPDATE_TAINT
    if bool(_spec(old).get("unschedulable")) != bool(_spec(new).get("unschedulable")):
        action |= Action.UPDATE_UNSCHEDULABLE
    if _condition_statuses(old) != _condition_statuses(new):
        action |= Action.UPDATE_CONDITION
    return action


def _condition_statuses(node: Mapping[str, Any]) -> dict[str, str]:
    # Heartbeat times change every few seconds; only the statuses matter here.
    return {c.get("type"): c.get("status") for c in _status(node).get("conditions") or []}


def _same_for_scheduling(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return (
        _spec(old) == _spec(new)
        and _terminal(old) == _terminal(new)
        and _meta(old).get("ownerReferences") == _meta(new).get("ownerReferences")
    )


def _terminal(pod: Mapping[str, Any]) -> bool:
    return _status(pod).get("phase") in TERMINAL_PHASES


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("metadata") or {}


def _spec(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("spec") or {}


def _status(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return obj.get("status") or {}


def _node_name(pod: Mapping[str, Any]) -> str:
    return _spec(pod).get("nodeName") or ""


def _uid(pod: Mapping[str, Any]) -> str:
    meta = _meta(pod)
    return meta.get("uid") or f"{meta.get('namespace') or 'default'}/{meta.get('name') or ''}"
