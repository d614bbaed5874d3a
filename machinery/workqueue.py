"""A work queue of object keys with de-duplication and rate-limited retries.

A key is queued at most once however many times it is added; a key added
while a worker is processing it is queued again once that worker calls
done(), never handed to two workers at once. add_rate_limited() re-queues a
failed key after a per-key exponential back-off; forget() resets it after a
success. Time comes from the injected Clock.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Hashable

from machinery.clock import Clock, RealClock


class ShutDown(Exception):
    """get() on a queue that was shut down."""


class WorkQueue:
    def __init__(
        self,
        *,
        clock: Clock | None = None,
        base_delay: float = 0.005,
        max_delay: float = 300.0,
        name: str = "",
    ) -> None:
        self.name = name
        self._clock = clock or RealClock()
        self._base = base_delay
        self._max = max_delay
        self._queue: collections.deque[Hashable] = collections.deque()
        self._dirty: set[Hashable] = set()
        self._processing: set[Hashable] = set()
        self._failures: dict[Hashable, int] = {}
        self._waiting: set[Hashable] = set()
        self._getters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._shutdown = False
        self._delayed: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, key: Hashable) -> None:
        if self._shutdown or key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._queue.append(key)
            self._wake()

    def _wake(self) -> None:
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
                return

    def add_after(self, key: Hashable, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return

        deadline = self._clock.monotonic() + delay

        async def later() -> None:
            await self._clock.sleep(deadline - self._clock.monotonic())
            self._waiting.discard(key)
            self.add(key)

        self._waiting.add(key)
        task = asyncio.get_running_loop().create_task(later())
        self._delayed.add(task)
        task.add_done_callback(self._delayed.discard)

    def add_rate_limited(self, key: Hashable) -> float:
        """Queue key again after its back-off; the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay = min(self._base * (2**failures), self._max)
        self.add_after(key, delay)
        return delay

    def forget(self, key: Hashable) -> None:
        self._failures.pop(key, None)

    def failures(self, key: Hashable) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> Hashable:
        while not self._queue:
            if self._shutdown:
                raise ShutDown(self.name)
            getter = asyncio.get_running_loop().create_future()
            self._getters.append(getter)
            try:
                await getter
            except asyncio.CancelledError:
                if getter.done() and not getter.cancelled():
                    self._wake()  # pass the wake-up on to another worker
                raise
        key = self._queue.popleft()
        self._processing.add(key)
        self._dirty.discard(key)
        return key

    def done(self, key: Hashable) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._queue.append(key)
            self._wake()

    async def shut_down(self) -> None:
        self._shutdown = True
        for task in list(self._delayed):
            task.cancel()
        while self._getters:
            getter = self._getters.popleft()
            if not getter.done():
                getter.set_result(None)
