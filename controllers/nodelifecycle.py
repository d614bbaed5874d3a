"""Node lifecycle: notice nodes that stopped answering, taint them, evict their Pods.

Health. Every node's kubelet renews a Lease named after the node in
kube-node-lease (and posts Ready with a heartbeat). The controller notes, on
its own clock, when it last saw either change: a node not heard from for the
grace period (40 s by default) gets Ready and its other conditions set to
Unknown ("Kubelet stopped posting node status."), its Pods marked not ready
(so Services drop them at once) and a NodeNotReady Event. Measuring on the
controller's clock rather than trusting renewTime makes clock skew between
nodes harmless and gives every node a full grace period after the controller
starts, as Kubernetes does.

Taints follow the Ready condition: Unknown gives `node.kubernetes.io/unreachable`,
False (the kubelet says it is not ready) gives `node.kubernetes.io/not-ready`,
each as NoExecute and NoSchedule; True removes both. A node that comes back
is untainted once its kubelet posts Ready=True again (the kubelet, not this
controller, recovers the conditions).

Eviction. On a node with NoExecute taints (these or any an operator added),
a Pod that does not tolerate one of them is deleted at once; one that does is
deleted once the shortest tolerationSeconds of the tolerations it uses has
passed since the earliest timeAdded of those taints; one whose tolerations
have no tolerationSeconds stays. As Kubernetes' admission does, a Pod
without its own toleration for not-ready or unreachable is treated as
tolerating them for the cluster default (300 s). Eviction writes a
DisruptionTarget condition, deletes the Pod gracefully and records a
TaintManagerEviction Event.

Decision on Pods that cannot finish: the API server keeps a bound Pod until
its kubelet confirms it stopped, which an unreachable node never does. So a
Pod still terminating on an unreachable node once its own grace period has
passed, and a Pod bound to a Node that no longer exists (after the grace
period, confirmed with a read from the API server), is deleted with grace 0.
The ReplicaSet does not wait for this (a terminating Pod is not active), but
the name, the IP and the listing are freed. The risk Kubernetes avoids by
waiting for an operator's out-of-service taint, two copies of a Pod while a
partitioned node still runs it, is accepted: kubelite has no StatefulSets.

Safety. New NoExecute taints are added at most `eviction_rate` nodes per
second (0.1, Kubernetes' default), so a flapping network cannot empty the
cluster in one go; and when every node is unhealthy at once, the controller
assumes the fault is its own view (a partitioned control plane) and removes
NoExecute taints instead of adding them, until some node is healthy again.

Timing runs on the injected Clock: a monitor pass every `monitor_period`
(5 s) finds nodes whose state should change, and eviction deadlines requeue
their node for the exact moment, so a FakeClock replays it all exactly.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from controllers import util
from controllers.base import QueueController
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339, rfc3339
from machinery.events import NORMAL, WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory

Obj = dict[str, Any]

NODE_LEASE_NAMESPACE = "kube-node-lease"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
NO_EXECUTE, NO_SCHEDULE = "NoExecute", "NoSchedule"
NODE_INDEX = "spec.nodeName"
# Conditions the kubelet owns; all turn Unknown when it goes silent.
KUBELET_CONDITIONS = ("Ready", "MemoryPressure", "DiskPressure", "PIDPressure")
STOPPED_POSTING = "Kubelet stopped posting node status."
NEVER_POSTED = "Kubelet never posted node status."
FOREVER = float("inf")


# -- taints and tolerations ----------------------------------------------------------------------


def tolerates(toleration: Obj, taint: Obj) -> bool:
    """Whether one toleration matches one taint (key, value, effect), as Kubernetes matches."""
    effect = toleration.get("effect") or ""
    if effect and effect != taint.get("effect"):
        return False
    operator = toleration.get("operator") or "Equal"
    key = toleration.get("key") or ""
    if not key:
        return operator == "Exists"  # an empty key with Exists tolerates everything
    if key != taint.get("key"):
        return False
    return operator == "Exists" or (toleration.get("value") or "") == (taint.get("value") or "")


def with_default_tolerations(pod: Obj, seconds: float) -> list[Obj]:
    """The Pod's tolerations plus the defaults for not-ready and unreachable it lacks."""
    tolerations = list((pod.get("spec") or {}).get("tolerations") or [])
    for key in (NOT_READY, UNREACHABLE):
        taint = {"key": key, "effect": NO_EXECUTE}
        if not any(tolerates(t, taint) for t in tolerations):
            tolerations.append(
                {
                    "key": key,
                    "operator": "Exists",
                    "effect": NO_EXECUTE,
                    "tolerationSeconds": seconds,
                }
            )
    return tolerations


