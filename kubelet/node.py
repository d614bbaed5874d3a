"""The node's own object: registration, status, conditions and the Lease heartbeat.

Registration creates the Node (labels, taints from --register-with-taints) or, when it
exists already (a restarted kubelet), reconciles the labels this kubelet owns and leaves
everything else to whoever set it (cordon, taints added later). Capacity is read from the
machine: CPUs this process may use, MemTotal, the root directory's filesystem, and the
--pods limit; allocatable subtracts --system-reserved and the hard eviction thresholds,
as Kubernetes does.

Two loops keep the node alive in the API:
- status, every status_update_interval: conditions Ready, MemoryPressure, DiskPressure,
  PIDPressure measured now, written (a merge patch of status) when anything but the
  heartbeat changed or status_report_interval passed; lastTransitionTime moves only when a
  condition's status changes from what the API holds.
- the Lease kube-node-lease/<node>, renewed every lease_renew_interval (10 s) with
  leaseDurationSeconds 40: the node lifecycle controller reads it to decide that a node
  is gone. A failed renewal is retried quickly (200 ms doubling to 7 s).
Both loops survive a lost API server: they retry until it is back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import platform
import random
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from kubelet.config import KubeletConfig
from kubelet.cri import AsyncRuntime
from kubelet.network import PodNetwork
from kubelet.podworker import NodeFacts
from kubelet.runtime.interface import RuntimeFailure
from machinery import errors, quantity
from machinery.client import ApiClient
from machinery.clock import Clock, rfc3339, rfc3339_micro
from machinery.log import get_logger

log = get_logger("kubelet.node")

LEASE_NAMESPACE = "kube-node-lease"
_ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclasses.dataclass(frozen=True)
class Machine:
    cpus: int
    memory_bytes: int
    ephemeral_bytes: int
    kernel_version: str
    os_image: str
    architecture: str
    machine_id: str = ""
    boot_id: str = ""


def _read(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return ""


def meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes."""
    out = {}
    for line in _read("/proc/meminfo").splitlines():
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * (1024 if len(fields) > 1 and fields[1] == "kB" else 1)
    return out


def os_image() -> str:
    for line in _read("/etc/os-release").splitlines():
        if line.startswith("PRETTY_NAME="):
            return line.partition("=")[2].strip().strip('"')
    return "Linux"


def read_machine(root_dir: Path) -> Machine:
    root_dir.mkdir(parents=True, exist_ok=True)
    stats = os.statvfs(root_dir)
    return Machine(
        cpus=len(os.sched_getaffinity(0)) or os.cpu_count() or 1,
        memory_bytes=meminfo().get("MemTotal", 0),
        ephemeral_bytes=stats.f_blocks * stats.f_frsize,
        kernel_version=platform.release(),
        os_image=os_image(),
        architecture=_ARCHITECTURES.get(platform.machine(), platform.machine()),
        machine_id=_read("/etc/machine-id"),
        boot_id=_read("/proc/sys/kernel/random/boot_id"),
    )


def kubelet_version() -> str:
    try:
        return "v" + importlib_metadata.version("kubelite")
    except importlib_metadata.PackageNotFoundError:
        return "v0.0.0-dev"


# -- pure parts: capacity, allocatable, conditions --------------------------------------------


def capacity(machine: Machine, *, max_pods: int) -> dict[str, str]:
    return {
        "cpu": str(machine.cpus),
        "memory": f"{machine.memory_bytes // 1024}Ki",
        "ephemeral-storage": f"{machine.ephemeral_bytes // 1024}Ki",
        "pods": str(max_pods),
    }


