"""Usage figures for `kctl top`, published on the Node as one annotation.

Design: there is no metrics API in this cluster, and kctl must work from wherever it
runs, so the kubelet samples usage every usage_interval (15 s) and writes it into the
annotation `kubelite.io/usage` of its own Node (one merge patch per interval, whatever the
number of Pods, so the Pods' resourceVersions do not churn and controllers watching Pods
are not woken). `kctl top node|pod` lists Nodes and reads the annotations. The value is
JSON:

    {"timestamp": "...Z", "window": 15.0,
     "node": {"cpu": "250m", "memory": "812Mi"},
     "pods": {"<ns>/<name>": {"containers": {"<c>": {"cpu": "1m", "memory": "3Mi"}}}}}

CPU is the average rate over the window (the runtime's cgroup counters, and /proc/stat for
the node), memory the working set (as metrics-server reports it). The figures are up to
one window old; a container started within the last window has no CPU figure yet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kubelet import labels as kl
from kubelet.cri import AsyncRuntime
from kubelet.node import meminfo
from kubelet.runtime.interface import RuntimeFailure, SandboxState
from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock, rfc3339
from machinery.log import get_logger

log = get_logger("kubelet.usage")

ANNOTATION = "kubelite.io/usage"


def _cpu_text(nano_cores: int | None) -> str | None:
    if nano_cores is None:
        return None
    return f"{max(0, round(nano_cores / 1_000_000))}m"


def _memory_text(size: int) -> str:
    return f"{max(0, size) // (1024 * 1024)}Mi"


def read_proc_stat() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs since boot."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    values = [int(v) for v in fields]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    total = sum(values[:8])
    return total - idle, total


class UsageReporter:
    def __init__(
        self,
        client: ApiClient,
        runtime: AsyncRuntime,
        *,
        node_name: str,
        clock: Clock,
        interval_s: float,
        cpus: int,
    ) -> None:
        self._client = client
        self._runtime = runtime
        self._node = node_name
        self._clock = clock
        self._interval = interval_s
        self._cpus = cpus
        self._proc: tuple[int, int] | None = None
        self.last: dict[str, Any] | None = None

    def _node_usage(self) -> dict[str, str]:
        busy, total = read_proc_stat()
        usage: dict[str, str] = {}
        if self._proc is not None and total > self._proc[1]:
            share = (busy - self._proc[0]) / (total - self._proc[1])
            usage["cpu"] = f"{round(share * self._cpus * 1000)}m"
        self._proc = (busy, total)
        info = meminfo()
        usage["memory"] = _memory_text(info.get("MemTotal", 0) - info.get("MemAvailable", 0))
        return usage

    async def sample(self) -> dict[str, Any]:
        snapshot = await self._runtime.fresh()
        pods: dict[str, Any] = {}
        for pod in snapshot.pods.values():
            sandbox = pod.ready_sandbox()
            if sandbox is None or sandbox.state != SandboxState.READY:
                continue
            try:
                stats = await self._runtime.sandbox_stats(sandbox.id)
            except RuntimeFailure:
                continue
            names = {c.id: c.labels.get(kl.CONTAINER_NAME, c.name) for c in pod.containers}
            containers = {}
            for container in stats.containers:
                entry = {"memory": _memory_text(container.usage.memory_working_set_bytes)}
                cpu = _cpu_text(container.usage.cpu_nano_cores)
                if cpu is not None:
                    entry["cpu"] = cpu
                containers[names.get(container.id, container.name)] = entry
            pods[f"{sandbox.namespace}/{sandbox.name}"] = {"containers": containers}
        node = await self._runtime.blocking(self._node_usage)
        return {
            "timestamp": rfc3339(self._clock.now()),
            "window": self._interval,
            "node": node,
            "pods": pods,
        }

    async def publish(self) -> None:
        usage = await self.sample()
        patch = {"metadata": {"annotations": {ANNOTATION: json.dumps(usage, sort_keys=True)}}}
        await self._client.patch("nodes", self._node, patch)
        self.last = usage

    async def run(self) -> None:
        # A first sample only sets the counters' baseline; the next one has rates.
        await self.sample()
        await self._clock.sleep(min(1.0, self._interval))
        while True:
            try:
                await self.publish()
            except (errors.ApiError, OSError) as err:
                log.debug("failed to publish usage", err=err)
            await self._clock.sleep(self._interval)