def toleration_time(tolerations: list[Obj], taints: list[Obj]) -> float:
    """Seconds a Pod may stay on a node with these NoExecute taints: 0 now, FOREVER never.

    An untolerated taint means 0. Otherwise the shortest tolerationSeconds of
    the tolerations in use counts; those without it tolerate forever.
    """
    shortest = FOREVER
    for taint in taints:
        used = [t for t in tolerations if tolerates(t, taint)]
        if not used:
            return 0.0
        for t in used:
            if t.get("tolerationSeconds") is not None:
                shortest = min(shortest, max(0.0, float(t["tolerationSeconds"])))
    return shortest


def no_execute_taints(node: Obj) -> list[Obj]:
    return [
        t for t in (node.get("spec") or {}).get("taints") or [] if t.get("effect") == NO_EXECUTE
    ]


def ready_status(node: Obj) -> str:
    """True, False or Unknown; "" for a node whose kubelet has not posted Ready yet."""
    cond = meta.condition(node, "Ready")
    return cond.get("status", "Unknown") if cond else ""


def condition_taint_keys(status: str) -> set[str]:
    """The condition taint keys a node's Ready status calls for."""
    if status in ("True", ""):
        return set()  # a node still registering is judged after its grace period
    return {UNREACHABLE} if status == "Unknown" else {NOT_READY}


# -- the controller -------------------------------------------------------------------------------


@dataclasses.dataclass
class _Heard:
    """What the controller last heard from a node's kubelet, and when, on its own clock."""

    signature: tuple[str, str]
    at: float


