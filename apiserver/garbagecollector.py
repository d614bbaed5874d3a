"""Cascading deletion through ownerReferences.

The collector follows every watch cache and keeps an index from an owner's
uid to the objects that name it in metadata.ownerReferences. It acts in three
cases, each decided again against the store before anything is deleted, since
caches of different resources may lag one another:

* background: an object none of whose owners exists any more is deleted
  (an object with some owners left only loses the dangling references);
* foreground: an owner being deleted with the foregroundDeletion finalizer
  has its dependents deleted (in foreground too) and loses the finalizer once
  none is left, which completes its deletion;
* orphan: an owner being deleted with the orphan finalizer has its reference
  removed from every dependent, then loses the finalizer.

Work is keyed by (resource, namespace, name) on a queue, so a burst of events
about one object costs one pass.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

from apiserver.registry import FOREGROUND, ORPHAN, Registry
from apiserver.watchcache import DELETED, CacheEvent, WatchCache
from machinery import errors, kinds
from machinery.clock import Clock, RealClock
from machinery.log import get_logger

log = get_logger("apiserver.gc")

Key = tuple[str, str, str]  # resource, namespace, name


class GarbageCollector:
    def __init__(
        self, registry: Registry, caches: dict[str, WatchCache], *, clock: Clock | None = None
    ) -> None:
        self._registry = registry
        self._caches = caches
        self._clock = clock or RealClock()
        self._dependents: dict[str, set[Key]] = collections.defaultdict(set)
        self._owners_of: dict[Key, set[str]] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        for cache in self._caches.values():
            for item in cache.objects():
                self._observe(cache.resource, item.obj, deleted=False)
            cache.add_listener(lambda event, r=cache.resource: self._on_event(r, event))
        self._task = asyncio.create_task(self._work(), name="garbage-collector")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    # -- indexing -------------------------------------------------------------------------

    def _on_event(self, resource: str, event: CacheEvent) -> None:
        self._observe(resource, event.current.obj, deleted=event.type == DELETED)

    def _observe(self, resource: str, obj: dict[str, Any], *, deleted: bool) -> None:
        meta = obj["metadata"]
        key: Key = (resource, meta.get("namespace", ""), meta["name"])
        for owner_uid in self._owners_of.pop(key, set()):
            self._dependents[owner_uid].discard(key)
            if not self._dependents[owner_uid]:
                del self._dependents[owner_uid]
        if deleted:
            for dependent in list(self._dependents.get(meta.get("uid", ""), ())):
                self._enqueue(dependent)
            for owner in meta.get("ownerReferences") or []:
                self._enqueue_owner(obj, owner)
            return
        owners = {o["uid"] for o in meta.get("ownerReferences") or [] if o.get("uid")}
        if owners:
            self._owners_of[key] = owners
            for owner_uid in owners:
                self._dependents[owner_uid].add(key)
            self._enqueue(key)
        if meta.get("deletionTimestamp") and {FOREGROUND, ORPHAN} & set(
            meta.get("finalizers") or []
        ):
            self._enqueue(key)

    def _enqueue_owner(self, dependent: dict[str, Any], owner: dict[str, Any]) -> None:
        """A dependent went away: its owner may be waiting for it in foreground deletion."""
        kind = kinds.by_kind(owner.get("kind", ""))
        if kind is not None:
            namespace = dependent["metadata"].get("namespace", "") if kind.namespaced else ""
            self._enqueue((kind.resource, namespace, owner.get("name", "")))

    def _enqueue(self, key: Key) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    # -- processing ---------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            try:
                await self._process(key)
            except errors.NotFound:
                pass
            except errors.ApiError as err:
                log.warning("garbage collection failed, will retry", key="/".join(key), err=err)
                asyncio.get_running_loop().call_later(1.0, self._enqueue, key)
            except Exception as err:  # noqa: BLE001 - keep collecting whatever one object does
                log.error(
                    "garbage collection failed", key="/".join(key), err=repr(err), exc_info=True
                )

    async def _process(self, key: Key) -> None:
        resource, namespace, name = key
        kind = kinds.by_resource(resource)
        assert kind is not None
        obj = await self._registry.get(kind, namespace, name)
        meta = obj["metadata"]
        if meta.get("deletionTimestamp"):
            finalizers = meta.get("finalizers") or []
            if ORPHAN in finalizers:
                await self._orphan_dependents(obj)
                await self._drop_finalizer(kind, obj, ORPHAN)
                return
            if FOREGROUND in finalizers:
                if await self._delete_dependents(obj):
                    await self._drop_finalizer(kind, obj, FOREGROUND)
                return
        await self._collect_if_orphaned(kind, obj)

    async def _collect_if_orphaned(self, kind: kinds.Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        refs = meta.get("ownerReferences") or []
        if not refs:
            return
        alive, dangling, owner_deleting_foreground = [], [], False
        for ref in refs:
            owner = await self._live_owner(ref, meta.get("namespace", ""))
            if owner is None:
                dangling.append(ref)
            else:
                alive.append(ref)
                owner_deleting_foreground |= bool(
                    owner["metadata"].get("deletionTimestamp")
                    and FOREGROUND in (owner["metadata"].get("finalizers") or [])
                )
        if not dangling:
            return
        if alive:
            await self._registry.patch(
                kind,
                meta.get("namespace", ""),
                meta["name"],
                {"metadata": {"ownerReferences": alive}},
            )
            return
        log.info("deleting object whose owners are gone", resource=kind.resource, key=_ref(meta))
        await self._registry.delete(
            kind, meta.get("namespace", ""), meta["name"], propagation="Background", uid=meta["uid"]
        )

    async def _live_owner(self, ref: dict[str, Any], namespace: str) -> dict[str, Any] | None:
        kind = kinds.by_kind(ref.get("kind", ""))
        if kind is None:
            return None
        try:
            owner = await self._registry.get(
                kind, namespace if kind.namespaced else "", ref.get("name", "")
            )
        except errors.NotFound:
            return None
        return owner if owner["metadata"].get("uid") == ref.get("uid") else None

    def _dependents_of(self, owner: dict[str, Any]) -> list[Key]:
        return sorted(self._dependents.get(owner["metadata"].get("uid", ""), ()))

    async def _delete_dependents(self, owner: dict[str, Any]) -> bool:
        """Delete the owner's dependents in foreground; True once none is left."""
        remaining = False
        for resource, namespace, name in self._dependents_of(owner):
            kind = kinds.by_resource(resource)
            assert kind is not None
            try:
                await self._registry.delete(kind, namespace, name, propagation="Foreground")
                remaining = True
            except errors.NotFound:
                continue
        return not remaining

    async def _orphan_dependents(self, owner: dict[str, Any]) -> None:
        owner_uid = owner["metadata"]["uid"]
        for resource, namespace, name in self._dependents_of(owner):
            kind = kinds.by_resource(resource)
            assert kind is not None
            try:
                dependent = await self._registry.get(kind, namespace, name)
            except errors.NotFound:
                continue
            refs = dependent["metadata"].get("ownerReferences") or []
            kept = [r for r in refs if r.get("uid") != owner_uid]
            if len(kept) != len(refs):
                await self._registry.patch(
                    kind, namespace, name, {"metadata": {"ownerReferences": kept or None}}
                )

    async def _drop_finalizer(self, kind: kinds.Kind, obj: dict[str, Any], finalizer: str) -> None:
        meta = obj["metadata"]
        kept = [f for f in meta.get("finalizers") or [] if f != finalizer]
        await self._registry.patch(
            kind,
            meta.get("namespace", ""),
            meta["name"],
            {"metadata": {"finalizers": kept or None, "resourceVersion": meta["resourceVersion"]}},
        )
        log.info(
            "finished cascading deletion", resource=kind.resource, key=_ref(meta), policy=finalizer
        )


def _ref(meta: dict[str, Any]) -> str:
    ns = meta.get("namespace", "")
    return f"{ns}/{meta['name']}" if ns else meta["name"]
