"""What the workload controllers share: Pod readiness, expectations, claiming, conditions.

Readiness and availability. A Pod is ready when its Ready condition is True;
it is available once it has been ready for minReadySeconds, measured from the
Ready condition's lastTransitionTime against the controller's clock.

Expectations. A controller that creates or deletes Pods learns the outcome
twice: from the API call and, later, from its informer. Until the informer
has caught up, its cache undercounts what it just created (or overcounts what
it just deleted), and acting on that cache would overshoot. So each owner
records what it has issued and not yet observed, and the owner is acted on
only when nothing is outstanding. Outstanding work expires after a TTL (five
minutes, as in Kubernetes) so that a lost watch event stalls an owner for a
while, never for good.

Claiming. An owner's dependents are the objects whose controller
ownerReference names its uid and that still match its selector; matching
objects without a controller reference are adopted (a patch adds the
reference), owned ones that stop matching are released (a patch removes it).
Both patches carry the resourceVersion they were decided on, so a decision
made on a stale cache fails with Conflict instead of clobbering a newer write.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339, rfc3339
from machinery.informer import Informer
from machinery.labels import Selector

Obj = dict[str, Any]

# The index every workload controller puts on its dependents' informer: the uid of
# an object's controller, or "" for an orphan (so orphans are one lookup away too).
CONTROLLER_UID_INDEX = "controller-uid"
ORPHAN = ""
EXPECTATIONS_TTL = 300.0


def controller_uid(obj: Obj) -> list[str]:
    ref = meta.controller_of(obj)
    return [ref.get("uid", "") if ref else ORPHAN]


def index_by_controller(informer: Informer) -> None:
    """Index informer by controller uid; several controllers may ask for the same index."""
    informer.add_index(CONTROLLER_UID_INDEX, controller_uid)


# -- Pods --------------------------------------------------------------------------------------


def is_pod_active(pod: Obj) -> bool:
    """Neither finished nor on its way out: the Pods that count toward replicas."""
    phase = pod.get("status", {}).get("phase")
    return phase not in ("Succeeded", "Failed") and not meta.is_deleting(pod)


def is_pod_ready(pod: Obj) -> bool:
    cond = meta.condition(pod, "Ready")
    return cond is not None and cond.get("status") == "True"


def ready_since(pod: Obj) -> float | None:
    """When the Pod last became ready, or None when it is not ready."""
    if not is_pod_ready(pod):
        return None
    stamp = (meta.condition(pod, "Ready") or {}).get("lastTransitionTime")
    return parse_rfc3339(stamp) if stamp else 0.0


def is_pod_available(pod: Obj, min_ready_seconds: int, now: float) -> bool:
    since = ready_since(pod)
    if since is None:
        return False
    return min_ready_seconds <= 0 or since + min_ready_seconds <= now


def seconds_until_available(pod: Obj, min_ready_seconds: int, now: float) -> float | None:
    """How long until a ready Pod turns available; None when it is not ready or already is."""
    since = ready_since(pod)
    if since is None or min_ready_seconds <= 0:
        return None
    left = since + min_ready_seconds - now
    return left if left > 0 else None


def restart_count(pod: Obj) -> int:
    statuses = pod.get("status", {}).get("containerStatuses") or []
    return sum(int(s.get("restartCount") or 0) for s in statuses)


def created_at(obj: Obj) -> float:
    stamp = obj.get("metadata", {}).get("creationTimestamp")
    return parse_rfc3339(stamp) if stamp else 0.0


# -- selectors ---------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _parse_selector(text: str) -> Selector:
    return Selector.from_label_selector(json.loads(text))


def selector_of(obj: Obj) -> Selector:
    """The object's spec.selector; a malformed one selects nothing (validation refuses it)."""
    raw = obj.get("spec", {}).get("selector")
    if raw is None:
        return Selector.nothing()
    try:
        return _parse_selector(json.dumps(raw, sort_keys=True))
    except ValueError:
        return Selector.nothing()


# -- int or percent ----------------------------------------------------------------------------


def scaled_value(value: int | str | None, total: int, *, round_up: bool) -> int:
    """An absolute count or a percentage of total ("25%"), rounded as asked."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    text = str(value).strip()
    if text.endswith("%"):
        exact = int(text[:-1]) * total / 100
        return math.ceil(exact) if round_up else math.floor(exact)
    return int(text)


def round_half_away(value: float) -> int:
    """Rounding as Go's math.Round does it, which proportional scaling relies on."""
    return int(math.floor(value + 0.5)) if value >= 0 else -int(math.floor(-value + 0.5))


# -- expectations ------------------------------------------------------------------------------


@dataclasses.dataclass
class _Outstanding:
    creations: int
    deletions: set[str]
    since: float


class Expectations:
    """Per-owner creations and deletions issued and not yet seen through the informer.

    Creations are a count (a generated name is unknown until the create
    returns, and its watch event may come first); deletions are the keys of the
    Pods deleted, so seeing one twice (deletionTimestamp, then DELETED) lowers
    them once.
    """

    def __init__(self, clock: Clock, *, ttl: float = EXPECTATIONS_TTL) -> None:
        self._clock = clock
        self._ttl = ttl
        self._by_owner: dict[str, _Outstanding] = {}

    def satisfied(self, owner: str) -> bool:
        """True when nothing is outstanding for owner, or what is outstanding expired."""
        entry = self._by_owner.get(owner)
        if entry is None or (entry.creations <= 0 and not entry.deletions):
            return True
        return self._clock.monotonic() - entry.since > self._ttl

    def expect(self, owner: str, *, creations: int = 0, deletions: Iterable[str] = ()) -> None:
        self._by_owner[owner] = _Outstanding(creations, set(deletions), self._clock.monotonic())

    def creation_observed(self, owner: str, count: int = 1) -> None:
        entry = self._by_owner.get(owner)
        if entry is not None:
            entry.creations = max(0, entry.creations - count)

    def deletion_observed(self, owner: str, pod_key: str) -> None:
        entry = self._by_owner.get(owner)
        if entry is not None:
            entry.deletions.discard(pod_key)

    def pending_creations(self, owner: str) -> int:
        entry = self._by_owner.get(owner)
        return entry.creations if entry is not None and not self._expired(entry) else 0

    def pending_deletions(self, owner: str) -> frozenset[str]:
        entry = self._by_owner.get(owner)
        if entry is None or self._expired(entry):
            return frozenset()
        return frozenset(entry.deletions)

    def forget(self, owner: str) -> None:
        self._by_owner.pop(owner, None)

    def _expired(self, entry: _Outstanding) -> bool:
        return self._clock.monotonic() - entry.since > self._ttl


