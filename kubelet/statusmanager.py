"""Writes Pod statuses to the API server, only when they changed, without blocking workers.

A Pod worker hands in the status it computed (set()); the manager keeps the latest one
per Pod and a few writer tasks send it with update_status, pinned to the resourceVersion
the kubelet last saw so that a status is never written onto another Pod that reused the
name: on Conflict the writer re-reads the Pod, checks its UID, and tries again. A status
equal to the one the API already holds, or to the one last written, is not sent. A lost
API server means retries with back-off (the work queue's rate limiter); the newest status
is the one that is eventually written, intermediate ones are skipped.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from typing import Any

from kubelet import status as podstatus
from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.log import get_logger
from machinery.workqueue import ShutDown, WorkQueue

log = get_logger("kubelet.status")


class StatusManager:
    def __init__(
        self,
        client: ApiClient,
        *,
        clock: Clock,
        current_pod: Callable[[str], dict[str, Any] | None],
        writers: int = 4,
    ) -> None:
        self._client = client
        self._current_pod = current_pod
        self._queue = WorkQueue(clock=clock, base_delay=0.2, max_delay=10.0, name="pod-status")
        self._wanted: dict[str, dict[str, Any]] = {}
        self._written: dict[str, dict[str, Any]] = {}
        self._writers = writers
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()

    def set(self, uid: str, status: dict[str, Any]) -> None:
        """Ask for status to be written (returns at once)."""
        self._wanted[uid] = status
        self._queue.add(uid)

    def wanted(self, uid: str) -> dict[str, Any] | None:
        return self._wanted.get(uid)

    def forget(self, uid: str) -> None:
        self._wanted.pop(uid, None)
        self._written.pop(uid, None)

    def start(self) -> None:
        for index in range(self._writers):
            self._tasks.append(asyncio.create_task(self._run(), name=f"status-writer-{index}"))

    async def stop(self) -> None:
        await self._queue.shut_down()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    async def flush(self, uid: str, timeout: float = 10.0) -> bool:
        """Write uid's wanted status now, in the caller's task (before deleting the Pod)."""
        try:
            return await asyncio.wait_for(self._write(uid), timeout)
        except (TimeoutError, errors.ApiError):
            return False

    async def _run(self) -> None:
        while True:
            try:
                uid = await self._queue.get()
            except ShutDown:
                return
            try:
                await self._write(str(uid))
                self._queue.forget(uid)
            except errors.ApiError as err:
                delay = self._queue.add_rate_limited(uid)
                log.warning(
                    "failed to write pod status, retrying",
                    uid=uid,
                    err=err,
                    delay_s=round(delay, 2),
                )
            finally:
                self._queue.done(uid)

    async def _write(self, uid: str) -> bool:
        wanted = self._wanted.get(uid)
        pod = self._current_pod(uid)
        if wanted is None or pod is None:
            return False
        if podstatus.same(wanted, pod.get("status") or {}):
            self._written[uid] = wanted
            return True
        written = self._written.get(uid)
        if written is not None and podstatus.same(wanted, written):
            return True
        for _ in range(3):
            body = copy.copy(pod)
            body["status"] = wanted
            try:
                await self._client.update_status("pods", body)
                self._written[uid] = wanted
                log.debug("wrote pod status", pod=_ref(pod), phase=wanted.get("phase"))
                return True
            except errors.NotFound:
                return False
            except errors.Conflict:
                meta = pod["metadata"]
                fresh = await self._client.get("pods", meta["name"], namespace=meta["namespace"])
                if fresh["metadata"].get("uid") != uid:
                    return False
                pod = fresh
        raise errors.Conflict(f"pod {_ref(pod)} kept changing while its status was written")


def _ref(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata", {})
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"
