"""Recording Events: what a component did to an object, for `kctl describe`.

An EventRecorder never blocks its caller and never fails it: events go on a
bounded queue and a background task writes them. A repeat of the same event
(same object, type, reason and message) within the aggregation window
updates the existing Event's count and lastTimestamp instead of creating a
new one, as Kubernetes does, so a crash-looping Pod shows "BackOff (x12)"
rather than twelve rows. When the queue is full, events are dropped and
counted: losing an Event must never stall a controller.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
from typing import Any

from prometheus_client import Counter

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock, rfc3339
from machinery.log import get_logger

log = get_logger("events")

NORMAL, WARNING = "Normal", "Warning"
DROPPED = Counter(
    "kubelite_events_dropped_total", "Events not written: queue full or API errors.", ["component"]
)


@dataclasses.dataclass
class _Seen:
    name: str
    namespace: str
    count: int
    last: float


class EventRecorder:
    def __init__(
        self,
        client: ApiClient,
        *,
        component: str,
        host: str = "",
        clock: Clock | None = None,
        capacity: int = 1000,
        window: float = 600.0,
    ) -> None:
        self._client = client
        self.component = component
        self._host = host
        self._clock = clock or RealClock()
        self._queue: asyncio.Queue[tuple[dict[str, Any], str, str, str]] = asyncio.Queue(capacity)
        self._seen: collections.OrderedDict[tuple[str, ...], _Seen] = collections.OrderedDict()
        self._window = window
        self._task: asyncio.Task[None] | None = None
        self._counter = 0

    def event(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        """Record that something happened to obj; returns at once."""
        try:
            self._queue.put_nowait((obj, event_type, reason, message))
        except asyncio.QueueFull:
            DROPPED.labels(self.component).inc()
            return
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def flush(self) -> None:
        """Wait until every queued event was written (for tests and shutdown)."""
        while not self._queue.empty() or (self._task is not None and not self._task.done()):
            await asyncio.sleep(0.01)

    async def _drain(self) -> None:
        while not self._queue.empty():
            obj, event_type, reason, message = self._queue.get_nowait()
            try:
                await self._write(obj, event_type, reason, message)
            except errors.ApiError as err:
                DROPPED.labels(self.component).inc()
                log.debug("failed to write event", reason=reason, err=err)

    async def _write(self, obj: dict[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = obj.get("metadata", {})
        namespace = meta.get("namespace") or "default"
        key = (
            obj.get("kind", ""),
            namespace,
            meta.get("name", ""),
            meta.get("uid", ""),
            event_type,
            reason,
            message,
        )
        now = self._clock.now()
        seen = self._seen.get(key)
        if seen is not None and now - seen.last < self._window:
            seen.count += 1
            seen.last = now
            self._seen.move_to_end(key)
            try:
                await self._client.patch(
                    "events",
                    seen.name,
                    {"count": seen.count, "lastTimestamp": rfc3339(now)},
                    namespace=seen.namespace,
                )
                return
            except errors.NotFound:
                pass  # expired or deleted: write a fresh one
        self._counter += 1
        name = f"{meta.get('name', 'unknown')}.{int(now * 1e9) + self._counter:x}"
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {
                "kind": obj.get("kind", ""),
                "apiVersion": obj.get("apiVersion", ""),
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", ""),
                "uid": meta.get("uid", ""),
                "resourceVersion": meta.get("resourceVersion", ""),
            },
            "reason": reason,
            "message": message,
            "type": event_type,
            "source": {"component": self.component, **({"host": self._host} if self._host else {})},
            "firstTimestamp": rfc3339(now),
            "lastTimestamp": rfc3339(now),
            "count": 1,
            "reportingComponent": self.component,
            "reportingInstance": self._host or self.component,
        }
        await self._client.create("events", event, namespace=namespace)
        self._seen[key] = _Seen(name, namespace, 1, now)
        while len(self._seen) > 4096:
            self._seen.popitem(last=False)
