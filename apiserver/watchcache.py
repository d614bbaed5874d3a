"""One etcd watch per resource, fanned out to any number of API watchers.

Each WatchCache lists its resource once, then follows a single etcd watch on
the resource's key prefix. It keeps the current objects (for cached lists and
for the garbage collector) and a bounded window of recent events. A client
watch from resourceVersion R is served from that window when the window
still holds everything after R; otherwise it fails with Expired and the
client relists. A thousand watchers therefore cost a thousand queue puts
per change, never a thousand etcd watches.

Every event is serialized once, as the WatchEvent message the gRPC layer
sends, and the same bytes go to every watcher. A watcher whose queue fills up
(a client that stopped reading) is closed rather than allowed to hold memory;
its client resumes from the last resourceVersion it saw.

Invariants: events reach watchers in etcd revision order; a watcher never
sees an event twice nor misses one between its start revision and its close.

A cache given a Transformer (the Secrets cache, under encryption at rest) opens
each stored value before decoding it; the others decode etcd's bytes as they
are. A value that cannot be opened (a key missing from the key file) is logged
as an error and left out: that object is absent from a fresh list, or keeps its
last readable state, and its watchers get no event for the change, while the
rest of the resource is served as usual.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
from collections.abc import Callable, Iterable
from typing import Any

from apiserver import codec
from apiserver.encryption import DecryptError, Transformer
from apiserver.store import Compacted, KeyValue, Store, StoreError, WatchBatch
from machinery import errors
from machinery.api import api_pb2
from machinery.clock import Clock, RealClock
from machinery.fields import FieldSelector
from machinery.labels import Selector
from machinery.log import get_logger

log = get_logger("apiserver.watchcache")

ADDED, MODIFIED, DELETED, BOOKMARK = "ADDED", "MODIFIED", "DELETED", "BOOKMARK"


@dataclasses.dataclass(slots=True)
class Cached:
    """An object as stored: parsed for filtering, raw for sending."""

    key: str
    obj: dict[str, Any]
    raw: bytes
    revision: int

    @property
    def namespace(self) -> str:
        return self.obj.get("metadata", {}).get("namespace", "")

    @property
    def labels(self) -> dict[str, str]:
        return self.obj.get("metadata", {}).get("labels") or {}


@dataclasses.dataclass(slots=True)
class CacheEvent:
    type: str
    current: Cached
    previous: Cached | None
    revision: int
    _wire: dict[str, bytes] = dataclasses.field(default_factory=dict)

    def wire(self, event_type: str) -> bytes:
        """The serialized WatchEvent for this change under the given type, built once."""
        data = self._wire.get(event_type)
        if data is None:
            data = api_pb2.WatchEvent(type=event_type, object=self.current.raw).SerializeToString()
            self._wire[event_type] = data
        return data


@dataclasses.dataclass(frozen=True)
class WatchFilter:
    namespace: str = ""
    labels: Selector | None = None
    fields: FieldSelector | None = None

    def matches(self, item: Cached | None) -> bool:
        if item is None:
            return False
        if self.namespace and item.namespace != self.namespace:
            return False
        if (
            self.labels is not None
            and not self.labels.empty
            and not self.labels.matches(item.labels)
        ):
            return False
        return self.fields is None or self.fields.empty or self.fields.matches(item.obj)

    @property
    def everything(self) -> bool:
        return (
            not self.namespace
            and (self.labels is None or self.labels.empty)
            and (self.fields is None or self.fields.empty)
        )


_CLOSED = object()


class Watcher:
    """One client's view of a WatchCache; iterate to get serialized WatchEvents."""

    def __init__(self, cache: WatchCache, filt: WatchFilter, capacity: int) -> None:
        self._cache = cache
        self.filter = filt
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        self.closed_reason: errors.ApiError | None = None
        self._closed = False
        # Synthetic ADDED events for the state at subscription, sent before the queue.
        self.initial: list[bytes] = []
        # The watch's start: only changes after this revision are sent.
        self.since = 0

    def offer(self, event: CacheEvent) -> None:
        """Queue the event in the form this watcher should see it, if at all."""
        if self._closed or event.revision <= self.since:
            # A watch from a version the cache has not reached yet must not be sent the
            # events up to that version when the cache catches up.
            return
        if self.filter.everything:
            wire = event.wire(event.type)
        else:
            now = event.type != DELETED and self.filter.matches(event.current)
            before = self.filter.matches(event.previous)
            if now and before:
                wire = event.wire(MODIFIED)
            elif now:
                wire = event.wire(ADDED)
            elif before:
                wire = event.wire(DELETED)
            else:
                return
        try:
            self._queue.put_nowait(wire)
        except asyncio.QueueFull:
            self.close(None)
            self._cache.metrics_overflow()

    def close(self, reason: errors.ApiError | None) -> None:
        if self._closed:
            return
        self._closed = True
        self.closed_reason = reason
        # Make room for the end marker even when the queue is full.
        while self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(_CLOSED)

    async def next(self, timeout: float) -> bytes | None:
        """The next serialized event; None on timeout; StopAsyncIteration once closed."""
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if item is _CLOSED:
            if self.closed_reason is not None:
                raise self.closed_reason
            raise StopAsyncIteration
        return item

    def stop(self) -> None:
        self._closed = True
        self._cache.unsubscribe(self)


