"""Informers: a local, indexed copy of one resource, kept current by list then watch.

An informer lists its resource, then watches from the list's
resourceVersion, applying every event to its cache and telling its
handlers. It never gives up:

* the watch ends or the API server is lost: wait with back-off and watch
  again from the last resourceVersion seen (bookmarks keep it fresh), so no
  event is missed across an API server restart;
* the server answers Expired (that version is compacted or out of its
  window): list again and tell the handlers the difference, as adds,
  updates and deletes, so handlers see a consistent sequence either way.

The cache is indexed by namespace/name (the key), by namespace, and by any
index function a caller adds (for example Pods by spec.nodeName).
Handlers are plain functions called in the informer's task; they should only
record work (enqueue a key) and return.
"""

from __future__ import annotations

import asyncio
import builtins
import collections
import random
from collections.abc import Callable, Iterable
from typing import Any

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock
from machinery.labels import Selector
from machinery.log import get_logger

log = get_logger("informer")

Obj = dict[str, Any]
IndexFunc = Callable[[Obj], Iterable[str]]


def object_key(obj: Obj) -> str:
    meta = obj.get("metadata", {})
    ns = meta.get("namespace", "")
    return f"{ns}/{meta.get('name', '')}" if ns else meta.get("name", "")


class Handlers:
    def __init__(
        self,
        on_add: Callable[[Obj], None] | None = None,
        on_update: Callable[[Obj, Obj], None] | None = None,
        on_delete: Callable[[Obj], None] | None = None,
    ) -> None:
        self.on_add = on_add
        self.on_update = on_update
        self.on_delete = on_delete


