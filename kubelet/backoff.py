"""Per-key exponential back-off for container restarts and image pulls.

The rules follow Kubernetes' kubelet:
- a restart: the first one after an exit goes ahead at once and arms the back-off at the
  initial delay; each later exit is held until `finished + delay`, and the restart then
  doubles the delay up to the maximum (CrashLoopBackOff while held). A container that ran
  for at least `reset_after` before it exited starts again from the initial delay, and so
  does a key not touched for twice the maximum.
- an image pull: a failure arms the back-off; while `now < last failure + delay` the kubelet
  does not pull again (ImagePullBackOff), and the next failure doubles the delay.
Times are wall-clock seconds from the injected Clock (container finish times are wall
times), so a FakeClock drives it in tests.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Hashable

from kubelet.config import Backoff as Policy
from machinery.clock import Clock


@dataclasses.dataclass
class _Entry:
    delay: float
    last: float


class Backoff:
    def __init__(self, policy: Policy, *, clock: Clock) -> None:
        self._policy = policy
        self._clock = clock
        self._entries: dict[Hashable, _Entry] = {}

    def _live(self, key: Hashable, at: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and at - entry.last > 2 * self._policy.maximum_s:
            del self._entries[key]
            return None
        return entry

    def remaining_since(self, key: Hashable, event_time: float) -> float:
        """Seconds still to wait after an event at event_time (an exit); 0: go ahead."""
        entry = self._live(key, event_time)
        if entry is None:
            return 0.0
        return max(0.0, event_time + entry.delay - self._clock.now())

    def remaining_since_update(self, key: Hashable) -> float:
        """Seconds still to wait after the last failure (image pulls); 0: go ahead."""
        now = self._clock.now()
        entry = self._live(key, now)
        if entry is None:
            return 0.0
        return max(0.0, entry.last + entry.delay - now)

    def next(self, key: Hashable, *, event_time: float | None = None, ran_s: float = 0.0) -> float:
        """Record a restart (or a failed pull) and return the delay now armed."""
        at = self._clock.now() if event_time is None else event_time
        entry = self._live(key, at)
        if entry is None or ran_s >= self._policy.reset_after_s:
            entry = _Entry(self._policy.initial_s, self._clock.now())
        else:
            entry = _Entry(min(entry.delay * 2, self._policy.maximum_s), self._clock.now())
        self._entries[key] = entry
        return entry.delay

    def delay(self, key: Hashable) -> float:
        entry = self._entries.get(key)
        return entry.delay if entry else 0.0

    def forget(self, key: Hashable) -> None:
        self._entries.pop(key, None)

    def forget_prefix(self, first: Hashable) -> None:
        """Drop every key that is a tuple starting with `first` (all of one Pod's keys)."""
        for key in [k for k in self._entries if isinstance(k, tuple) and k and k[0] == first]:
            del self._entries[key]
