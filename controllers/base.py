"""The shape every controller shares: informer events become keys on a work
queue, and N workers call sync(key) until the object matches its spec.

sync() is level-triggered: it reads the current state from the informer
caches and acts on the difference, so a missed or repeated event is
harmless. A sync that raises is retried with per-key exponential back-off;
a sync that returns clears the key's back-off. Queue depth, sync latency
and errors are exported per controller.
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections.abc import Hashable

from prometheus_client import Counter, Gauge, Histogram

from machinery import errors
from machinery.clock import Clock, RealClock
from machinery.informer import object_key
from machinery.log import Logger, get_logger
from machinery.workqueue import ShutDown, WorkQueue

QUEUE_DEPTH = Gauge(
    "kubelite_controller_queue_depth", "Keys waiting per controller.", ["controller"]
)
SYNC_LATENCY = Histogram(
    "kubelite_controller_sync_duration_seconds",
    "Time of one sync per controller.",
    ["controller"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
SYNC_ERRORS = Counter(
    "kubelite_controller_sync_errors_total", "Failed syncs per controller.", ["controller"]
)
SYNCS = Counter("kubelite_controller_syncs_total", "Syncs per controller.", ["controller"])


class QueueController(abc.ABC):
    name = "controller"

    def __init__(self, *, clock: Clock | None = None, workers: int = 2) -> None:
        self.clock = clock or RealClock()
        self.workers = workers
        self.queue = WorkQueue(clock=self.clock, base_delay=0.005, max_delay=60.0, name=self.name)
        self.log: Logger = get_logger(f"controllers.{self.name}")

    def enqueue(self, obj: dict) -> None:
        self.queue.add(object_key(obj))

    @abc.abstractmethod
    async def sync(self, key: str) -> None:
        """Bring the object named by key to its desired state; raise to have it retried."""

    async def run(self) -> None:
        workers = [
            asyncio.create_task(self._worker(), name=f"{self.name}-{i}")
            for i in range(self.workers)
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for w in workers:
                w.cancel()
            await self.queue.shut_down()

    async def _worker(self) -> None:
        while True:
            try:
                key = await self.queue.get()
            except ShutDown:
                return
            await self._process(key)

    async def _process(self, key: Hashable) -> None:
        started = time.perf_counter()
        try:
            await self.sync(str(key))
            self.queue.forget(key)
        except asyncio.CancelledError:
            raise
        except errors.ApiError as err:
            SYNC_ERRORS.labels(self.name).inc()
            delay = self.queue.add_rate_limited(key)
            level = self.log.debug if isinstance(err, errors.Conflict) else self.log.warning
            level("sync failed, will retry", key=key, err=err, retry_in_s=round(delay, 3))
        except Exception as err:  # noqa: BLE001 - one broken object must not stop the controller
            SYNC_ERRORS.labels(self.name).inc()
            delay = self.queue.add_rate_limited(key)
            self.log.error(
                "sync crashed, will retry",
                key=key,
                err=repr(err),
                retry_in_s=round(delay, 3),
                exc_info=True,
            )
        finally:
            self.queue.done(key)
            SYNCS.labels(self.name).inc()
            SYNC_LATENCY.labels(self.name).observe(time.perf_counter() - started)
            QUEUE_DEPTH.labels(self.name).set(len(self.queue))


def split_key(key: str) -> tuple[str, str]:
    namespace, _, name = key.rpartition("/")
    return namespace, name
