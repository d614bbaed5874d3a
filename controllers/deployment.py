"""The Deployment controller: rolls a Deployment's Pods from one template to the next.

A Deployment owns ReplicaSets, one per pod template it has had, each named
`<deployment>-<hash>` where the hash is taken over the template (and the
collision count), and labelled and selected with pod-template-hash=<hash>
so their Pods never mix. The ReplicaSet whose template equals the
Deployment's is the new one; the others are old. Revisions number the
templates in the order they were rolled out; rolling back to an old
template makes its ReplicaSet new again under the next revision.

A sync, like Kubernetes':
* claims the ReplicaSets (adopting matching orphans, releasing strays);
* paused: only scales (proportionally) and prunes history;
* a change of spec.replicas mid-rollout: scales every active ReplicaSet in
  proportion to its size, the leftover going to the largest;
* RollingUpdate: scales the new ReplicaSet up while the total stays within
  replicas + maxSurge, and old ones down while availability stays at least
  replicas - maxUnavailable; Recreate: scales old ones to zero, waits for
  their Pods to be gone, then scales the new one up;
* writes status (counts summed over the ReplicaSets, the Available and
  Progressing conditions) when it changed, and marks the rollout failed
  (ProgressDeadlineExceeded) when it made no progress for
  progressDeadlineSeconds.

The two rollout bounds are kept against ReplicaSet status that may lag the
Pods: a ReplicaSet counts as max(spec.replicas, status.replicas) Pods
toward the surge limit (a scaled-down one may still have its Pods) and as
min(status.availableReplicas, spec.replicas) available Pods toward the
availability limit (a scaled-down one loses its extra Pods, unavailable
ones first). Kubernetes sums spec.replicas and status.availableReplicas.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import json
from typing import Any

from controllers import util
from controllers.base import QueueController
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339
from machinery.events import NORMAL, EventRecorder
from machinery.informer import Handlers, InformerFactory, object_key

Obj = dict[str, Any]

HASH_LABEL = "pod-template-hash"
REVISION = "deployment.kubernetes.io/revision"
REVISION_HISTORY = "deployment.kubernetes.io/revision-history"
DESIRED_REPLICAS = "deployment.kubernetes.io/desired-replicas"
MAX_REPLICAS = "deployment.kubernetes.io/max-replicas"
# Deployment annotations that describe the Deployment itself and are not copied to its
# ReplicaSets.
_NOT_COPIED = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    REVISION_HISTORY,
    DESIRED_REPLICAS,
    MAX_REPLICAS,
}
_REVISION_HISTORY_MAX_CHARS = 2000

AVAILABLE, PROGRESSING, REPLICA_FAILURE = "Available", "Progressing", "ReplicaFailure"
NEW_RS_AVAILABLE = "NewReplicaSetAvailable"
TIMED_OUT = "ProgressDeadlineExceeded"
PAUSED, RESUMED = "DeploymentPaused", "DeploymentResumed"

# An alphabet without vowels (no words) and without l, 0, 1, 3 (no look-alikes).
_HASH_ALPHABET = "bcdfghjkmnpqrstvwxz2456789"
_HASH_WIDTH = 7  # 26**7 > 2**32


# -- templates and revisions -------------------------------------------------------------------


def fnv32a(data: bytes) -> int:
    value = 0x811C9DC5
    for byte in data:
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value


def template_hash(template: Obj, collision_count: int = 0) -> str:
    """A short, stable, DNS-safe name for a pod template (FNV-32a over canonical JSON)."""
    data = json.dumps(template, sort_keys=True, separators=(",", ":")).encode()
    if collision_count:
        data += b"#" + str(collision_count).encode()
    value = fnv32a(data)
    chars = []
    for _ in range(_HASH_WIDTH):
        value, digit = divmod(value, len(_HASH_ALPHABET))
        chars.append(_HASH_ALPHABET[digit])
    return "".join(reversed(chars))


def _without_hash(template: Obj) -> Obj:
    result = copy.deepcopy(template or {})
    tmeta = result.get("metadata") or {}
    labels = dict(tmeta.get("labels") or {})
    labels.pop(HASH_LABEL, None)
    if labels:
        tmeta["labels"] = labels
    else:
        tmeta.pop("labels", None)
    if tmeta:
        result["metadata"] = tmeta
    else:
        result.pop("metadata", None)
    return result


def templates_equal(a: Obj, b: Obj) -> bool:
    """Equal pod templates, the pod-template-hash label aside."""
    return _without_hash(a) == _without_hash(b)


def revision_of(rs: Obj) -> int:
    try:
        return int(meta.annotations_of(rs).get(REVISION, "0"))
    except ValueError:
        return 0


def replicas(obj: Obj) -> int:
    return int(obj.get("spec", {}).get("replicas", 1))


def _status(obj: Obj, field: str) -> int:
    return int(obj.get("status", {}).get(field) or 0)


def pods_of(rs: Obj) -> int:
    """Pods a ReplicaSet may have: a scaled-down one keeps its Pods until they are deleted."""
    return max(replicas(rs), _status(rs, "replicas"))


def available_of(rs: Obj) -> int:
    """Available Pods a ReplicaSet keeps once it is at its size (extra ones are deleted)."""
    return min(_status(rs, "availableReplicas"), replicas(rs))


def _by_age(rs: Obj) -> tuple[float, str]:
    return (util.created_at(rs), meta.name(rs))


# -- strategy arithmetic -----------------------------------------------------------------------


def is_rolling(d: Obj) -> bool:
    return (d["spec"].get("strategy") or {}).get("type", "RollingUpdate") == "RollingUpdate"


def fenceposts(d: Obj) -> tuple[int, int]:
    """maxSurge (rounded up) and maxUnavailable (rounded down) as Pod counts."""
    rolling = (d["spec"].get("strategy") or {}).get("rollingUpdate") or {}
    total = replicas(d)
    surge = util.scaled_value(rolling.get("maxSurge", "25%"), total, round_up=True)
    unavailable = util.scaled_value(rolling.get("maxUnavailable", "25%"), total, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1  # both round to 0 for a small Deployment: let it move anyway
    return surge, unavailable


def max_surge(d: Obj) -> int:
    return fenceposts(d)[0] if is_rolling(d) else 0


def max_unavailable(d: Obj) -> int:
    if not is_rolling(d) or replicas(d) == 0:
        return 0
    return min(fenceposts(d)[1], replicas(d))


def new_rs_replicas(d: Obj, all_rs: list[Obj], new: Obj | None) -> int:
    """The size the new ReplicaSet may grow to in this step."""
    current = replicas(new) if new is not None else 0
    if not is_rolling(d):
        return replicas(d)
    ceiling = replicas(d) + max_surge(d)
    pods = sum(pods_of(rs) for rs in all_rs)
    if pods >= ceiling:
        return current
    return current + min(ceiling - pods, replicas(d) - current)


def _annotation_int(rs: Obj, name: str) -> int | None:
    try:
        return int(meta.annotations_of(rs)[name])
    except (KeyError, ValueError):
        return None


def _fraction(rs: Obj, d: Obj) -> int:
    """How many Pods rs gains (or loses) when the Deployment it belongs to is resized."""
    if replicas(d) == 0:
        return -replicas(rs)
    target = replicas(d) + max_surge(d)
    before = _annotation_int(rs, MAX_REPLICAS)
    if before is None:
        before = _status(d, "replicas")
    if before <= 0:
        return 0
    return util.round_half_away(replicas(rs) * target / before) - replicas(rs)


def proportional_sizes(d: Obj, active: list[Obj]) -> list[tuple[Obj, int]]:
    """New sizes for the active ReplicaSets of a Deployment whose replicas changed mid-rollout.

    The Pods to add (or remove) are shared in proportion to each ReplicaSet's
    size relative to the Deployment's size at its last scaling (max-replicas);
    what rounding leaves over goes to the largest.
    """
    allowed = replicas(d) + max_surge(d) if replicas(d) > 0 else 0
    to_add = allowed - sum(replicas(rs) for rs in active)
    if to_add > 0:  # larger first, newer first among equals
        order = sorted(active, key=lambda rs: (-replicas(rs), -util.created_at(rs), meta.name(rs)))
    elif to_add < 0:  # larger first, older first among equals
        order = sorted(active, key=lambda rs: (-replicas(rs), util.created_at(rs), meta.name(rs)))
    else:
        return [(rs, replicas(rs)) for rs in active]
    sizes: list[int] = []
    added = 0
    for rs in order:
        share = 0
        if replicas(rs) > 0 and to_add != added:
            left = to_add - added
            fraction = _fraction(rs, d)
            share = min(fraction, left) if to_add > 0 else max(fraction, left)
        sizes.append(replicas(rs) + share)
        added += share
    if sizes:
        sizes[0] = max(0, sizes[0] + to_add - added)
    return list(zip(order, sizes, strict=True))


# -- status arithmetic -------------------------------------------------------------------------


def has_progress_deadline(d: Obj) -> bool:
    deadline = d["spec"].get("progressDeadlineSeconds")
    return deadline is not None and deadline != 2**31 - 1


def deployment_complete(d: Obj, status: Obj) -> bool:
    want = replicas(d)
    return (
        _count(status, "updatedReplicas") == want
        and _count(status, "replicas") == want
        and _count(status, "availableReplicas") == want
        and _count(status, "observedGeneration") >= d["metadata"].get("generation", 1)
    )


def deployment_progressing(d: Obj, status: Obj) -> bool:
    """Progress since the last written status: more updated, ready or available, fewer old."""
    old = d.get("status") or {}
    old_leftover = _count(old, "replicas") - _count(old, "updatedReplicas")
    new_leftover = _count(status, "replicas") - _count(status, "updatedReplicas")
    return (
        _count(status, "updatedReplicas") > _count(old, "updatedReplicas")
        or new_leftover < old_leftover
        or _count(status, "readyReplicas") > _count(old, "readyReplicas")
        or _count(status, "availableReplicas") > _count(old, "availableReplicas")
    )


def deployment_timed_out(d: Obj, status: Obj, now: float) -> bool:
    if not has_progress_deadline(d):
        return False
    cond = util.get_condition(status, PROGRESSING)
    if cond is None or cond.get("reason") == NEW_RS_AVAILABLE:
        return False
    if cond.get("reason") == TIMED_OUT:
        return True
    since = parse_rfc3339(cond.get("lastUpdateTime") or cond["lastTransitionTime"])
    return since + d["spec"]["progressDeadlineSeconds"] < now


def _count(status: Obj, field: str) -> int:
    return int(status.get(field) or 0)


# -- the controller ----------------------------------------------------------------------------


@dataclasses.dataclass
class _Rollout:
    """The Deployment and its ReplicaSets as this sync has left them so far."""

    deployment: Obj
    new: Obj | None
    old: list[Obj]

    @property
    def all(self) -> list[Obj]:
        return [*self.old, self.new] if self.new is not None else list(self.old)

    def replace(self, rs: Obj) -> None:
        if self.new is not None and meta.uid(self.new) == meta.uid(rs):
            self.new = rs
        self.old = [rs if meta.uid(o) == meta.uid(rs) else o for o in self.old]


class DeploymentController(QueueController):
    name = "deployment"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.deployments = factory.informer("deployments")
        self.replicasets = factory.informer("replicasets")
        self.pods = factory.informer("pods")
        util.index_by_controller(self.replicasets)
        util.index_by_controller(self.pods)
        self.deployments.add_handlers(
            Handlers(on_add=self.enqueue, on_update=lambda old, cur: self.enqueue(cur))
        )
        self.replicasets.add_handlers(
            Handlers(on_add=self._rs_added, on_update=self._rs_updated, on_delete=self._rs_deleted)
        )
        self.pods.add_handlers(Handlers(on_delete=self._pod_deleted))

    async def run(self) -> None:
        await asyncio.gather(
            self.deployments.synced.wait(), self.replicasets.synced.wait(), self.pods.synced.wait()
        )
        await super().run()

    # -- informer events -----------------------------------------------------------------------

    def _owner(self, rs: Obj) -> Obj | None:
        return util.resolve_controller(self.deployments, rs, "Deployment")

    def _enqueue_owner(self, rs: Obj) -> bool:
        owner = self._owner(rs)
        if owner is not None:
            self.enqueue(owner)
        return owner is not None

    def _rs_added(self, rs: Obj) -> None:
        if not self._enqueue_owner(rs) and meta.controller_of(rs) is None:
            for d in util.owners_selecting(self.deployments, rs):
                self.enqueue(d)

    def _rs_updated(self, old: Obj, cur: Obj) -> None:
        if meta.resource_version(old) == meta.resource_version(cur):
            return
        if meta.controller_of(old) != meta.controller_of(cur):
            self._enqueue_owner(old)
        if not self._enqueue_owner(cur) and meta.controller_of(cur) is None:
            for d in util.owners_selecting(self.deployments, cur):
                self.enqueue(d)

    def _rs_deleted(self, rs: Obj) -> None:
        self._enqueue_owner(rs)

    def _pod_deleted(self, pod: Obj) -> None:
        # Recreate waits for the old Pods to be gone, and nothing else says when they are.
        rs = util.resolve_controller(self.replicasets, pod, "ReplicaSet")
        owner = self._owner(rs) if rs is not None else None
        if owner is not None and not is_rolling(owner):
            self.enqueue(owner)

    # -- sync ----------------------------------------------------------------------------------

    async def sync(self, key: str) -> None:
        try:
            await self._sync(key)
        except errors.NotFound:
            if self.deployments.get_by_key(key) is not None:
                raise
            # Deleted while this sync ran: its ReplicaSets go with it (garbage collection).

    async def _sync(self, key: str) -> None:
        cached = self.deployments.get_by_key(key)
        if cached is None:
            return
        d = meta.deep_copy(cached)
        rs_list = await self._claim(d)
        if meta.is_deleting(d):
            await self._sync_status(self._split(d, rs_list))
            return
        d = await self._note_pause(d)
        if d["spec"].get("paused") or self._is_scaling_event(d, rs_list):
            await self._sync_scale(d, rs_list)
        elif is_rolling(d):
            await self._rollout_rolling(d, rs_list)
        else:
            await self._rollout_recreate(d, rs_list)

    async def _claim(self, d: Obj) -> list[Obj]:
        namespace = meta.namespace(d)
        owned = self.replicasets.by_index(util.CONTROLLER_UID_INDEX, meta.uid(d))
        orphans = self.replicasets.by_index(util.CONTROLLER_UID_INDEX, util.ORPHAN)
        candidates = [rs for rs in (*owned, *orphans) if meta.namespace(rs) == namespace]
        claimer = util.Claimer(
            self.client,
            "replicasets",
            d,
            util.selector_of(d),
            lambda: util.owner_still_current(self.client, "deployments", d),
        )
        return await claimer.claim(candidates)

    def _find_new(self, d: Obj, rs_list: list[Obj]) -> Obj | None:
        template = d["spec"].get("template") or {}
        for rs in sorted(rs_list, key=_by_age):
            if templates_equal(rs["spec"].get("template") or {}, template):
                return rs
        return None

    def _split(self, d: Obj, rs_list: list[Obj]) -> _Rollout:
        new = self._find_new(d, rs_list)
        old = [rs for rs in rs_list if new is None or meta.uid(rs) != meta.uid(new)]
        return _Rollout(d, new, old)

    def _is_scaling_event(self, d: Obj, rs_list: list[Obj]) -> bool:
        """Whether spec.replicas changed since the active ReplicaSets were last sized."""
        for rs in rs_list:
            desired = _annotation_int(rs, DESIRED_REPLICAS)
            if replicas(rs) > 0 and desired is not None and desired != replicas(d):
                return True
        return False

    # -- the new ReplicaSet and revisions ------------------------------------------------------

    async def _get_all(self, d: Obj, rs_list: list[Obj], *, create: bool) -> _Rollout:
        """The rollout with its new ReplicaSet found (its revision brought up) or created."""
        split = self._split(d, rs_list)
        existing, old = split.new, split.old
        revision = max((revision_of(rs) for rs in old), default=0) + 1
        rollout = _Rollout(d, None, old)
        if existing is not None:
            await self._sync_new(rollout, existing, revision)
        elif create:
            await self._create_new(rollout, revision)
        return rollout

    async def _sync_new(self, r: _Rollout, existing: Obj, revision: int) -> None:
        d = r.deployment
        rs = meta.deep_copy(existing)
        changed = _set_new_rs_annotations(d, rs, revision)
        if rs["spec"].get("minReadySeconds", 0) != d["spec"].get("minReadySeconds", 0):
            rs["spec"]["minReadySeconds"] = d["spec"].get("minReadySeconds", 0)
            changed = True
        if changed:
            rs = await self.client.update("replicasets", rs)
        r.new = rs
        await self._record_revision(r, meta.annotations_of(rs).get(REVISION, ""))
        d = r.deployment
        if has_progress_deadline(d) and not util.get_condition(d.get("status", {}), PROGRESSING):
            message = f'Found new replica set "{meta.name(rs)}"'
            await self._put_progressing(r, "True", "FoundNewReplicaSet", message)

    async def _create_new(self, r: _Rollout, revision: int) -> None:
        d = r.deployment
        collisions = _count(d.get("status", {}), "collisionCount")
        rs = self._new_rs_object(d, template_hash(d["spec"]["template"], collisions), revision)
        rs["spec"]["replicas"] = new_rs_replicas(d, r.old, None)
        try:
            created = await self.client.create("replicasets", rs, namespace=meta.namespace(d))
        except errors.AlreadyExists:
            created = await self._existing_or_collision(r, rs, collisions)
        except errors.ApiError as err:
            message = f'Failed to create new replica set "{meta.name(rs)}": {err}'
            await self._put_progressing(r, "False", "ReplicaSetCreateError", message)
            raise
        r.new = created
        if replicas(created) > 0:
            self._scaling_event(d, created, "up", replicas(created))
        await self._record_revision(r, meta.annotations_of(created).get(REVISION, ""))
        if has_progress_deadline(r.deployment):
            message = f'Created new replica set "{meta.name(created)}"'
            await self._put_progressing(r, "True", "NewReplicaSetCreated", message)

    def _new_rs_object(self, d: Obj, pod_hash: str, revision: int) -> Obj:
        template = copy.deepcopy(d["spec"]["template"])
        template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
        selector = copy.deepcopy(d["spec"]["selector"])
        selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
        rs: Obj = {
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": f"{meta.name(d)}-{pod_hash}",
                "namespace": meta.namespace(d),
                "labels": dict(template["metadata"]["labels"]),
                "ownerReferences": [meta.owner_reference(d)],
                "annotations": {},
            },
            "spec": {
                "replicas": 0,
                "minReadySeconds": d["spec"].get("minReadySeconds", 0),
                "selector": selector,
                "template": template,
            },
        }
        _set_new_rs_annotations(d, rs, revision)
        _set_replicas_annotations(rs, replicas(d), replicas(d) + max_surge(d))
        return rs

    async def _existing_or_collision(self, r: _Rollout, rs: Obj, collisions: int) -> Obj:
        """The ReplicaSet of that name, if it is ours with our template; otherwise a collision."""
        d = r.deployment
        try:
            existing = await self.client.get(
                "replicasets", meta.name(rs), namespace=meta.namespace(d)
            )
        except errors.NotFound:
            existing = None
        if existing is not None:
            ref = meta.controller_of(existing)
            ours = ref is not None and ref.get("uid") == meta.uid(d)
            if ours and templates_equal(existing["spec"]["template"], d["spec"]["template"]):
                return existing
        # Another template (or owner) holds the name: the next hash includes a new count.
        fresh = meta.deep_copy(d)
        fresh.setdefault("status", {})["collisionCount"] = collisions + 1
        r.deployment = await self.client.update_status("deployments", fresh)
        self.log.info(
            "replica set name collision", deployment=meta.ref(d), replicaset=meta.name(rs)
        )
        raise errors.AlreadyExists(
            f'replica set "{meta.name(rs)}" exists with another template; '
            f"retrying with collision count {collisions + 1}"
        )

    async def _record_revision(self, r: _Rollout, revision: str) -> None:
        if not revision or meta.annotations_of(r.deployment).get(REVISION) == revision:
            return
        d = r.deployment
        r.deployment = await self.client.patch(
            "deployments",
            meta.name(d),
            {"metadata": {"annotations": {REVISION: revision}}},
            namespace=meta.namespace(d),
        )

    async def _put_progressing(self, r: _Rollout, status: str, reason: str, message: str) -> None:
        d = meta.deep_copy(r.deployment)
        cond = util.condition(PROGRESSING, status, reason, message, now=self.clock.now())
        util.set_condition(d.setdefault("status", {}), cond)
        if d["status"] != r.deployment.get("status"):
            r.deployment = await self.client.update_status("deployments", d)

    # -- scaling -------------------------------------------------------------------------------

    async def _scale_rs(self, r: _Rollout, rs: Obj, size: int) -> bool:
        """Set rs to size (and its replica annotations); True when the size changed."""
        d = r.deployment
        resized = replicas(rs) != size
        updated = meta.deep_copy(rs)
        updated["spec"]["replicas"] = size
        annotated = _set_replicas_annotations(updated, replicas(d), replicas(d) + max_surge(d))
        if not resized and not annotated:
            return False
        updated = await self.client.update("replicasets", updated)
        r.replace(updated)
        if resized:
            self._scaling_event(d, updated, "up" if size > replicas(rs) else "down", size)
        return resized

    def _scaling_event(self, d: Obj, rs: Obj, direction: str, size: int) -> None:
        message = f"Scaled {direction} replica set {meta.name(rs)} to {size}"
        self.recorder.event(d, NORMAL, "ScalingReplicaSet", message)
        self.log.info(
            "scaled replica set",
            deployment=meta.ref(d),
            replicaset=meta.name(rs),
            replicas=size,
        )

    async def _sync_scale(self, d: Obj, rs_list: list[Obj]) -> None:
        """Paused, or resized mid-rollout: resize without moving the rollout on."""
        r = await self._get_all(d, rs_list, create=False)
        await self._scale(r)
        if r.deployment["spec"].get("paused"):
            await self._prune_history(r)
        await self._sync_status(r)

    async def _scale(self, r: _Rollout) -> None:
        d = r.deployment
        active = [rs for rs in r.all if replicas(rs) > 0]
        only = self._active_or_latest(r, active)
        if only is not None:
            await self._scale_rs(r, only, replicas(d))
            return
        if r.new is not None and _saturated(d, r.new):
            for rs in [o for o in r.old if replicas(o) > 0]:
                await self._scale_rs(r, rs, 0)
            return
        if is_rolling(d) and active:
            for rs, size in proportional_sizes(d, active):
                await self._scale_rs(r, rs, size)

    @staticmethod
    def _active_or_latest(r: _Rollout, active: list[Obj]) -> Obj | None:
        """The one ReplicaSet to resize when at most one is active; None when several are."""
        if len(active) == 1:
            return active[0]
        if active:
            return None
        if r.new is not None:
            return r.new
        return max(r.old, key=_by_age) if r.old else None

    # -- rolling update ------------------------------------------------------------------------

    async def _rollout_rolling(self, d: Obj, rs_list: list[Obj]) -> None:
        r = await self._get_all(d, rs_list, create=True)
        if await self._reconcile_new(r) or await self._reconcile_old(r):
            await self._sync_rollout_status(r)
            return
        if deployment_complete(r.deployment, r.deployment.get("status", {})):
            await self._prune_history(r)
        await self._sync_rollout_status(r)

    async def _reconcile_new(self, r: _Rollout) -> bool:
        d, new = r.deployment, r.new
        if new is None or replicas(new) == replicas(d):
            return False
        if replicas(new) > replicas(d):
            return await self._scale_rs(r, new, replicas(d))
        return await self._scale_rs(r, new, new_rs_replicas(d, r.all, new))

    async def _reconcile_old(self, r: _Rollout) -> bool:
        d, new = r.deployment, r.new
        if sum(replicas(rs) for rs in r.old) == 0:
            return False
        min_available = replicas(d) - max_unavailable(d)
        new_unavailable = replicas(new) - available_of(new) if new is not None else 0
        room = sum(replicas(rs) for rs in r.all) - min_available - new_unavailable
        if room <= 0:
            return False
        cleaned = await self._drop_unhealthy_old(r, room)
        scaled = await self._scale_down_old(r, min_available)
        return cleaned + scaled > 0

    async def _drop_unhealthy_old(self, r: _Rollout, limit: int) -> int:
        """Scale old ReplicaSets down by their unavailable Pods first: it costs no availability."""
        total = 0
        for rs in sorted(r.old, key=_by_age):
            if total >= limit:
                break
            unhealthy = replicas(rs) - available_of(rs)
            if replicas(rs) == 0 or unhealthy <= 0:
                continue
            step = min(limit - total, unhealthy)
            await self._scale_rs(r, rs, replicas(rs) - step)
            total += step
        return total

    async def _scale_down_old(self, r: _Rollout, min_available: int) -> int:
        """Scale old ReplicaSets down, oldest first, as far as availability allows."""
        available = sum(available_of(rs) for rs in r.all)
        budget = available - min_available
        total = 0
        for rs in sorted(r.old, key=_by_age):
            if total >= budget:
                break
            if replicas(rs) == 0:
                continue
            step = min(replicas(rs), budget - total)
            await self._scale_rs(r, rs, replicas(rs) - step)
            total += step
        return max(total, 0)

    # -- recreate ------------------------------------------------------------------------------

    async def _rollout_recreate(self, d: Obj, rs_list: list[Obj]) -> None:
        r = await self._get_all(d, rs_list, create=False)
        scaled_down = False
        for rs in [o for o in r.old if replicas(o) > 0]:
            scaled_down = await self._scale_rs(r, rs, 0) or scaled_down
        if scaled_down or self._old_pods_running(r):
            await self._sync_rollout_status(r)
            return
        if r.new is None:
            r = await self._get_all(r.deployment, r.all, create=True)
        await self._reconcile_new(r)
        if deployment_complete(r.deployment, r.deployment.get("status", {})):
            await self._prune_history(r)
        await self._sync_rollout_status(r)

    def _old_pods_running(self, r: _Rollout) -> bool:
        """Whether any old ReplicaSet still has a Pod that is not finished (terminating counts)."""
        if any(_status(rs, "replicas") > 0 for rs in r.old):
            return True
        for rs in r.old:
            for pod in self.pods.by_index(util.CONTROLLER_UID_INDEX, meta.uid(rs)):
                if pod.get("status", {}).get("phase") not in ("Succeeded", "Failed"):
                    return True
        return False

    # -- history -------------------------------------------------------------------------------

    async def _prune_history(self, r: _Rollout) -> None:
        """Delete the oldest empty old ReplicaSets beyond revisionHistoryLimit."""
        limit = r.deployment["spec"].get("revisionHistoryLimit")
        if limit is None:
            return
        alive = [rs for rs in r.old if not meta.is_deleting(rs)]
        excess = len(alive) - int(limit)
        if excess <= 0:
            return
        for rs in sorted(alive, key=lambda o: (revision_of(o), *_by_age(o)))[:excess]:
            settled = _count(rs.get("status", {}), "observedGeneration") >= rs["metadata"].get(
                "generation", 1
            )
            if replicas(rs) != 0 or _status(rs, "replicas") != 0 or not settled:
                continue
            try:
                await self.client.delete(
                    "replicasets", meta.name(rs), namespace=meta.namespace(rs), uid=meta.uid(rs)
                )
            except (errors.NotFound, errors.Conflict):
                continue
            self.log.info(
                "deleted old replica set",
                deployment=meta.ref(r.deployment),
                replicaset=meta.name(rs),
            )

    # -- status --------------------------------------------------------------------------------

    async def _note_pause(self, d: Obj) -> Obj:
        """Progressing=Unknown while paused, and once more on resume, so the deadline restarts."""
        status = d.get("status") or {}
        cond = util.get_condition(status, PROGRESSING)
        if not has_progress_deadline(d) or (cond is not None and cond.get("reason") == TIMED_OUT):
            return d
        paused = bool(d["spec"].get("paused"))
        if paused and (cond is None or cond.get("reason") != PAUSED):
            reason, message = PAUSED, "Deployment is paused"
        elif not paused and cond is not None and cond.get("reason") == PAUSED:
            reason, message = RESUMED, "Deployment is resumed"
        else:
            return d
        r = _Rollout(d, None, [])
        await self._put_progressing(r, "Unknown", reason, message)
        return r.deployment

    def calculate_status(self, r: _Rollout) -> Obj:
        d = r.deployment
        all_rs = r.all
        available = sum(_status(rs, "availableReplicas") for rs in all_rs)
        status: Obj = {
            "observedGeneration": d["metadata"].get("generation", 1),
            "replicas": sum(_status(rs, "replicas") for rs in all_rs),
            "updatedReplicas": _status(r.new, "replicas") if r.new is not None else 0,
            "readyReplicas": sum(_status(rs, "readyReplicas") for rs in all_rs),
            "availableReplicas": available,
            "unavailableReplicas": max(0, sum(replicas(rs) for rs in all_rs) - available),
        }
        previous = d.get("status") or {}
        if previous.get("collisionCount"):
            status["collisionCount"] = previous["collisionCount"]
        if previous.get("conditions"):
            status["conditions"] = copy.deepcopy(previous["conditions"])
        now = self.clock.now()
        if available >= replicas(d) - max_unavailable(d):
            cond = util.condition(
                AVAILABLE,
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.",
                now=now,
            )
        else:
            cond = util.condition(
                AVAILABLE,
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.",
                now=now,
            )
        util.set_condition(status, cond)
        return status

    async def _sync_status(self, r: _Rollout) -> None:
        await self._write_status(r, self.calculate_status(r))

    async def _sync_rollout_status(self, r: _Rollout) -> None:
        d = r.deployment
        now = self.clock.now()
        status = self.calculate_status(r)
        if not has_progress_deadline(d):
            util.remove_condition(status, PROGRESSING)
        current = util.get_condition(status, PROGRESSING)
        finished = (
            _count(status, "replicas") == _count(status, "updatedReplicas")
            and current is not None
            and current.get("reason") == NEW_RS_AVAILABLE
        )
        if has_progress_deadline(d) and not finished:
            self._judge_progress(r, status, current, now)
        _copy_replica_failure(status, r.all, now)
        if status == d.get("status"):
            self._requeue_stuck(d, status, now)
            return
        await self._write_status(r, status)

    def _judge_progress(self, r: _Rollout, status: Obj, current: Obj | None, now: float) -> None:
        d = r.deployment
        what = f'ReplicaSet "{meta.name(r.new)}"' if r.new else f'Deployment "{meta.name(d)}"'
        if deployment_complete(d, status):
            message = f"{what} has successfully progressed."
            cond = util.condition(PROGRESSING, "True", NEW_RS_AVAILABLE, message, now=now)
            util.set_condition(status, cond)
        elif deployment_progressing(d, status):
            cond = util.condition(
                PROGRESSING, "True", "ReplicaSetUpdated", f"{what} is progressing.", now=now
            )
            if current is not None and current["status"] == "True":
                cond["lastTransitionTime"] = current.get("lastTransitionTime")
            # Replace rather than merge: progress must move lastUpdateTime, the deadline's base.
            util.remove_condition(status, PROGRESSING)
            util.set_condition(status, cond)
        elif deployment_timed_out(d, status, now):
            cond = util.condition(
                PROGRESSING, "False", TIMED_OUT, f"{what} has timed out progressing.", now=now
            )
            util.set_condition(status, cond)
            self.log.info("deployment exceeded its progress deadline", deployment=meta.ref(d))

    def _requeue_stuck(self, d: Obj, status: Obj, now: float) -> None:
        """Look again when the progress deadline would pass, since no event will say so."""
        cond = util.get_condition(status, PROGRESSING)
        if not has_progress_deadline(d) or cond is None:
            return
        if deployment_complete(d, status) or cond.get("reason") == TIMED_OUT:
            return
        since = parse_rfc3339(cond.get("lastUpdateTime") or cond["lastTransitionTime"])
        after = since + d["spec"]["progressDeadlineSeconds"] - now
        # Timestamps have whole seconds: a second late is never too early.
        self.queue.add_after(object_key(d), max(after, 0.0) + 1.0)

    async def _write_status(self, r: _Rollout, status: Obj) -> None:
        if status == r.deployment.get("status"):
            return
        fresh = meta.deep_copy(r.deployment)
        fresh["status"] = status
        r.deployment = await self.client.update_status("deployments", fresh)


# -- annotations -------------------------------------------------------------------------------


def _set_new_rs_annotations(d: Obj, rs: Obj, revision: int) -> bool:
    """Copy the Deployment's annotations and bring the revision up; True when rs changed."""
    annotations = rs["metadata"].setdefault("annotations", {})
    before = dict(annotations)
    for name, value in meta.annotations_of(d).items():
        if name not in _NOT_COPIED:
            annotations[name] = value
    previous = annotations.get(REVISION, "")
    if revision_of(rs) < revision:
        annotations[REVISION] = str(revision)
        if previous:
            history = [h for h in annotations.get(REVISION_HISTORY, "").split(",") if h]
            history.append(previous)
            while len(",".join(history)) > _REVISION_HISTORY_MAX_CHARS and len(history) > 1:
                history.pop(0)
            annotations[REVISION_HISTORY] = ",".join(history)
    return annotations != before


