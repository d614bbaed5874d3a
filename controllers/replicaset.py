"""The ReplicaSet controller: exactly spec.replicas active Pods per ReplicaSet.

A sync claims the ReplicaSet's Pods (its own that still match the selector,
plus matching orphans, which it adopts; its own that stopped matching are
released), compares the active ones with spec.replicas and creates or deletes
the difference, then writes status.

Invariants:
* No overshoot. Creations and deletions are recorded as expectations before
  they are issued and lowered as the Pod informer reports them (or when a call
  fails). A ReplicaSet with anything outstanding is not scaled again, so a
  burst of syncs, or a watch that lags by seconds, never counts the same
  missing Pod twice. Outstanding work expires after five minutes.
* Creations go in batches of 1, 2, 4, 8, ... and stop at the first failure,
  so a quota or validation error costs one failed call, not hundreds.
* Scaling down deletes the least valuable Pods first (see deletion_rank).
* Status counts what exists or is being created: the cached Pods, plus
  creations issued and not yet seen, minus deletions issued and not yet seen,
  so that a reader (the Deployment controller) never sees fewer Pods than
  there are. Status is written only when it changed.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
from typing import Any

from controllers import util
from controllers.base import QueueController
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.events import NORMAL, WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory, object_key
from machinery.log import Logger

Obj = dict[str, Any]

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
BURST_REPLICAS = 500  # creations or deletions per sync, as in Kubernetes
_PHASE_RANK = {"Pending": 0, "Unknown": 1, "Running": 2}


def deletion_rank(pod: Obj) -> tuple[Any, ...]:
    """Sort key putting the Pod to delete first first.

    In order: unscheduled before scheduled, Pending before Unknown before
    Running, not ready before ready, lower pod-deletion-cost first, ready for
    a shorter time before longer, more restarts before fewer, newer before
    older; the name breaks ties so the choice is deterministic.
    """
    spec, status = pod.get("spec", {}), pod.get("status", {})
    ready_since = util.ready_since(pod)
    try:
        cost = int(meta.annotations_of(pod).get(DELETION_COST, "0"))
    except ValueError:
        cost = 0
    return (
        bool(spec.get("nodeName")),
        _PHASE_RANK.get(status.get("phase", "Pending"), 0),
        ready_since is not None,
        cost,
        -(ready_since or 0.0),
        -util.restart_count(pod),
        -util.created_at(pod),
        meta.name(pod),
    )


def pick_victims(pods: list[Obj], count: int) -> list[Obj]:
    """The count Pods a scale-down deletes."""
    return sorted(pods, key=deletion_rank)[:count]


def pod_from_template(owner: Obj, template: Obj) -> Obj:
    """The Pod an owner creates from its template: generated name, labels, controller ref."""
    tmeta = template.get("metadata") or {}
    pod_meta: Obj = {
        "generateName": f"{meta.name(owner)}-",
        "namespace": meta.namespace(owner),
        "labels": dict(tmeta.get("labels") or {}),
        "ownerReferences": [meta.owner_reference(owner)],
    }
    if tmeta.get("annotations"):
        pod_meta["annotations"] = dict(tmeta["annotations"])
    if tmeta.get("finalizers"):
        pod_meta["finalizers"] = list(tmeta["finalizers"])
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": pod_meta,
        "spec": copy.deepcopy(template.get("spec") or {}),
    }


@dataclasses.dataclass
class _Outcome:
    """What one scaling step did; error is the first failure, re-raised after status."""

    error: errors.ApiError | None = None
    failed_verb: str = ""


class ReplicaSetController(QueueController):
    name = "replicaset"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 2,
        burst: int = BURST_REPLICAS,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.burst = burst
        self.expectations = util.Expectations(self.clock)
        self.replicasets = factory.informer("replicasets")
        self.pods = factory.informer("pods")
        util.index_by_controller(self.pods)
        self.replicasets.add_handlers(
            Handlers(on_add=self.enqueue, on_update=self._rs_updated, on_delete=self._rs_deleted)
        )
        self.pods.add_handlers(
            Handlers(
                on_add=self._pod_added, on_update=self._pod_updated, on_delete=self._pod_deleted
            )
        )

    async def run(self) -> None:
        await asyncio.gather(self.replicasets.synced.wait(), self.pods.synced.wait())
        await super().run()

    # -- informer events -----------------------------------------------------------------------

    def _rs_updated(self, old: Obj, cur: Obj) -> None:
        self.enqueue(cur)

    def _rs_deleted(self, rs: Obj) -> None:
        self.expectations.forget(object_key(rs))

    def _owner(self, pod: Obj) -> Obj | None:
        return util.resolve_controller(self.replicasets, pod, "ReplicaSet")

    def _pod_added(self, pod: Obj) -> None:
        if meta.is_deleting(pod):
            # Seen for the first time already on its way out (a relist): count it as gone.
            self._pod_deleted(pod)
            return
        rs = self._owner(pod)
        if rs is not None:
            self.expectations.creation_observed(object_key(rs))
            self.enqueue(rs)
        elif meta.controller_of(pod) is None:
            for candidate in util.owners_selecting(self.replicasets, pod):
                self.enqueue(candidate)

    def _pod_updated(self, old: Obj, cur: Obj) -> None:
        if meta.resource_version(old) == meta.resource_version(cur):
            return  # a resync: nothing changed
        old_ref, cur_ref = meta.controller_of(old), meta.controller_of(cur)
        if old_ref != cur_ref and old_ref is not None:
            previous = self._owner(old)
            if previous is not None:
                self.enqueue(previous)
        if meta.is_deleting(cur):
            self._pod_deleted(cur)
            return
        rs = self._owner(cur)
        if rs is not None:
            self.enqueue(rs)
            min_ready = rs["spec"].get("minReadySeconds", 0)
            if min_ready > 0 and util.is_pod_ready(cur) and not util.is_pod_ready(old):
                self.queue.add_after(object_key(rs), float(min_ready))
        elif cur_ref is None and (meta.labels(old) != meta.labels(cur) or old_ref is not None):
            for candidate in util.owners_selecting(self.replicasets, cur):
                self.enqueue(candidate)

    def _pod_deleted(self, pod: Obj) -> None:
        rs = self._owner(pod)
        if rs is not None:
            self.expectations.deletion_observed(object_key(rs), object_key(pod))
            self.enqueue(rs)

    # -- sync ----------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        try:
            await self._sync(key)
        except errors.NotFound:
            if self.replicasets.get_by_key(key) is not None:
                raise
            # Deleted while this sync ran: nothing is left to bring to its spec.

    async def _sync(self, key: str) -> None:
        rs = self.replicasets.get_by_key(key)
        if rs is None:
            self.expectations.forget(key)
            return
        log = self.log.bind(replicaset=key)
        may_scale = self.expectations.satisfied(key) and not meta.is_deleting(rs)

        # Claim: own what matches, adopt matching orphans, release what stopped matching.
        selector = util.selector_of(rs)
        claimer = util.Claimer(
            self.client,
            "pods",
            rs,
            selector,
            lambda: util.owner_still_current(self.client, "replicasets", rs),
        )
        pods = await claimer.claim(self._candidates(rs))

        # Scale, unless earlier creations or deletions are still to be seen.
        outcome = _Outcome()
        if may_scale:
            outcome = await self._scale(rs, [p for p in pods if util.is_pod_active(p)], log)

        # Status, from the cache as it is now plus what is still in flight.
        await self._write_status(rs, outcome)
        if outcome.error is not None:
            raise outcome.error

    def _candidates(self, rs: Obj) -> list[Obj]:
        namespace = meta.namespace(rs)
        owned = self.pods.by_index(util.CONTROLLER_UID_INDEX, meta.uid(rs))
        orphans = self.pods.by_index(util.CONTROLLER_UID_INDEX, util.ORPHAN)
        return [
            p
            for p in (*owned, *orphans)
            if meta.namespace(p) == namespace and util.is_pod_active(p)
        ]

    async def _scale(self, rs: Obj, active: list[Obj], log: Logger) -> _Outcome:
        diff = len(active) - int(rs["spec"].get("replicas", 1))
        if diff < 0:
            return await self._create_pods(rs, min(-diff, self.burst), log)
        if diff > 0:
            return await self._delete_pods(rs, pick_victims(active, min(diff, self.burst)), log)
        return _Outcome()

    # -- creating ------------------------------------------------------------------------------

    async def _create_pods(self, rs: Obj, count: int, log: Logger) -> _Outcome:
        key = object_key(rs)
        self.expectations.expect(key, creations=count)
        log.debug("creating pods", want=count)
        batch, remaining = 1, count
        while remaining > 0:
            size = min(batch, remaining)
            remaining -= size
            results = await asyncio.gather(
                *(self._create_one(rs) for _ in range(size)), return_exceptions=True
            )
            failure = _first_failure(results)
            if failure is not None:
                if remaining:
                    log.debug("skipping pod creations after a failure", skipped=remaining)
                    self.expectations.creation_observed(key, remaining)
                return _Outcome(failure, "create")
            batch *= 2
        return _Outcome()

    async def _create_one(self, rs: Obj) -> Obj:
        pod = pod_from_template(rs, rs["spec"].get("template") or {})
        try:
            created = await self.client.create("pods", pod, namespace=meta.namespace(rs))
        except errors.ApiError as err:
            self.expectations.creation_observed(object_key(rs))
            self.recorder.event(rs, WARNING, "FailedCreate", f"Error creating: {err}")
            raise
        self.recorder.event(rs, NORMAL, "SuccessfulCreate", f"Created pod: {meta.name(created)}")
        return created

    # -- deleting ------------------------------------------------------------------------------

    async def _delete_pods(self, rs: Obj, victims: list[Obj], log: Logger) -> _Outcome:
        key = object_key(rs)
        self.expectations.expect(key, deletions=[object_key(p) for p in victims])
        log.debug("deleting pods", count=len(victims))
        results = await asyncio.gather(
            *(self._delete_one(rs, p) for p in victims), return_exceptions=True
        )
        failure = _first_failure(results)
        return _Outcome(failure, "delete") if failure is not None else _Outcome()

    async def _delete_one(self, rs: Obj, pod: Obj) -> None:
        key = object_key(rs)
        try:
            await self.client.delete(
                "pods", meta.name(pod), namespace=meta.namespace(pod), uid=meta.uid(pod)
            )
        except (errors.NotFound, errors.Conflict):
            # Already gone (or replaced by another Pod of that name): nothing left to see.
            self.expectations.deletion_observed(key, object_key(pod))
            return
        except errors.ApiError as err:
            self.expectations.deletion_observed(key, object_key(pod))
            self.recorder.event(rs, WARNING, "FailedDelete", f"Error deleting: {err}")
            raise
        self.recorder.event(rs, NORMAL, "SuccessfulDelete", f"Deleted pod: {meta.name(pod)}")

    # -- status --------------------------------------------------------------------------------

    async def _write_status(self, rs: Obj, outcome: _Outcome) -> None:
        key = object_key(rs)
        now = self.clock.now()
        min_ready = int(rs["spec"].get("minReadySeconds", 0))
        status = self.compute_status(rs, now=now)
        _replica_failure(status, outcome, now)
        if status != rs.get("status", {}):
            fresh = meta.deep_copy(rs)
            fresh["status"] = status
            await self.client.update_status("replicasets", fresh)

        # A ready Pod turns available later with no event to say so: look again then.
        waits = [util.seconds_until_available(p, min_ready, now) for p in self._counted_pods(rs)]
        pending = [w for w in waits if w is not None]
        if pending:
            self.queue.add_after(key, min(pending))

    def _counted_pods(self, rs: Obj) -> list[Obj]:
        leaving = self.expectations.pending_deletions(object_key(rs))
        selector = util.selector_of(rs)
        return [
            p
            for p in self.pods.by_index(util.CONTROLLER_UID_INDEX, meta.uid(rs))
            if meta.namespace(p) == meta.namespace(rs)
            and util.is_pod_active(p)
            and selector.matches(meta.labels(p))
            and object_key(p) not in leaving
        ]

    def compute_status(self, rs: Obj, *, now: float) -> Obj:
        """The status this ReplicaSet has by the cache and the outstanding expectations."""
        pods = self._counted_pods(rs)
        min_ready = int(rs["spec"].get("minReadySeconds", 0))
        template_labels = ((rs["spec"].get("template") or {}).get("metadata") or {}).get(
            "labels"
        ) or {}
        status: Obj = {
            "replicas": len(pods) + self.expectations.pending_creations(object_key(rs)),
            "fullyLabeledReplicas": sum(
                1 for p in pods if template_labels.items() <= meta.labels(p).items()
            ),
            "readyReplicas": sum(1 for p in pods if util.is_pod_ready(p)),
            "availableReplicas": sum(1 for p in pods if util.is_pod_available(p, min_ready, now)),
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        if rs.get("status", {}).get("conditions"):
            status["conditions"] = copy.deepcopy(rs["status"]["conditions"])
        return status


def _first_failure(results: list[Any]) -> errors.ApiError | None:
    """The first ApiError among gathered results; any other exception is a bug and raised."""
    failure = None
    for result in results:
        if isinstance(result, errors.ApiError):
            failure = failure or result
        elif isinstance(result, BaseException):
            raise result
    return failure


def _replica_failure(status: Obj, outcome: _Outcome, now: float) -> None:
    """Keep the ReplicaFailure condition in step with the last scaling attempt."""
    if outcome.error is None:
        util.remove_condition(status, "ReplicaFailure")
        return
    reason = "FailedCreate" if outcome.failed_verb == "create" else "FailedDelete"
    util.set_condition(
        status,
        util.condition(
            "ReplicaFailure", "True", reason, str(outcome.error), now=now, update_time=False
        ),
    )
