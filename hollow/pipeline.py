"""A fixed pool of workers through which every API call of the tool goes.

At most `concurrency` calls are in flight whatever the number of nodes and
Pods. Two kinds of work share the pool: prompt work (Pod status, deletes),
and deferrable work that may wait up to its slack (Lease renewals: a node is
only declared dead after several renewal intervals). A worker takes
deferrable work first once its slack has run out, else prompt work, else
deferrable work early; except that every fourth job is prompt work when
there is some. So when the API server cannot keep up, Pods are not starved
by renewals that can still wait, a burst of Pods cannot delay renewals much
past their slack, and even an API server too slow for the renewals alone
still sees Pods make progress.

A job that fails is counted and logged at DEBUG: the next event or tick
tries again.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Awaitable, Callable

from machinery import errors
from machinery.clock import Clock, RealClock
from machinery.log import get_logger

log = get_logger("hollow.pipeline")

Job = Callable[[], Awaitable[None]]
PROMPT_SHARE = 4  # one job in this many is prompt work whenever some is waiting


class Pipeline:
    def __init__(self, concurrency: int = 64, *, clock: Clock | None = None) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        self.concurrency = concurrency
        self._clock = clock or RealClock()
        self._prompt: collections.deque[Job] = collections.deque()
        # (deadline, job), in deadline order: every deferrable job has the same slack.
        self._deferrable: collections.deque[tuple[float, Job]] = collections.deque()
        self._jobs = asyncio.Semaphore(0)  # counts queued jobs; a worker takes one per acquire
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._workers: list[asyncio.Task[None]] = []
        self._turn = 0
        self.done = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._prompt) + len(self._deferrable)

    def start(self) -> None:
        self._workers = [
            asyncio.create_task(self._work(), name=f"hollow-worker-{i}")
            for i in range(self.concurrency)
        ]

    def submit(self, job: Job, *, slack: float = 0.0) -> None:
        """Queue job; with slack, it may wait that many seconds behind prompt work."""
        if slack > 0:
            self._deferrable.append((self._clock.monotonic() + slack, job))
        else:
            self._prompt.append(job)
        self._pending += 1
        self._idle.clear()
        self._jobs.release()

    async def drain(self) -> None:
        """Wait until every job submitted so far has run."""
        await self._idle.wait()

    async def stop(self) -> None:
        for worker in self._workers:
            worker.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers = []

    def _next(self) -> Job:
        self._turn += 1
        if self._prompt and self._turn % PROMPT_SHARE == 0:
            return self._prompt.popleft()
        if self._deferrable and (
            not self._prompt or self._deferrable[0][0] <= self._clock.monotonic()
        ):
            return self._deferrable.popleft()[1]
        return self._prompt.popleft()

    async def _work(self) -> None:
        while True:
            await self._jobs.acquire()
            job = self._next()
            try:
                await job()
                self.done += 1
            except errors.ApiError as err:
                self.failed += 1
                log.debug("call failed", err=err)
            except Exception as err:  # noqa: BLE001 - one bad job must not stop a worker
                self.failed += 1
                log.error("job crashed", err=repr(err), exc_info=True)
            finally:
                self._pending -= 1
                if not self._pending:
                    self._idle.set()