def _set_replicas_annotations(rs: Obj, desired: int, maximum: int) -> bool:
    annotations = rs["metadata"].setdefault("annotations", {})
    wanted = {DESIRED_REPLICAS: str(desired), MAX_REPLICAS: str(maximum)}
    if all(annotations.get(k) == v for k, v in wanted.items()):
        return False
    annotations.update(wanted)
    return True


def _saturated(d: Obj, rs: Obj) -> bool:
    """The new ReplicaSet alone runs the whole Deployment, all of it available."""
    return (
        _annotation_int(rs, DESIRED_REPLICAS) == replicas(d)
        and replicas(rs) == replicas(d)
        and _status(rs, "availableReplicas") == replicas(d)
    )


def _copy_replica_failure(status: Obj, all_rs: list[Obj], now: float) -> None:
    """A ReplicaSet that cannot create Pods makes its Deployment say so too."""
    for rs in all_rs:
        cond = util.get_condition(rs.get("status", {}), REPLICA_FAILURE)
        if cond is not None and cond.get("status") == "True":
            util.set_condition(
                status,
                util.condition(
                    REPLICA_FAILURE,
                    "True",
                    cond.get("reason", ""),
                    cond.get("message", ""),
                    now=now,
                ),
            )
            return
    util.remove_condition(status, REPLICA_FAILURE)
