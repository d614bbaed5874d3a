"""The scheduler's cache: nodes, the Pods bound to them, and the Pods assumed there.

A decision is visible to the next one before the API server has even
received the binding: right after choosing a node the scheduler *assumes*
the Pod there (assume_pod), which adds its requests to that NodeInfo. Then:

  bind succeeded -> finish_binding(): the assumption now has a deadline (ttl);
  watch shows the Pod bound -> add_pod(): the assumption is confirmed, the
                               deadline dropped (if the API bound it elsewhere,
                               the Pod moves to that node);
  bind failed -> forget_pod(): the assumption is rolled back;
  deadline passed unconfirmed -> cleanup_expired() drops it, so that a lost
                               watch event cannot hold resources forever.

Pods whose node is not (yet, or any more) known are kept on a NodeInfo
without a node object, so that they are counted as soon as it appears; such
NodeInfos are never offered to the filters.

Snapshots are incremental. Every change to a NodeInfo stamps it with the next
value of a generation counter and moves its name to the end of an
insertion-ordered dict, so update_snapshot() walks only the nodes changed
since the snapshot's own generation (from the end, stopping at the first
older one) and copies just those into the snapshot's NodeInfo objects in
place. One scheduling cycle therefore costs O(changed nodes), not O(nodes):
typically the one node that took the previous Pod.

Not thread-safe: the scheduler drives it from one asyncio loop.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from machinery.clock import Clock
from scheduler.framework import NodeInfo, NodeName, scheduling_view
from scheduler.podinfo import PodInfo, PodUID

DEFAULT_ASSUMED_TTL = 30.0


class CacheError(Exception):
    """The cache was asked something inconsistent with what it holds (a caller bug)."""


@dataclasses.dataclass(slots=True)
class _PodState:
    pod: PodInfo
    node_name: NodeName
    assumed: bool
    binding_finished: bool = False
    deadline: float | None = None  # monotonic seconds; set once the binding finished


class Snapshot:
    """A consistent view of all nodes for one scheduling cycle.

    `node_list` holds only NodeInfos with a node object, in the order nodes
    were first seen; filters and scores read it and never mutate it.
    """

    def __init__(self) -> None:
        self.node_infos: dict[NodeName, NodeInfo] = {}
        self.node_list: list[NodeInfo] = []
        self.generation = 0
        self.node_set_generation = -1

    def list(self) -> Sequence[NodeInfo]:
        return self.node_list

    def get(self, name: str) -> NodeInfo | None:
        info = self.node_infos.get(NodeName(name))
        return info if info is not None and info.node is not None else None

    def __len__(self) -> int:
        return len(self.node_list)


class Cache:
    def __init__(self, *, clock: Clock, assumed_ttl: float = DEFAULT_ASSUMED_TTL) -> None:
        self._clock = clock
        self._ttl = assumed_ttl
        self._nodes: dict[NodeName, NodeInfo] = {}
        self._recent: dict[NodeName, None] = {}  # least recently changed first
        self._pods: dict[PodUID, _PodState] = {}
        self._generations = itertools.count(1)
        self._generation = 0
        self._node_set_generation = 0  # bumped when a node object appears or goes away

    # Nodes ----------------------------------------------------------------------------------

    def add_node(self, node: Mapping[str, Any]) -> NodeInfo:
        name = _node_name(node)
        info = self._nodes.get(name)
        if info is None:
            info = self._nodes[name] = NodeInfo(name=name)
        if info.node is None:
            self._node_set_generation += 1
        elif scheduling_view(info.node) == scheduling_view(node):
            # A heartbeat or another change no filter reads: keep the parse, the
            # snapshot copy and every remembered plugin answer.
            info.node = node
            return info
        info.set_node(node)
        self._touch(info)
        return info

    update_node = add_node

    def remove_node(self, name: str) -> None:
        info = self._nodes.get(NodeName(name))
        if info is None or info.node is None:
            return
        if info.pods:
            # Pods still point at the node; keep counting them until they go.
            self._node_set_generation += 1
            info.clear_node()
            self._touch(info)
        else:
            self._drop(info.name)

    def node_names(self) -> list[NodeName]:
        return [name for name, info in self._nodes.items() if info.node is not None]

    # Pods ------------------------------------------------------------------------------

    def assume_pod(self, pod: PodInfo, node_name: str) -> None:
        """Count `pod` on `node_name` now, before the binding reaches the API."""
        if pod.uid in self._pods:
            raise CacheError(f"pod {pod.key} is already in the scheduler cache; cannot assume it")
        assumed = pod.with_node(node_name)
        self._pods[pod.uid] = _PodState(assumed, NodeName(node_name), assumed=True)
        self._add_to_node(assumed)

    def finish_binding(self, uid: PodUID) -> None:
        """The bind request succeeded; wait at most the ttl for the watch to confirm it."""
        state = self._pods.get(uid)
        if state is not None and state.assumed:
            state.binding_finished = True
            state.deadline = self._clock.monotonic() + self._ttl

    def forget_pod(self, uid: PodUID) -> None:
        """Roll an assumption back (the bind failed)."""
        state = self._pods.get(uid)
        if state is None:
            return
        if not state.assumed:
            raise CacheError(f"pod {state.pod.key} is bound, not assumed; cannot forget it")
        self._remove(uid)

    def add_pod(self, pod: PodInfo) -> None:
        """A bound Pod seen on the watch: confirms an assumption or adds the Pod."""
        if not pod.node_name:
            raise CacheError(f"pod {pod.key} has no spec.nodeName; only bound Pods are cached")
        if pod.terminal:
            self.remove_pod(pod.uid)
            return
        if pod.uid in self._pods:
            self._remove(pod.uid)
        self._pods[pod.uid] = _PodState(pod, NodeName(pod.node_name), assumed=False)
        self._add_to_node(pod)

    update_pod = add_pod

    def remove_pod(self, uid: PodUID) -> None:
        if uid in self._pods:
            self._remove(uid)

    def is_assumed(self, uid: PodUID) -> bool:
        state = self._pods.get(uid)
        return state is not None and state.assumed

    def node_of(self, uid: PodUID) -> NodeName | None:
        state = self._pods.get(uid)
        return state.node_name if state is not None else None

    def cleanup_expired(self) -> list[PodInfo]:
        """Drop assumptions whose binding finished but never showed on the watch."""
        now = self._clock.monotonic()
        expired = [
            state.pod
            for state in self._pods.values()
            if state.assumed and state.deadline is not None and state.deadline <= now
        ]
        for pod in expired:
            self._remove(pod.uid)
        return expired

    def pod_count(self) -> int:
        return len(self._pods)

    def assumed_pods(self) -> Iterator[PodInfo]:
        return (s.pod for s in self._pods.values() if s.assumed)

    def node_info(self, name: str) -> NodeInfo | None:
        """The live NodeInfo, for inspection; the scheduling cycle reads a Snapshot."""
        return self._nodes.get(NodeName(name))

    # Snapshots -------------------------------------------------------------------------

    def update_snapshot(self, snapshot: Snapshot) -> Snapshot:
        """Bring `snapshot` up to date, copying only the NodeInfos changed since its last update."""
        for name in reversed(self._recent):
            info = self._nodes[name]
            if info.generation <= snapshot.generation:
                break
            existing = snapshot.node_infos.get(name)
            if existing is None:
                snapshot.node_infos[name] = info.clone()
            else:
                existing.copy_from(info)
        if snapshot.node_set_generation != self._node_set_generation:
            self._rebuild_node_list(snapshot)
        snapshot.generation = self._generation
        return snapshot

    def snapshot(self) -> Snapshot:
        return self.update_snapshot(Snapshot())

    def _rebuild_node_list(self, snapshot: Snapshot) -> None:
        for name in [n for n in snapshot.node_infos if n not in self._nodes]:
            del snapshot.node_infos[name]
        snapshot.node_list = [
            snapshot.node_infos[name] for name, info in self._nodes.items() if info.node is not None
        ]
        snapshot.node_set_generation = self._node_set_generation

    # Internals -------------------------------------------------------------------------

    def _touch(self, info: NodeInfo) -> None:
        self._generation = next(self._generations)
        info.generation = self._generation
        self._recent.pop(info.name, None)
        self._recent[info.name] = None

    def _add_to_node(self, pod: PodInfo) -> None:
        name = NodeName(pod.node_name)
        info = self._nodes.get(name)
        if info is None:
            info = self._nodes[name] = NodeInfo(name=name)
        info.add_pod(pod)
        self._touch(info)

    def _remove(self, uid: PodUID) -> None:
        state = self._pods.pop(uid)
        info = self._nodes.get(state.node_name)
        if info is None:
            return
        info.remove_pod(uid)
        if info.node is None and not info.pods:
            self._drop(info.name)
        else:
            self._touch(info)

    def _drop(self, name: NodeName) -> None:
        del self._nodes[name]
        self._recent.pop(name, None)
        # The snapshot notices through the node-set generation and drops its copy.
        self._generation = next(self._generations)
        self._node_set_generation += 1


def _node_name(node: Mapping[str, Any]) -> NodeName:
    name = (node.get("metadata") or {}).get("name")
    if not isinstance(name, str) or not name:
        raise CacheError(f"node has no metadata.name: {node!r:.200}")
    return NodeName(name)