class TokenBucket:
    """At most rate actions per second, with a burst of one, on the given clock."""

    def __init__(self, rate: float, clock: Clock) -> None:
        self.rate = rate
        self._clock = clock
        self._tokens = 1.0
        self._last = clock.monotonic()

    def take(self) -> float:
        """0 when an action may happen now (and counts it), else seconds until one may."""
        if self.rate <= 0:
            return 0.0
        now = self._clock.monotonic()
        self._tokens = min(1.0, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate


class NodeLifecycleController(QueueController):
    name = "nodelifecycle"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 2,
        grace_period: float = 40.0,
        default_toleration_seconds: float = 300.0,
        monitor_period: float = 5.0,
        eviction_rate: float = 0.1,
        protect_full_disruption: bool = True,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.grace_period = grace_period
        self.default_toleration_seconds = default_toleration_seconds
        self.monitor_period = monitor_period
        self.protect_full_disruption = protect_full_disruption
        self._taint_limiter = TokenBucket(eviction_rate, self.clock)
        self._heard: dict[str, _Heard] = {}
        self._last_ready: dict[str, str] = {}
        self._taint_seen: dict[tuple[str, str, str], float] = {}
        self._orphaned_since: dict[str, float] = {}
        self._timers: dict[str, float] = {}
        self.fully_disrupted = False
        self.nodes = factory.informer("nodes")
        self.leases = factory.informer("leases", namespace=NODE_LEASE_NAMESPACE)
        self.pods = factory.informer("pods")
        self.pods.add_index(NODE_INDEX, lambda p: [(p.get("spec") or {}).get("nodeName") or ""])
        self.nodes.add_handlers(
            Handlers(
                on_add=self._node_added,
                on_update=self._node_updated,
                on_delete=self.enqueue,
            )
        )
        self.leases.add_handlers(
            Handlers(on_add=self._lease_changed, on_update=lambda _, cur: self._lease_changed(cur))
        )
        self.pods.add_handlers(
            Handlers(on_add=self._pod_changed, on_update=lambda _, cur: self._pod_changed(cur))
        )

    async def run(self) -> None:
        await asyncio.gather(
            self.nodes.synced.wait(), self.leases.synced.wait(), self.pods.synced.wait()
        )
        monitor = asyncio.create_task(self._monitor_forever(), name="nodelifecycle-monitor")
        try:
            await super().run()
        finally:
            monitor.cancel()

    # -- hearing from nodes ----------------------------------------------------------------------

    def _observe(self, name: str) -> None:
        node = self.nodes.get(name)
        lease = self.leases.get(name, NODE_LEASE_NAMESPACE)
        renew = ((lease or {}).get("spec") or {}).get("renewTime") or ""
        heartbeat = (meta.condition(node, "Ready") or {}).get("lastHeartbeatTime") if node else ""
        signature = (renew, heartbeat or "")
        heard = self._heard.get(name)
        if heard is None or heard.signature != signature:
            self._heard[name] = _Heard(signature, self.clock.monotonic())

    def silent_for(self, name: str) -> float:
        """Seconds since the node's kubelet was last heard from."""
        heard = self._heard.get(name)
        return self.clock.monotonic() - heard.at if heard else 0.0

    def _node_added(self, node: Obj) -> None:
        self._observe(meta.name(node))
        self._last_ready.setdefault(meta.name(node), ready_status(node))
        self.enqueue(node)

    def _node_updated(self, old: Obj, cur: Obj) -> None:
        self._observe(meta.name(cur))
        if _health_view(old) != _health_view(cur):
            self.enqueue(cur)

    def _lease_changed(self, lease: Obj) -> None:
        if self.nodes.get(meta.name(lease)) is not None:
            self._observe(meta.name(lease))

    def _pod_changed(self, pod: Obj) -> None:
        node_name = (pod.get("spec") or {}).get("nodeName")
        if not node_name:
            return
        node = self.nodes.get(node_name)
        if node is None or no_execute_taints(node):
            self.queue.add(node_name)

    # -- the monitor pass ------------------------------------------------------------------------

    async def _monitor_forever(self) -> None:
        while True:
            self.monitor_once()
            await self.clock.sleep(self.monitor_period)

    def monitor_once(self) -> list[str]:
        """Find the nodes whose state should change and queue them; their names."""
        nodes = self.nodes.list()
        unhealthy = 0
        due = []
        for node in nodes:
            name = meta.name(node)
            if name not in self._heard:
                self._observe(name)
            stale = self.silent_for(name) > self.grace_period
            status = "Unknown" if stale else ready_status(node)
            unhealthy += status != "True"
            marked_unknown = ready_status(node) == "Unknown" and _reason(node) in (
                "NodeStatusUnknown",
                "NodeStatusNeverUpdated",
            )
            if (stale and not marked_unknown) or _taint_keys(node) != condition_taint_keys(status):
                due.append(name)
        disrupted = self.protect_full_disruption and bool(nodes) and unhealthy == len(nodes)
        if disrupted != self.fully_disrupted:
            self.fully_disrupted = disrupted
            level = self.log.warning if disrupted else self.log.info
            level(
                "every node is unhealthy: not evicting until one recovers"
                if disrupted
                else "some node is healthy again: evictions resume",
                nodes=len(nodes),
            )
            due = [meta.name(n) for n in nodes]
        due += self._orphan_node_names()
        for name in due:
            self.queue.add(name)
        return due

    def _orphan_node_names(self) -> list[str]:
        names = {(p.get("spec") or {}).get("nodeName") or "" for p in self.pods.list()}
        return sorted(n for n in names if n and self.nodes.get(n) is None)

    # -- sync ------------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        if self._timers.get(key, FOREVER) <= self._now():
            del self._timers[key]  # this is the sync it asked for
        node = self.nodes.get(key)
        if node is None:
            self._forget(key)
            await self._collect_orphans(key)
            return
        self._orphaned_since.pop(key, None)
        if self.silent_for(key) > self.grace_period:
            node = await self._mark_unknown(node)
        self._note_ready_change(node)
        node = await self._set_condition_taints(node)
        wake = await self._evict(node)
        if wake < FOREVER:
            self._schedule(key, wake)

    def _now(self) -> float:
        return self.clock.monotonic()

    def _schedule(self, name: str, delay: float) -> None:
        """Sync the node again in delay seconds, unless an earlier sync is already due."""
        deadline = self._now() + max(delay, 0.0)
        if self._timers.get(name, FOREVER) <= deadline:
            return
        self._timers[name] = deadline
        self.queue.add_after(name, max(delay, 0.0))

    def _forget(self, name: str) -> None:
        self._heard.pop(name, None)
        self._last_ready.pop(name, None)
        for key in [k for k in self._taint_seen if k[0] == name]:
            del self._taint_seen[key]

    # -- conditions ------------------------------------------------------------------------------

    async def _mark_unknown(self, node: Obj) -> Obj:
        """Set the kubelet's conditions to Unknown and the node's Pods not ready."""
        name = meta.name(node)
        now = rfc3339(self.clock.now())
        status = meta.deep_copy(node.get("status") or {})
        conditions = list(status.get("conditions") or [])
        changed = False
        if not any(c.get("type") == "Ready" for c in conditions):
            conditions.append(
                {
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "NodeStatusNeverUpdated",
                    "message": NEVER_POSTED,
                    "lastTransitionTime": now,
                }
            )
            changed = True
        for cond in conditions:
            if cond.get("type") in KUBELET_CONDITIONS and cond.get("status") != "Unknown":
                cond.update(
                    status="Unknown",
                    reason="NodeStatusUnknown",
                    message=STOPPED_POSTING,
                    lastTransitionTime=now,
                )
                changed = True
        if changed:
            status["conditions"] = conditions
            updated = meta.deep_copy(node)
            updated["status"] = status
            node = await self.client.update_status("nodes", updated)
            self.log.info(
                "node stopped posting status", node=name, silent_s=round(self.silent_for(name), 1)
            )
        await self._mark_pods_not_ready(name)
        return node

    async def _mark_pods_not_ready(self, node_name: str) -> None:
        for pod in self.pods.by_index(NODE_INDEX, node_name):
            cond = meta.condition(pod, "Ready")
            if cond is None or cond.get("status") == "False" or _finished(pod):
                continue
            updated = meta.deep_copy(pod)
            for c in updated["status"]["conditions"]:
                if c.get("type") == "Ready":
                    c.update(status="False", lastTransitionTime=rfc3339(self.clock.now()))
            try:
                await self.client.update_status("pods", updated)
            except errors.NotFound:
                continue
            self.recorder.event(pod, WARNING, "NodeNotReady", "Node is not ready")

    def _note_ready_change(self, node: Obj) -> None:
        name, status = meta.name(node), ready_status(node)
        before = self._last_ready.get(name)
        self._last_ready[name] = status
        if before is None or before == status:
            return
        reason = "NodeReady" if status == "True" else "NodeNotReady"
        self.recorder.event(node, NORMAL, reason, f"Node {name} status is now: {reason}")

    # -- taints ----------------------------------------------------------------------------------

    async def _set_condition_taints(self, node: Obj) -> Obj:
        """Make the node's not-ready/unreachable taints match its Ready condition."""
        name = meta.name(node)
        wanted = condition_taint_keys(ready_status(node))
        taints = list((node.get("spec") or {}).get("taints") or [])
        keep = [t for t in taints if t.get("key") not in (UNREACHABLE, NOT_READY)]
        kept = {(t["key"], t["effect"]): t for t in taints if t.get("key") in wanted}
        new = list(keep)
        for key in sorted(wanted):
            new.append(kept.get((key, NO_SCHEDULE)) or {"key": key, "effect": NO_SCHEDULE})
            existing = kept.get((key, NO_EXECUTE))
            if existing is not None and not self.fully_disrupted:
                new.append(existing)
            elif existing is None and not self.fully_disrupted:
                wait = self._taint_limiter.take()
                if wait > 0:
                    self._schedule(name, wait)
                    continue
                new.append(
                    {"key": key, "effect": NO_EXECUTE, "timeAdded": rfc3339(self.clock.now())}
                )
        if _taint_set(new) == _taint_set(taints):
            return node
        updated = meta.deep_copy(node)
        updated.setdefault("spec", {})["taints"] = new
        if not new:
            updated["spec"].pop("taints")
        node = await self.client.update("nodes", updated)
        self.log.info(
            "set node condition taints",
            node=name,
            taints=",".join(f"{t['key']}:{t['effect']}" for t in new) or "none",
        )
        return node

    # -- eviction --------------------------------------------------------------------------------

    async def _evict(self, node: Obj) -> float:
        """Evict the Pods whose time on the node is up; seconds until the next is due."""
        taints = no_execute_taints(node)
        unreachable = ready_status(node) == "Unknown"
        now = self.clock.now()
        wake = FOREVER
        for pod in self.pods.by_index(NODE_INDEX, meta.name(node)):
            if _finished(pod):
                continue
            if meta.is_deleting(pod):
                if unreachable:
                    wake = min(wake, await self._finish_if_overdue(pod, now))
                continue
            if not taints:
                continue
            allowed = toleration_time(
                with_default_tolerations(pod, self.default_toleration_seconds), taints
            )
            if allowed == FOREVER:
                continue
            deadline = self._tainted_since(node, taints) + allowed
            if now >= deadline:
                await self._evict_pod(pod, meta.name(node))
                if unreachable:
                    wake = min(wake, self._grace_of(pod))
            else:
                wake = min(wake, deadline - now)
        return wake

    def _tainted_since(self, node: Obj, taints: list[Obj]) -> float:
        """When the node's current NoExecute taints began: the earliest timeAdded."""
        name, now = meta.name(node), self.clock.now()
        times = []
        for taint in taints:
            if taint.get("timeAdded"):
                times.append(parse_rfc3339(taint["timeAdded"]))
            else:
                seen = self._taint_seen.setdefault((name, taint["key"], taint["effect"]), now)
                times.append(seen)
        return min(times)

    async def _evict_pod(self, pod: Obj, node_name: str) -> None:
        log = self.log.bind(pod=meta.ref(pod), node=node_name)
        updated = meta.deep_copy(pod)
        status = updated.setdefault("status", {})
        util.set_condition(
            status,
            {
                "type": "DisruptionTarget",
                "status": "True",
                "reason": "DeletionByTaintManager",
                "message": "Taint manager: deleting due to NoExecute taint",
                "lastTransitionTime": rfc3339(self.clock.now()),
            },
        )
        try:
            await self.client.update_status("pods", updated)
            await self.client.delete(
                "pods", meta.name(pod), namespace=meta.namespace(pod), uid=meta.uid(pod)
            )
        except errors.NotFound:
            return
        except errors.Conflict:
            # Changed or replaced meanwhile: the next sync decides on the fresh version.
            self.queue.add(node_name)
            return
        log.info("evicted pod from tainted node")
        self.recorder.event(
            pod, NORMAL, "TaintManagerEviction", f"Marking for deletion Pod {meta.ref(pod)}"
        )

    def _grace_of(self, pod: Obj) -> float:
        return float((pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30))

    async def _finish_if_overdue(self, pod: Obj, now: float) -> float:
        """Force-delete a Pod past its grace period on an unreachable node; else seconds left."""
        deadline = parse_rfc3339(pod["metadata"]["deletionTimestamp"])
        if now < deadline:
            return deadline - now
        await self._force_delete(pod, "its node is unreachable and its grace period is over")
        return FOREVER

    async def _force_delete(self, pod: Obj, why: str) -> None:
        try:
            await self.client.delete(
                "pods",
                meta.name(pod),
                namespace=meta.namespace(pod),
                uid=meta.uid(pod),
                grace_period_seconds=0,
            )
        except (errors.NotFound, errors.Conflict):
            return
        self.log.info(
            "force-deleted pod", pod=meta.ref(pod), node=pod["spec"].get("nodeName"), why=why
        )

    async def _collect_orphans(self, node_name: str) -> None:
        """Delete the Pods bound to a Node that is gone, once it has been gone a grace period."""
        pods = self.pods.by_index(NODE_INDEX, node_name)
        if not pods:
            self._orphaned_since.pop(node_name, None)
            return
        since = self._orphaned_since.setdefault(node_name, self._now())
        left = since + self.grace_period - self._now()
        if left > 0:
            self._schedule(node_name, left)
            return
        try:
            await self.client.get("nodes", node_name)
            return  # the cache is behind: the Node exists
        except errors.NotFound:
            pass
        for pod in pods:
            await self._force_delete(pod, "its node no longer exists")
        self._orphaned_since.pop(node_name, None)


def _finished(pod: Obj) -> bool:
    return (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed")


def _reason(node: Obj) -> str:
    return (meta.condition(node, "Ready") or {}).get("reason", "")


def _taint_keys(node: Obj) -> set[str]:
    """The condition taint keys the node has (as NoSchedule, the ones always set)."""
    return {
        t["key"]
        for t in (node.get("spec") or {}).get("taints") or []
        if t.get("key") in (UNREACHABLE, NOT_READY) and t.get("effect") == NO_SCHEDULE
    }


def _taint_set(taints: list[Obj]) -> set[tuple[str, str, str, str]]:
    return {
        (t.get("key", ""), t.get("value", ""), t.get("effect", ""), t.get("timeAdded", ""))
        for t in taints
    }


def _health_view(node: Obj) -> tuple[Any, ...]:
    conditions = tuple(
        (c.get("type"), c.get("status")) for c in (node.get("status") or {}).get("conditions") or []
    )
    return conditions, tuple(_taint_set((node.get("spec") or {}).get("taints") or []))
