"""The scheduling queue: which Pod to try next, and when to try a failed one again.

Three places a pending Pod can be, plus "in flight" while a cycle handles it:

  active         a heap ordered by spec.priority (higher first), then by the
                 time the Pod entered the queue (earlier first), then FIFO;
                 pop() takes from here and waits while it is empty.
  backoff        Pods that failed recently, ordered by when their back-off
                 ends: 1 s after the first failed attempt, doubling per
                 attempt up to 10 s. run() moves them to active when it ends.
  unschedulable  Pods no node could take. They stay until a cluster event
                 that may help them (move_all_to_active_or_backoff) or until
                 they have waited max_unschedulable_duration (5 min), and
                 then go to active, or to backoff if it has not yet ended.

An event is matched against the plugins that rejected the Pod: a Pod refused
only for "Insufficient cpu" moves when a Pod is deleted or a node added,
not when a node's labels change. A Pod rejected by no plugin in particular
moves on any event.

No wake-up is lost between pop() and the Pod's failure: every move request
records the scheduling cycle it happened in, and a Pod that failed in a
cycle not later than the last move request goes to backoff, not to
unschedulable, because the event it was waiting for may already be past.

All time comes from the injected Clock (monotonic seconds). Entries removed
from a heap are left behind and skipped when they surface (lazy deletion),
so add, update and delete are O(log n).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import Mapping

from machinery.clock import Clock
from scheduler.framework import WILDCARD, ClusterEvent
from scheduler.podinfo import PodInfo, PodUID

DEFAULT_INITIAL_BACKOFF = 1.0
DEFAULT_MAX_BACKOFF = 10.0
DEFAULT_MAX_UNSCHEDULABLE_DURATION = 300.0
UNSCHEDULABLE_FLUSH_INTERVAL = 30.0


@dataclasses.dataclass(eq=False, slots=True)
class QueuedPodInfo:
    pod: PodInfo
    timestamp: float  # when it last entered the queue; orders active, starts the back-off
    added: float  # when it first entered the queue, for create-to-bind latency
    attempts: int = 0
    cycle: int = 0  # the scheduling cycle that last popped it
    unschedulable_plugins: frozenset[str] = frozenset()
    updated_in_flight: bool = False

    @property
    def uid(self) -> PodUID:
        return self.pod.uid


class SchedulingQueue:
    def __init__(
        self,
        *,
        clock: Clock,
        plugin_events: Mapping[str, tuple[ClusterEvent, ...]] | None = None,
        initial_backoff: float = DEFAULT_INITIAL_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        max_unschedulable_duration: float = DEFAULT_MAX_UNSCHEDULABLE_DURATION,
    ) -> None:
        if not 0 < initial_backoff <= max_backoff:
            raise ValueError(
                f"back-off must satisfy 0 < initial ({initial_backoff}) <= max ({max_backoff})"
            )
        self._clock = clock
        self._plugin_events = dict(plugin_events or {})
        self._initial_backoff = initial_backoff
        self._max_backoff = max_backoff
        self._max_unschedulable = max_unschedulable_duration
        self._seq = itertools.count()
        self._active: list[tuple[int, float, int, PodUID]] = []
        self._active_entries: dict[PodUID, tuple[int, QueuedPodInfo]] = {}
        self._backoff: list[tuple[float, int, PodUID]] = []
        self._backoff_entries: dict[PodUID, tuple[int, QueuedPodInfo]] = {}
        self._unschedulable: dict[PodUID, QueuedPodInfo] = {}
        self._in_flight: dict[PodUID, QueuedPodInfo] = {}
        self._scheduling_cycle = 0
        self._move_request_cycle = -1
        self._wakeup = asyncio.Event()
        self._closed = False

    # Pods arriving and changing ------------------------------------------------------

    def add(self, pod: PodInfo) -> None:
        """A new pending Pod; an already known one (a re-list repeats adds) is updated."""
        if self._find(pod.uid) is not None or pod.uid in self._in_flight:
            self.update(pod)
            return
        now = self._clock.monotonic()
        self._push_active(QueuedPodInfo(pod, timestamp=now, added=now))

    def update(self, pod: PodInfo) -> None:
        """A pending Pod changed; a change to its spec gives an unschedulable one a new try."""
        uid = pod.uid
        if uid in self._active_entries:
            _, queued = self._active_entries[uid]
            old_priority = queued.pod.priority
            queued.pod = pod
            if old_priority != pod.priority:
                self._push_active(queued)  # re-keyed; the old heap entry goes stale
        elif uid in self._backoff_entries:
            self._backoff_entries[uid][1].pod = pod
        elif uid in self._unschedulable:
            queued = self._unschedulable[uid]
            changed = queued.pod.obj.get("spec") != pod.obj.get("spec")
            queued.pod = pod
            if changed:
                del self._unschedulable[uid]
                self._requeue(queued)
        elif uid in self._in_flight:
            queued = self._in_flight[uid]
            queued.pod = pod
            queued.updated_in_flight = True
        else:
            self.add(pod)

    def delete(self, uid: PodUID) -> None:
        """The Pod is gone or bound by someone else: forget it everywhere."""
        self._active_entries.pop(uid, None)
        self._backoff_entries.pop(uid, None)
        self._unschedulable.pop(uid, None)
        self._in_flight.pop(uid, None)

    # Taking Pods out -----------------------------------------------------------------

    async def pop(self) -> QueuedPodInfo | None:
        """The next Pod to schedule, waiting for one; None once the queue is closed."""
        while True:
            queued = self.pop_nowait()
            if queued is not None or self._closed:
                return queued
            self._wakeup.clear()
            await self._wakeup.wait()

    def pop_nowait(self) -> QueuedPodInfo | None:
        while self._active:
            _, _, seq, uid = heapq.heappop(self._active)
            entry = self._active_entries.get(uid)
            if entry is None or entry[0] != seq:
                continue  # deleted or re-keyed since it was pushed
            del self._active_entries[uid]
            queued = entry[1]
            self._scheduling_cycle += 1
            queued.cycle = self._scheduling_cycle
            queued.attempts += 1
            queued.updated_in_flight = False
            self._in_flight[uid] = queued
            return queued
        return None

    def done(self, uid: PodUID) -> None:
        """The cycle for this Pod is over and it will not come back (it is bound)."""
        self._in_flight.pop(uid, None)

    def add_unschedulable_if_not_present(
        self, queued: QueuedPodInfo, *, unschedulable_plugins: frozenset[str] = frozenset()
    ) -> None:
        """Put back a Pod whose attempt failed: rejected by `unschedulable_plugins`,
        or, when that is empty, failed for another reason (an error, a failed bind)."""
        if self._in_flight.pop(queued.uid, None) is None or self._find(queued.uid) is not None:
            return  # deleted while in flight, or re-added meanwhile
        queued.timestamp = self._clock.monotonic()
        queued.unschedulable_plugins = unschedulable_plugins
        missed_event = self._move_request_cycle >= queued.cycle
        if not unschedulable_plugins or missed_event or queued.updated_in_flight:
            self._push_backoff(queued)
        else:
            self._unschedulable[queued.uid] = queued

    # Moving Pods along ---------------------------------------------------------------

    def move_all_to_active_or_backoff(self, event: ClusterEvent) -> int:
        """Give every unschedulable Pod that `event` may help another try; how many moved."""
        self._move_request_cycle = self._scheduling_cycle
        helped = [q for q in self._unschedulable.values() if self._helps(q, event)]
        for queued in helped:
            del self._unschedulable[queued.uid]
            self._requeue(queued)
        return len(helped)

    def flush_backoff_completed(self) -> int:
        now = self._clock.monotonic()
        moved = 0
        while self._backoff and self._backoff[0][0] <= now:
            _, seq, uid = heapq.heappop(self._backoff)
            entry = self._backoff_entries.get(uid)
            if entry is None or entry[0] != seq:
                continue
            del self._backoff_entries[uid]
            self._push_active(entry[1])
            moved += 1
        return moved

    def flush_unschedulable_leftover(self) -> int:
        """Retry Pods that have been unschedulable for max_unschedulable_duration."""
        now = self._clock.monotonic()
        stale = [
            q for q in self._unschedulable.values() if now - q.timestamp >= self._max_unschedulable
        ]
        for queued in stale:
            del self._unschedulable[queued.uid]
            self._requeue(queued)
        return len(stale)

    async def run(self) -> None:
        """Flush back-offs as they end and stale unschedulable Pods, until close()."""
        # No back-off is shorter than `poll`, so sleeping until the earliest known expiry
        # (or at most `poll`) never oversleeps one that starts while we sleep.
        poll = min(1.0, self._initial_backoff)
        last_leftover_flush = self._clock.monotonic()
        while not self._closed:
            self.flush_backoff_completed()
            now = self._clock.monotonic()
            if now - last_leftover_flush >= UNSCHEDULABLE_FLUSH_INTERVAL:
                self.flush_unschedulable_leftover()
                last_leftover_flush = now
            delay = poll
            if self._backoff:
                delay = max(0.0, min(delay, self._backoff[0][0] - now))
            await self._clock.sleep(delay)

    def close(self) -> None:
        """Wake every pop() with None and stop run()."""
        self._closed = True
        self._wakeup.set()

    # Inspection ------------------------------------------------------------------------

    def backoff_duration(self, queued: QueuedPodInfo) -> float:
        """1 s after the first failed attempt, doubling with each further one, capped."""
        exponent = max(queued.attempts - 1, 0)
        if exponent >= 64:
            return self._max_backoff
        return min(self._initial_backoff * (2**exponent), self._max_backoff)

    def backoff_expiry(self, queued: QueuedPodInfo) -> float:
        return queued.timestamp + self.backoff_duration(queued)

    def lengths(self) -> dict[str, int]:
        """Pending Pods per sub-queue, for metrics (queue depth)."""
        return {
            "active": len(self._active_entries),
            "backoff": len(self._backoff_entries),
            "unschedulable": len(self._unschedulable),
        }

    def where(self, uid: PodUID) -> str | None:
        """Which sub-queue holds the Pod ("active", "backoff", "unschedulable", "in_flight")."""
        for name, holder in (
            ("active", self._active_entries),
            ("backoff", self._backoff_entries),
            ("unschedulable", self._unschedulable),
            ("in_flight", self._in_flight),
        ):
            if uid in holder:
                return name
        return None

    def __len__(self) -> int:
        return len(self._active_entries) + len(self._backoff_entries) + len(self._unschedulable)

    # Internals -------------------------------------------------------------------------

    def _find(self, uid: PodUID) -> QueuedPodInfo | None:
        for holder in (self._active_entries, self._backoff_entries):
            entry = holder.get(uid)
            if entry is not None:
                return entry[1]
        return self._unschedulable.get(uid)

    def _helps(self, queued: QueuedPodInfo, event: ClusterEvent) -> bool:
        if event.resource == WILDCARD or not queued.unschedulable_plugins:
            return True
        for plugin in queued.unschedulable_plugins:
            interests = self._plugin_events.get(plugin)
            if interests is None:
                return True  # a plugin that registered nothing may be helped by anything
            if any(event.helps(interest) for interest in interests):
                return True
        return False

    def _requeue(self, queued: QueuedPodInfo) -> None:
        if self.backoff_expiry(queued) > self._clock.monotonic():
            self._push_backoff(queued)
        else:
            self._push_active(queued)

    def _push_active(self, queued: QueuedPodInfo) -> None:
        seq = next(self._seq)
        self._active_entries[queued.uid] = (seq, queued)
        heapq.heappush(self._active, (-queued.pod.priority, queued.timestamp, seq, queued.uid))
        self._wakeup.set()

    def _push_backoff(self, queued: QueuedPodInfo) -> None:
        seq = next(self._seq)
        self._backoff_entries[queued.uid] = (seq, queued)
        heapq.heappush(self._backoff, (self.backoff_expiry(queued), seq, queued.uid))