def allocatable(
    cap: dict[str, str],
    *,
    reserved: dict[str, str],
    eviction_memory: str,
    eviction_nodefs_percent: int,
) -> dict[str, str]:
    """capacity - reservations - hard eviction thresholds, never below zero."""
    cpu = quantity.cpu_millis(cap["cpu"]) - quantity.cpu_millis(reserved.get("cpu", "0"))
    memory = (
        quantity.to_bytes(cap["memory"])
        - quantity.to_bytes(reserved.get("memory", "0"))
        - quantity.to_bytes(eviction_memory)
    )
    storage = quantity.to_bytes(cap["ephemeral-storage"])
    storage -= quantity.to_bytes(reserved.get("ephemeral-storage", "0"))
    storage -= quantity.to_bytes(cap["ephemeral-storage"]) * eviction_nodefs_percent // 100
    return {
        "cpu": quantity.format_cpu(max(cpu, 0)),
        "memory": f"{max(memory, 0) // 1024}Ki",
        "ephemeral-storage": f"{max(storage, 0) // 1024}Ki",
        "pods": cap["pods"],
    }


@dataclasses.dataclass(frozen=True)
class Pressure:
    memory_available_bytes: int
    disk_available_percent: float
    pids_used: int
    pid_max: int


def read_pressure(root_dir: Path) -> Pressure:
    stats = os.statvfs(root_dir)
    disk = 100.0 * stats.f_bavail / stats.f_blocks if stats.f_blocks else 100.0
    pids = sum(1 for entry in os.scandir("/proc") if entry.name.isdigit())
    pid_max = int(_read("/proc/sys/kernel/pid_max") or 32768)
    return Pressure(meminfo().get("MemAvailable", 0), disk, pids, pid_max)


def conditions(
    pressure: Pressure,
    *,
    ready_problem: str,
    memory_threshold: int,
    disk_threshold_percent: int,
) -> list[dict[str, str]]:
    """Node conditions without times (added by with_times)."""
    memory = pressure.memory_available_bytes < memory_threshold
    disk = pressure.disk_available_percent < disk_threshold_percent
    pid = pressure.pids_used > pressure.pid_max * 0.9
    return [
        _cond(
            "MemoryPressure",
            memory,
            "KubeletHasInsufficientMemory",
            "KubeletHasSufficientMemory",
            "kubelet has insufficient memory available",
            "kubelet has sufficient memory available",
        ),
        _cond(
            "DiskPressure",
            disk,
            "KubeletHasDiskPressure",
            "KubeletHasNoDiskPressure",
            "kubelet has disk pressure",
            "kubelet has no disk pressure",
        ),
        _cond(
            "PIDPressure",
            pid,
            "KubeletHasInsufficientPID",
            "KubeletHasSufficientPID",
            "kubelet has insufficient PID available",
            "kubelet has sufficient PID available",
        ),
        {
            "type": "Ready",
            "status": "False" if ready_problem else "True",
            "reason": "KubeletNotReady" if ready_problem else "KubeletReady",
            "message": ready_problem or "kubelet is posting ready status",
        },
    ]


def _cond(kind: str, bad: bool, bad_reason: str, ok_reason: str, bad_msg: str, ok_msg: str) -> dict:
    return {
        "type": kind,
        "status": "True" if bad else "False",
        "reason": bad_reason if bad else ok_reason,
        "message": bad_msg if bad else ok_msg,
    }


def with_times(
    wanted: list[dict[str, str]], previous: list[dict[str, Any]], now: float
) -> list[dict[str, Any]]:
    old = {c.get("type"): c for c in previous}
    out = []
    for condition in wanted:
        before = old.get(condition["type"]) or {}
        kept = (
            before.get("lastTransitionTime")
            if before.get("status") == condition["status"]
            else None
        )
        transition = kept or rfc3339(now)
        out.append(
            {**condition, "lastHeartbeatTime": rfc3339(now), "lastTransitionTime": transition}
        )
    return out


def _comparable(status: dict[str, Any]) -> dict[str, Any]:
    """A Node status without its heartbeat times, to tell a real change from a heartbeat."""
    out = {k: v for k, v in status.items() if k != "conditions"}
    out["conditions"] = sorted(
        (c.get("type"), c.get("status"), c.get("reason", ""), c.get("message", ""))
        for c in status.get("conditions") or []
    )
    return out


# -- the agent ------------------------------------------------------------------------------------