# -- claiming ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Claimer:
    """Sorts an owner's candidates into its dependents, adopting and releasing on the way.

    can_adopt is asked once, before the first adoption, whether the owner
    (read afresh from the API) may still take objects: an owner being deleted
    must not adopt, and a cache can be late to say so.
    """

    client: ApiClient
    resource: str
    owner: Obj
    selector: Selector
    can_adopt: Callable[[], Awaitable[bool]]
    _adoption_allowed: bool | None = None

    async def claim(self, candidates: Iterable[Obj]) -> list[Obj]:
        owner_uid = meta.uid(self.owner)
        claimed = []
        for obj in candidates:
            ref = meta.controller_of(obj)
            matches = self.selector.matches(meta.labels(obj))
            if ref is not None and ref.get("uid") == owner_uid:
                if matches or meta.is_deleting(self.owner):
                    claimed.append(obj)
                else:
                    await self._release(obj)
            elif ref is None and matches and not meta.is_deleting(obj):
                adopted = await self._adopt(obj)
                if adopted is not None:
                    claimed.append(adopted)
        return claimed

    async def _adopt(self, obj: Obj) -> Obj | None:
        if meta.is_deleting(self.owner):
            return None
        if self._adoption_allowed is None:
            self._adoption_allowed = await self.can_adopt()
        if not self._adoption_allowed:
            return None
        try:
            return await self._patch_refs(
                obj, [*meta.owner_references(obj), meta.owner_reference(self.owner)]
            )
        except errors.NotFound:
            return None

    async def _release(self, obj: Obj) -> None:
        owner_uid = meta.uid(self.owner)
        refs = [r for r in meta.owner_references(obj) if r.get("uid") != owner_uid]
        try:
            await self._patch_refs(obj, refs)
        except errors.NotFound:
            pass

    async def _patch_refs(self, obj: Obj, refs: list[Obj]) -> Obj:
        # Pinned to the version the decision was made on: a stale cache fails with Conflict.
        patch = {
            "metadata": {"ownerReferences": refs, "resourceVersion": meta.resource_version(obj)}
        }
        return await self.client.patch(
            self.resource, meta.name(obj), patch, namespace=meta.namespace(obj)
        )


async def owner_still_current(client: ApiClient, resource: str, owner: Obj) -> bool:
    """The owner exists with the same uid and is not being deleted, read from the API."""
    try:
        fresh = await client.get(resource, meta.name(owner), namespace=meta.namespace(owner))
    except errors.NotFound:
        return False
    return meta.uid(fresh) == meta.uid(owner) and not meta.is_deleting(fresh)


def resolve_controller(informer: Informer, obj: Obj, kind: str) -> Obj | None:
    """The cached owner of kind that controls obj, if its uid still matches."""
    ref = meta.controller_of(obj)
    if ref is None or ref.get("kind") != kind:
        return None
    owner = informer.get(ref.get("name", ""), meta.namespace(obj))
    if owner is None or meta.uid(owner) != ref.get("uid"):
        return None
    return owner


def owners_selecting(informer: Informer, obj: Obj) -> list[Obj]:
    """The cached objects in obj's namespace whose selector matches obj's labels."""
    labels = meta.labels(obj)
    return [
        owner
        for owner in informer.list(namespace=meta.namespace(obj))
        if selector_of(owner).matches(labels)
    ]


# -- conditions --------------------------------------------------------------------------------


def get_condition(status: Obj, kind: str) -> Obj | None:
    for cond in status.get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None


def set_condition(status: Obj, new: Obj) -> None:
    """Put new in status.conditions, keeping lastTransitionTime while the status holds.

    A condition with the same status and reason as the current one changes
    nothing: its times mark when the state began, not when it was last seen.
    """
    current = get_condition(status, new["type"])
    if current is not None and (current["status"], current.get("reason")) == (
        new["status"],
        new.get("reason"),
    ):
        return
    if current is not None and current["status"] == new["status"]:
        new = {**new, "lastTransitionTime": current.get("lastTransitionTime")}
    remove_condition(status, new["type"])
    status.setdefault("conditions", []).append(new)


def remove_condition(status: Obj, kind: str) -> None:
    conditions = [c for c in status.get("conditions") or [] if c.get("type") != kind]
    if conditions:
        status["conditions"] = conditions
    else:
        status.pop("conditions", None)


def condition(
    kind: str, status: str, reason: str, message: str, *, now: float, update_time: bool = True
) -> Obj:
    """A condition stamped now; ReplicaSet conditions have no lastUpdateTime."""
    stamp = rfc3339(now)
    cond: Obj = {"type": kind, "status": status}
    if update_time:
        cond["lastUpdateTime"] = stamp
    cond.update(lastTransitionTime=stamp, reason=reason, message=message)
    return cond