class WatchCache:
    def __init__(
        self,
        store: Store,
        *,
        resource: str,
        prefix: str,
        capacity: int = 10_000,
        watcher_capacity: int = 10_000,
        clock: Clock | None = None,
        on_overflow: Callable[[], None] | None = None,
        transformer: Transformer | None = None,
    ) -> None:
        self._store = store
        self._transformer = transformer
        self.resource = resource
        self._prefix = prefix
        self._objects: dict[str, Cached] = {}
        self._window: collections.deque[CacheEvent] = collections.deque(maxlen=capacity)
        # Every change after window_start is in the window (or the window is empty and
        # nothing happened since).
        self._window_start = 0
        self.revision = 0
        self._watchers: set[Watcher] = set()
        self._watcher_capacity = watcher_capacity
        self._listeners: list[Callable[[CacheEvent], None]] = []
        self._clock = clock or RealClock()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.ready = asyncio.Event()
        self._on_overflow = on_overflow

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"watchcache-{self.resource}")

    async def stop(self) -> None:
        self._stopping = True
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        for watcher in list(self._watchers):
            watcher.close(errors.Unavailable("the API server is shutting down"))

    async def wait_ready(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self.ready.wait(), timeout)
        except TimeoutError as err:
            raise errors.Unavailable(
                f"the {self.resource} cache is not ready: etcd has not answered yet"
            ) from err

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                if not self.ready.is_set():
                    await self._relist()
                async for batch in self._store.watch(
                    self._prefix, start_revision=self.revision + 1
                ):
                    self._apply(batch)
                    delay = 0.1
            except Compacted:
                log.warning("watch window compacted, relisting", resource=self.resource)
                self._reset(errors.Expired("the watch cache was reset: relist and watch again"))
            except StoreError as err:
                log.warning("etcd watch broken, retrying", resource=self.resource, err=err)
            except asyncio.CancelledError:
                # The store closed the connection this watch ran on (it moved to another
                # etcd member): that cancels the watch call, not this cache. Only stop()
                # ends the loop.
                if self._stopping:
                    raise
                log.warning(
                    "etcd watch cancelled under the cache, retrying", resource=self.resource
                )
            await self._clock.sleep(delay)
            delay = min(delay * 2, 5.0)

    def _reset(self, reason: errors.ApiError) -> None:
        self.ready.clear()
        for watcher in list(self._watchers):
            watcher.close(reason)
        self._watchers.clear()

    async def _relist(self) -> None:
        objects: dict[str, Cached] = {}
        start, revision = "", 0
        while True:
            page = await self._store.list(self._prefix, revision=revision, limit=5000, start=start)
            revision = revision or page.revision
            for kv in page.items:
                value = kv.value if self._transformer is None else self._open(kv)
                if value is None:
                    continue
                obj = codec.decode(value, kv.mod_revision)
                raw = codec.with_version(value, kv.mod_revision)
                objects[kv.key] = Cached(kv.key, obj, raw, kv.mod_revision)
            if not page.more:
                break
            start = page.items[-1].key + "\0"
        self._objects = objects
        self._window.clear()
        self._window_start = revision
        self.revision = revision
        self.ready.set()
        log.debug("cache listed", resource=self.resource, objects=len(objects), revision=revision)

    # -- applying etcd changes ----------------------------------------------------

    def _apply(self, batch: WatchBatch) -> None:
        if not batch.events:
            # A progress notification: nothing changed here up to this revision.
            self.revision = max(self.revision, batch.revision)
            return
        for change in batch.events:
            kv = change.kv
            previous = self._objects.get(kv.key)
            if change.kind == "delete":
                if previous is None:
                    log.warning("delete of an object the cache never saw", key=kv.key)
                    self.revision = kv.mod_revision
                    continue
                # The final state is the last one seen, at the revision of the delete.
                del self._objects[kv.key]
                obj = dict(previous.obj)
                obj["metadata"] = {**obj["metadata"], "resourceVersion": str(kv.mod_revision)}
                raw = json.dumps(obj).encode()
                current = Cached(kv.key, obj, raw, kv.mod_revision)
                event = CacheEvent(DELETED, current, previous, kv.mod_revision)
            else:
                value = kv.value if self._transformer is None else self._open(kv)
                if value is None:
                    self.revision = kv.mod_revision
                    continue
                obj = codec.decode(value, kv.mod_revision)
                current = Cached(
                    kv.key, obj, codec.with_version(value, kv.mod_revision), kv.mod_revision
                )
                self._objects[kv.key] = current
                kind = ADDED if change.created or previous is None else MODIFIED
                event = CacheEvent(kind, current, previous, kv.mod_revision)
            self._record(event)
            self.revision = kv.mod_revision

    def _open(self, kv: KeyValue) -> bytes | None:
        """The plaintext of a sealed value; None (logged) when it cannot be opened."""
        assert self._transformer is not None
        try:
            return self._transformer.from_storage(kv.value, context=kv.key.encode())
        except DecryptError as err:
            log.error(
                "failed to decrypt a stored object, leaving it out of the cache",
                resource=self.resource,
                key=kv.key,
                revision=kv.mod_revision,
                err=err,
            )
            return None

    def _record(self, event: CacheEvent) -> None:
        if len(self._window) == self._window.maxlen:
            self._window_start = self._window[0].revision
        self._window.append(event)
        for watcher in list(self._watchers):
            watcher.offer(event)
        for listener in self._listeners:
            listener(event)

    def forget_before(self, revision: int) -> None:
        """etcd was compacted at revision: watches from before it can no longer be served."""
        while self._window and self._window[0].revision <= revision:
            self._window_start = self._window.popleft().revision
        self._window_start = max(self._window_start, min(revision, self.revision))

    # -- serving ------------------------------------------------------------------------

    def subscribe(self, filt: WatchFilter, resource_version: str) -> Watcher:
        watcher = Watcher(self, filt, self._watcher_capacity)
        if resource_version in ("", "0"):
            watcher.since = self.revision
            for item in self._objects.values():
                if filt.matches(item):
                    wire = api_pb2.WatchEvent(type=ADDED, object=item.raw).SerializeToString()
                    watcher.initial.append(wire)
        else:
            since = _parse_revision(resource_version)
            watcher.since = since
            if since < self._window_start:
                raise errors.Expired(
                    f"too old resource version: {since} (the oldest this server can "
                    f"watch from is {self._window_start})"
                )
            for event in self._window:
                if event.revision > since:
                    watcher.offer(event)
        self._watchers.add(watcher)
        return watcher

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.discard(watcher)

    def add_listener(self, listener: Callable[[CacheEvent], None]) -> None:
        """Call listener synchronously on every change, after watchers were offered it."""
        self._listeners.append(listener)

    def objects(self) -> Iterable[Cached]:
        return self._objects.values()

    def get(self, key: str) -> Cached | None:
        return self._objects.get(key)

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    def metrics_overflow(self) -> None:
        if self._on_overflow:
            self._on_overflow()


def _parse_revision(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise errors.BadRequest(f"invalid resourceVersion {text!r}: must be a number") from None
    if value < 0:
        raise errors.BadRequest(f"invalid resourceVersion {text!r}: must not be negative")
    return value