class NodeAgent:
    def __init__(
        self,
        client: ApiClient,
        config: KubeletConfig,
        *,
        runtime: AsyncRuntime,
        network: PodNetwork,
        clock: Clock,
        machine: Machine | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._config = config
        self._runtime = runtime
        self._network = network
        self._clock = clock
        self._rng = rng or random.Random()
        self.machine = machine or read_machine(config.root_dir)
        self.capacity = capacity(self.machine, max_pods=config.max_pods)
        self.allocatable = allocatable(
            self.capacity,
            reserved=config.system_reserved,
            eviction_memory=config.eviction_memory_available,
            eviction_nodefs_percent=config.eviction_nodefs_available_percent,
        )
        self.pod_cidrs: tuple[str, ...] = ()
        self.uid = ""
        self.port = config.port
        self.runtime_version = ""
        self._last_write_at = 0.0
        self._lease: dict[str, Any] | None = None
        self.lease_renewals = 0
        # Set when something the Ready condition depends on may have changed (a pod
        # CIDR assigned): the status loop writes at once instead of at its next tick,
        # so a new node turns Ready as soon as it can run Pods.
        self._recheck = asyncio.Event()

    @property
    def name(self) -> str:
        return self._config.node_name

    def facts(self) -> NodeFacts:
        return NodeFacts(
            host_ips=(self._config.node_ip,),
            pod_cidrs=self.pod_cidrs,
            cpu_millis=quantity.cpu_millis(self.allocatable["cpu"]),
            memory_bytes=quantity.to_bytes(self.allocatable["memory"]),
            ephemeral_bytes=quantity.to_bytes(self.allocatable["ephemeral-storage"]),
            memory_capacity_bytes=self.machine.memory_bytes,
        )

    def observe(self, node: dict[str, Any]) -> None:
        """The Node as the API holds it (from the kubelet's informer on itself)."""
        spec = node.get("spec") or {}
        cidrs = spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else [])
        if tuple(cidrs) != self.pod_cidrs:
            self._recheck.set()
        self.pod_cidrs = tuple(cidrs)
        self.uid = node.get("metadata", {}).get("uid", self.uid)

    # -- building -------------------------------------------------------------------------------

    def labels(self) -> dict[str, str]:
        return {
            "kubernetes.io/hostname": self.name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": self.machine.architecture,
            "beta.kubernetes.io/os": "linux",
            "beta.kubernetes.io/arch": self.machine.architecture,
            **self._config.node_labels,
        }

    def node_info(self) -> dict[str, str]:
        return {
            "machineID": self.machine.machine_id,
            "systemUUID": self.machine.machine_id,
            "bootID": self.machine.boot_id,
            "kernelVersion": self.machine.kernel_version,
            "osImage": self.machine.os_image,
            "containerRuntimeVersion": self.runtime_version,
            "kubeletVersion": kubelet_version(),
            "operatingSystem": "linux",
            "architecture": self.machine.architecture,
        }

    async def _ready_problem(self) -> str:
        try:
            info = await self._runtime.info()
            self.runtime_version = f"{info.name}://{info.version}"
        except RuntimeFailure as err:
            return f"container runtime is down: {err}"
        network = await self._runtime.blocking(self._network.status)
        if not network.ready:
            return f"network plugin not ready: {network.message}"
        return ""

    async def status(self, previous: list[dict[str, Any]]) -> dict[str, Any]:
        problem = await self._ready_problem()
        pressure = await self._runtime.blocking(read_pressure, self._config.root_dir)
        wanted = conditions(
            pressure,
            ready_problem=problem,
            memory_threshold=quantity.to_bytes(self._config.eviction_memory_available),
            disk_threshold_percent=self._config.eviction_nodefs_available_percent,
        )
        return {
            "capacity": self.capacity,
            "allocatable": self.allocatable,
            "conditions": with_times(wanted, previous, self._clock.now()),
            "addresses": [
                {"type": "InternalIP", "address": self._config.node_ip},
                {"type": "Hostname", "address": self.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": self.node_info(),
        }

    # -- registration ------------------------------------------------------------------------------

    async def register(self) -> dict[str, Any]:
        """Create or reconcile the Node, then write its status; retries until it succeeds."""
        delay = 0.2
        while True:
            try:
                node = await self._register_once()
                self.observe(node)
                await self.update_status(force=True)
                log.info("registered node", node=self.name, ip=self._config.node_ip)
                return node
            except errors.ApiError as err:
                if not (err.retryable or isinstance(err, errors.Conflict)):
                    raise
                log.warning(
                    "failed to register node, retrying",
                    node=self.name,
                    err=err,
                    delay_s=round(delay, 2),
                )
            await self._clock.sleep(delay * (0.5 + self._rng.random()))
            delay = min(delay * 2, 7.0)

    async def _register_once(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.name, "labels": self.labels()},
            "spec": {"taints": [t.to_api() for t in self._config.register_with_taints]},
        }
        if not body["spec"]["taints"]:
            del body["spec"]["taints"]
        try:
            return await self._client.create("nodes", body)
        except errors.AlreadyExists:
            current = await self._client.get("nodes", self.name)
            labels = current.get("metadata", {}).get("labels") or {}
            if any(labels.get(k) != v for k, v in self.labels().items()):
                return await self._client.patch(
                    "nodes", self.name, {"metadata": {"labels": self.labels()}}
                )
            return current

    async def update_status(self, *, force: bool = False) -> bool:
        """Measure and write the status if it changed (or the report interval passed)."""
        current = await self._client.get("nodes", self.name)
        self.observe(current)
        held = current.get("status") or {}
        status = await self.status(held.get("conditions") or [])
        now = self._clock.monotonic()
        stale = now - self._last_write_at >= self._config.status_report_interval_s
        if not force and not stale and _comparable(status) == _comparable(held):
            return False
        await self._client.patch("nodes", self.name, {"status": status}, status=True)
        self._last_write_at = now
        return True

    async def _pause(self, seconds: float) -> None:
        """Sleep for seconds, or less if a recheck is asked for meanwhile."""
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        recheck = asyncio.ensure_future(self._recheck.wait())
        try:
            await asyncio.wait({sleeper, recheck}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()
            recheck.cancel()
        self._recheck.clear()

    async def run_status(self) -> None:
        while True:
            await self._pause(self._config.status_update_interval_s)
            try:
                await self.update_status()
            except errors.NotFound:
                log.warning("node object was deleted, registering again", node=self.name)
                await self.register()
            except errors.ApiError as err:
                log.warning("failed to update node status", node=self.name, err=err)

    # -- the lease ---------------------------------------------------------------------------------

    def _lease_body(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": LEASE_NAMESPACE}
        if self.uid:
            meta["ownerReferences"] = [
                {"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": self.uid}
            ]
        return {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": meta,
            "spec": {
                "holderIdentity": self.name,
                "leaseDurationSeconds": self._config.lease_duration_s,
                "renewTime": rfc3339_micro(self._clock.now()),
            },
        }

    async def renew_lease(self) -> dict[str, Any]:
        if self._lease is None:
            try:
                self._lease = await self._client.get("leases", self.name, namespace=LEASE_NAMESPACE)
            except errors.NotFound:
                self._lease = await self._client.create(
                    "leases", self._lease_body(), namespace=LEASE_NAMESPACE
                )
                self.lease_renewals += 1
                return self._lease
        body = self._lease_body()
        body["metadata"]["resourceVersion"] = self._lease["metadata"]["resourceVersion"]
        try:
            self._lease = await self._client.update("leases", body)
        except (errors.Conflict, errors.NotFound):
            self._lease = None
            raise
        self.lease_renewals += 1
        return self._lease

    async def run_lease(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.renew_lease()
                delay = 0.2
                await self._clock.sleep(self._config.lease_renew_interval_s)
            except errors.ApiError as err:
                log.warning(
                    "failed to renew node lease, retrying",
                    node=self.name,
                    err=err,
                    delay_s=round(delay, 2),
                )
                await self._clock.sleep(delay)
                delay = min(delay * 2, 7.0)
