"""The kubelet's side of the runtime seam: async calls, metrics, and a shared snapshot.

AsyncRuntime wraps a blocking ContainerRuntime (kubelet/runtime/interface.py): every call
runs on a thread pool of the kubelet's own (so that 20 Pods starting at once are not held
to asyncio's small default pool), is timed into kubelite_kubelet_runtime_operations_*, and
raises the runtime's own RuntimeFailure types unchanged.

RuntimeSnapshot is one relist of every sandbox and container, grouped by the Pod UID the
kubelet wrote into their labels. `fresh()` coalesces: callers that ask while a relist is
running wait for the next one started after they asked, so twenty Pod workers syncing at
once cause two relists, not twenty, and each still sees its own latest changes.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import time
from collections.abc import Callable
from typing import Any, TypeVar

from kubelet import labels as kl
from kubelet.metrics import KubeletMetrics
from kubelet.runtime.interface import (
    ContainerConfig,
    ContainerId,
    ContainerRuntime,
    ContainerState,
    ContainerStats,
    ContainerStatus,
    ExecResult,
    ExecSession,
    RuntimeFailure,
    RuntimeInfo,
    SandboxConfig,
    SandboxId,
    SandboxState,
    SandboxStats,
    SandboxStatus,
)

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class PodRuntime:
    """What the runtime holds for one Pod: its sandboxes and containers, newest first."""

    sandboxes: tuple[SandboxStatus, ...] = ()
    containers: tuple[ContainerStatus, ...] = ()

    def ready_sandbox(self) -> SandboxStatus | None:
        return next((s for s in self.sandboxes if s.state == SandboxState.READY), None)

    def instances(self, name: str, *, sandbox: SandboxId | None = None) -> list[ContainerStatus]:
        """Instances of the container `name`, latest attempt first."""
        found = [
            c
            for c in self.containers
            if c.labels.get(kl.CONTAINER_NAME) == name
            and (sandbox is None or c.sandbox_id == sandbox)
        ]
        return sorted(found, key=lambda c: (c.attempt, c.created_at), reverse=True)

    def latest(self, name: str, *, sandbox: SandboxId | None = None) -> ContainerStatus | None:
        found = self.instances(name, sandbox=sandbox)
        return found[0] if found else None

    def running(self) -> list[ContainerStatus]:
        return [c for c in self.containers if c.state == ContainerState.RUNNING]


@dataclasses.dataclass(frozen=True)
class RuntimeSnapshot:
    taken_at: float
    pods: dict[str, PodRuntime]

    def pod(self, uid: str) -> PodRuntime:
        return self.pods.get(uid, PodRuntime())


class AsyncRuntime:
    def __init__(
        self, runtime: ContainerRuntime, metrics: KubeletMetrics, *, threads: int = 16
    ) -> None:
        self.runtime = runtime
        self._metrics = metrics
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="runtime"
        )
        self._snapshot: RuntimeSnapshot | None = None
        self._relist: asyncio.Task[RuntimeSnapshot] | None = None
        self._generation = 0

    async def call(self, operation: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one blocking runtime call on the pool, timed and counted as `operation`."""
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            return await loop.run_in_executor(self._pool, lambda: fn(*args, **kwargs))
        except RuntimeFailure:
            self._metrics.runtime_errors.labels(operation).inc()
            raise
        finally:
            self._metrics.runtime_latency.labels(operation).observe(time.perf_counter() - started)

    async def blocking(self, fn: Callable[..., T], *args: Any) -> T:
        """Run other blocking kubelet work (volumes, probes) on the same pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, lambda: fn(*args))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- typed calls ------------------------------------------------------------------------

    async def info(self) -> RuntimeInfo:
        return await self.call("version", self.runtime.info)

    async def run_sandbox(self, config: SandboxConfig) -> SandboxId:
        return await self.call("run_podsandbox", self.runtime.run_sandbox, config)

    async def stop_sandbox(self, sandbox_id: SandboxId) -> None:
        await self.call("stop_podsandbox", self.runtime.stop_sandbox, sandbox_id)

    async def remove_sandbox(self, sandbox_id: SandboxId) -> None:
        await self.call("remove_podsandbox", self.runtime.remove_sandbox, sandbox_id)

    async def sandbox_status(self, sandbox_id: SandboxId) -> SandboxStatus:
        return await self.call("podsandbox_status", self.runtime.sandbox_status, sandbox_id)

    async def set_sandbox_ips(self, sandbox_id: SandboxId, ips: tuple[str, ...]) -> None:
        await self.call("set_podsandbox_ips", self.runtime.set_sandbox_ips, sandbox_id, ips)

    async def create_container(self, sandbox_id: SandboxId, config: ContainerConfig) -> ContainerId:
        return await self.call(
            "create_container", self.runtime.create_container, sandbox_id, config
        )

    async def start_container(self, container_id: ContainerId) -> None:
        await self.call("start_container", self.runtime.start_container, container_id)

    async def stop_container(self, container_id: ContainerId, timeout_s: float) -> None:
        await self.call("stop_container", self.runtime.stop_container, container_id, timeout_s)

    async def remove_container(self, container_id: ContainerId) -> None:
        await self.call("remove_container", self.runtime.remove_container, container_id)

    async def container_status(self, container_id: ContainerId) -> ContainerStatus:
        return await self.call("container_status", self.runtime.container_status, container_id)

    async def exec_sync(
        self, container_id: ContainerId, argv: tuple[str, ...], timeout_s: float
    ) -> ExecResult:
        return await self.call("exec_sync", self.runtime.exec_sync, container_id, argv, timeout_s)

    async def exec_stream(
        self,
        container_id: ContainerId,
        argv: tuple[str, ...],
        *,
        tty: bool,
        stdin: bool,
        rows: int,
        cols: int,
    ) -> ExecSession:
        return await self.call(
            "exec",
            self.runtime.exec_stream,
            container_id,
            argv,
            tty=tty,
            stdin=stdin,
            rows=rows,
            cols=cols,
        )

    async def container_stats(self, container_id: ContainerId) -> ContainerStats:
        return await self.call("container_stats", self.runtime.container_stats, container_id)

    async def sandbox_stats(self, sandbox_id: SandboxId) -> SandboxStats:
        return await self.call("podsandbox_stats", self.runtime.sandbox_stats, sandbox_id)

    # -- the shared snapshot ------------------------------------------------------------------

    @property
    def snapshot(self) -> RuntimeSnapshot | None:
        """The latest relist, possibly a second old."""
        return self._snapshot

    async def fresh(self) -> RuntimeSnapshot:
        """A relist started after this call began (shared with concurrent callers)."""
        wanted = self._generation + 1
        while True:
            if self._relist is None or self._relist.done():
                self._generation += 1
                self._relist = asyncio.ensure_future(self._take(self._generation))
            generation = self._generation
            snapshot = await asyncio.shield(self._relist)
            if generation >= wanted:
                return snapshot

    async def _take(self, generation: int) -> RuntimeSnapshot:
        del generation  # kept on the task for debugging
        started = time.perf_counter()
        sandboxes, containers = await self.call("relist", self._list_all)
        self._metrics.relist_duration.observe(time.perf_counter() - started)
        snapshot = group_by_pod(sandboxes, containers, taken_at=time.time())
        self._snapshot = snapshot
        return snapshot

    async def refresh(self, held: PodRuntime, added: list[ContainerId]) -> PodRuntime:
        """One Pod's objects read again, plus containers it just made: cheaper than a relist
        of the whole node when a worker only needs to see the effect of its own calls."""
        return await self.call("pod_status", self._refresh, held, tuple(added))

    def _refresh(self, held: PodRuntime, added: tuple[ContainerId, ...]) -> PodRuntime:
        sandboxes = []
        for sandbox in held.sandboxes:
            try:
                sandboxes.append(self.runtime.sandbox_status(sandbox.id))
            except RuntimeFailure:
                continue  # removed meanwhile
        containers = []
        for container_id in dict.fromkeys([*(c.id for c in held.containers), *added]):
            try:
                containers.append(self.runtime.container_status(container_id))
            except RuntimeFailure:
                continue
        containers.sort(key=lambda c: c.created_at, reverse=True)
        return PodRuntime(tuple(sandboxes), tuple(containers))

    def _list_all(self) -> tuple[list[SandboxStatus], list[ContainerStatus]]:
        return self.runtime.list_sandboxes(), self.runtime.list_containers()


def group_by_pod(
    sandboxes: list[SandboxStatus], containers: list[ContainerStatus], *, taken_at: float
) -> RuntimeSnapshot:
    """Sandboxes and containers by the Pod UID label; objects without one are left out
    (they were not made by a kubelet)."""
    by_sandbox = {s.id: s for s in sandboxes}
    grouped_sandboxes: dict[str, list[SandboxStatus]] = {}
    grouped_containers: dict[str, list[ContainerStatus]] = {}
    for sandbox in sandboxes:
        uid = sandbox.labels.get(kl.POD_UID)
        if uid:
            grouped_sandboxes.setdefault(uid, []).append(sandbox)
    for container in containers:
        uid = container.labels.get(kl.POD_UID)
        if not uid and container.sandbox_id in by_sandbox:
            uid = by_sandbox[container.sandbox_id].labels.get(kl.POD_UID, "")
        if uid:
            grouped_containers.setdefault(uid, []).append(container)
    pods = {}
    for uid in set(grouped_sandboxes) | set(grouped_containers):
        boxes = sorted(grouped_sandboxes.get(uid, []), key=lambda s: s.created_at, reverse=True)
        items = sorted(grouped_containers.get(uid, []), key=lambda c: c.created_at, reverse=True)
        pods[uid] = PodRuntime(tuple(boxes), tuple(items))
    return RuntimeSnapshot(taken_at, pods)