class Informer:
    def __init__(
        self,
        client: ApiClient,
        resource: str,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
        resync_period: float = 0.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.resource = resource
        self._namespace = namespace
        self._label_selector = label_selector
        self._field_selector = field_selector
        self._resync = resync_period
        self._clock = clock or RealClock()
        self._rng = rng or random.Random()
        self._items: dict[str, Obj] = {}
        self._indexers: dict[str, IndexFunc] = {
            "namespace": lambda o: [o.get("metadata", {}).get("namespace", "")]
        }
        self._indexes: dict[str, dict[str, set[str]]] = {"namespace": collections.defaultdict(set)}
        self._handlers: list[Handlers] = []
        self.resource_version = ""
        self.synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.relists = 0

    # -- configuration ----------------------------------------------------------------

    def add_handlers(self, handlers: Handlers) -> None:
        self._handlers.append(handlers)
        for obj in list(self._items.values()):
            if handlers.on_add:
                handlers.on_add(obj)

    def add_index(self, name: str, func: IndexFunc) -> None:
        self._indexers[name] = func
        index: dict[str, set[str]] = collections.defaultdict(set)
        for key, obj in self._items.items():
            for value in func(obj):
                index[value].add(key)
        self._indexes[name] = index

    # -- reading ------------------------------------------------------------------------------

    def get(self, name: str, namespace: str = "") -> Obj | None:
        return self._items.get(f"{namespace}/{name}" if namespace else name)

    def get_by_key(self, key: str) -> Obj | None:
        return self._items.get(key)

    def list(self, *, namespace: str = "", selector: Selector | None = None) -> builtins.list[Obj]:
        keys: Iterable[str] = (
            self._indexes["namespace"].get(namespace, ()) if namespace else self._items.keys()
        )
        result = []
        for key in keys:
            obj = self._items[key]
            if selector is None or selector.matches(obj.get("metadata", {}).get("labels") or {}):
                result.append(obj)
        return result

    def by_index(self, name: str, value: str) -> builtins.list[Obj]:
        return [self._items[k] for k in self._indexes[name].get(value, ())]

    def keys(self) -> builtins.list[str]:
        return list(self._items)

    def __len__(self) -> int:
        return len(self._items)

    # -- running --------------------------------------------------------------------------------

    def start(self) -> asyncio.Task[None]:
        self._task = asyncio.create_task(self.run(), name=f"informer-{self.resource}")
        return self._task

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self.synced.wait(), timeout)

    async def run(self) -> None:
        delay = 0.1
        need_list = True
        resync = asyncio.create_task(self._resync_forever()) if self._resync > 0 else None
        try:
            while True:
                try:
                    if need_list:
                        await self._list()
                        need_list = False
                    await self._watch()
                    delay = 0.1
                except errors.Expired:
                    log.debug("watch expired, relisting", resource=self.resource)
                    need_list = True
                    continue
                except errors.ApiError as err:
                    log.warning(
                        "watch failed, retrying",
                        resource=self.resource,
                        err=err,
                        delay_s=round(delay, 2),
                    )
                await self._clock.sleep(delay * (0.5 + self._rng.random()))
                delay = min(delay * 2, 10.0)
        finally:
            if resync is not None:
                resync.cancel()

    async def _list(self) -> None:
        page = await self._client.list_all(
            self.resource,
            namespace=self._namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
        )
        self.relists += 1
        fresh = {object_key(o): o for o in page.items}
        for key in [k for k in self._items if k not in fresh]:
            self._remove(key)
        for key, obj in fresh.items():
            self._upsert(key, obj)
        self.resource_version = page.resource_version
        self.synced.set()

    async def _watch(self) -> None:
        async for event in self._client.watch(
            self.resource,
            namespace=self._namespace,
            label_selector=self._label_selector,
            field_selector=self._field_selector,
            resource_version=self.resource_version,
            allow_bookmarks=True,
        ):
            if event.type != "BOOKMARK":
                key = object_key(event.object)
                if event.type == "DELETED":
                    self._remove(key, event.object)
                else:
                    self._upsert(key, event.object)
            if event.resource_version:
                self.resource_version = event.resource_version

    # -- cache updates ---------------------------------------------------------------------------

    def _upsert(self, key: str, obj: Obj) -> None:
        old = self._items.get(key)
        if old is not None and old.get("metadata", {}).get("resourceVersion") == obj.get(
            "metadata", {}
        ).get("resourceVersion"):
            return
        if old is not None:
            self._unindex(key, old)
        self._items[key] = obj
        self._index(key, obj)
        for h in self._handlers:
            if old is None and h.on_add:
                h.on_add(obj)
            elif old is not None and h.on_update:
                h.on_update(old, obj)

    def _remove(self, key: str, final: Obj | None = None) -> None:
        old = self._items.pop(key, None)
        if old is None:
            return
        self._unindex(key, old)
        for h in self._handlers:
            if h.on_delete:
                h.on_delete(final or old)

    def _index(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                self._indexes[name][value].add(key)

    def _unindex(self, key: str, obj: Obj) -> None:
        for name, func in self._indexers.items():
            for value in func(obj):
                bucket = self._indexes[name].get(value)
                if bucket is not None:
                    bucket.discard(key)
                    if not bucket:
                        del self._indexes[name][value]

    async def _resync_forever(self) -> None:
        while True:
            await self._clock.sleep(self._resync)
            for obj in list(self._items.values()):
                for h in self._handlers:
                    if h.on_update:
                        h.on_update(obj, obj)


class InformerFactory:
    """One informer per resource (and selectors), shared by every controller of a process.

    Several controllers watching Pods then cost one list and one watch, and
    see the same cache.
    """

    def __init__(
        self, client: ApiClient, *, clock: Clock | None = None, resync_period: float = 0.0
    ) -> None:
        self._client = client
        self._clock = clock
        self._resync = resync_period
        self._informers: dict[tuple[str, str, str, str], Informer] = {}

    def informer(
        self,
        resource: str,
        *,
        namespace: str = "",
        label_selector: str = "",
        field_selector: str = "",
    ) -> Informer:
        key = (resource, namespace, label_selector, field_selector)
        if key not in self._informers:
            self._informers[key] = Informer(
                self._client,
                resource,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                resync_period=self._resync,
                clock=self._clock,
            )
        return self._informers[key]

    def start(self) -> None:
        for informer in self._informers.values():
            if informer._task is None:
                informer.start()

    async def wait_synced(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(
            asyncio.gather(*(i.synced.wait() for i in self._informers.values())), timeout
        )

    async def stop(self) -> None:
        for informer in self._informers.values():
            await informer.stop()
