"""The container runtime seam: what the kubelet asks of a runtime, CRI-shaped.

A Pod is a *sandbox* (network, UTS and IPC namespaces shared by its containers, optionally a
shared PID namespace, a cgroup for the Pod) holding *containers* (a process tree with its own
root filesystem, mount namespace and cgroup). The kubelet drives both through
ContainerRuntime; two implementations exist, NativeRuntime (namespaces, cgroups and overlayfs
done here) and RuncRuntime (an OCI bundle handed to runc), and a kubelet may be given either.

Every method is blocking and thread-safe: an asyncio kubelet calls them through
asyncio.to_thread. Configs and statuses are plain values. Failures raise RuntimeFailure
subclasses whose message names the object and the cause; `retryable` says whether the same
call may succeed later unchanged.
"""

from __future__ import annotations

import dataclasses
import enum
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import NewType, Protocol

SandboxId = NewType("SandboxId", str)
ContainerId = NewType("ContainerId", str)


class RuntimeFailure(Exception):
    """A runtime operation failed; the message says on what and why."""

    retryable = False


class NotFoundError(RuntimeFailure):
    pass


class InvalidConfigError(RuntimeFailure):
    """The caller handed in a config that can never work (bad path, unknown capability)."""


class StateError(RuntimeFailure):
    """The operation does not fit the object's state (start twice, remove while running)."""


class StartError(RuntimeFailure):
    """The container's process could not be started (missing executable, failed mount)."""


class NamespaceMode(enum.Enum):
    """Whose namespace a container uses, as the CRI NamespaceMode."""

    POD = "pod"
    CONTAINER = "container"
    NODE = "node"


@dataclasses.dataclass(frozen=True)
class NamespaceOptions:
    """network NODE is hostNetwork (and then the host's UTS namespace, as Kubernetes does);
    pid POD is shareProcessNamespace, pid NODE is hostPID; ipc NODE is hostIPC."""

    network: NamespaceMode = NamespaceMode.POD
    pid: NamespaceMode = NamespaceMode.CONTAINER
    ipc: NamespaceMode = NamespaceMode.POD


@dataclasses.dataclass(frozen=True)
class HostAlias:
    ip: str
    hostnames: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class DnsConfig:
    servers: tuple[str, ...] = ()
    searches: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Resources:
    """Limits applied through cgroups. None means unset; pids_limit None means the runtime's
    default and 0 means unlimited."""

    cpu_limit_millis: int | None = None
    cpu_request_millis: int | None = None
    memory_limit_bytes: int | None = None
    pids_limit: int | None = None


@dataclasses.dataclass(frozen=True)
class SandboxConfig:
    name: str
    namespace: str
    uid: str
    hostname: str = ""  # empty: the Pod name
    dns: DnsConfig = DnsConfig()
    host_aliases: tuple[HostAlias, ...] = ()
    namespaces: NamespaceOptions = NamespaceOptions()
    log_directory: str = ""  # empty: under the runtime's state directory
    resources: Resources | None = None  # Pod-level limits, on the Pod's cgroup
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Mount:
    """A volume mount: host_path (plus sub_path inside it) appears at container_path."""

    host_path: str
    container_path: str
    read_only: bool = False
    sub_path: str = ""


@dataclasses.dataclass(frozen=True)
class Security:
    privileged: bool = False
    add_capabilities: tuple[str, ...] = ()
    drop_capabilities: tuple[str, ...] = ()  # "ALL" drops every capability
    read_only_root_filesystem: bool = False
    allow_privilege_escalation: bool = False  # False sets no_new_privs
    # None or "RuntimeDefault": the runtime's default filter (kubelite filters by default);
    # "Unconfined": none; "localhost/<file>" is refused. privileged: never filtered.
    seccomp_profile: str | None = None


@dataclasses.dataclass(frozen=True)
class ContainerConfig:
    """A container as the kubelet resolved it: image layers (bottom first, unpacked
    directories from the image store) and the process already merged with the image
    config (see imageconfig.merge_process)."""

    name: str
    layers: tuple[Path, ...]
    argv: tuple[str, ...]
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    working_dir: str = ""  # empty: "/"
    run_as_user: int | None = None
    run_as_group: int | None = None
    supplemental_groups: tuple[int, ...] = ()
    image_user: str = ""  # the image config's User ("uid", "name", "uid:gid", ...)
    mounts: tuple[Mount, ...] = ()
    resources: Resources = Resources()
    security: Security = Security()
    tty: bool = False
    stop_signal: int = signal.SIGTERM
    oom_score_adj: int | None = None
    log_path: str = ""  # relative to the sandbox's log_directory; empty: "<name>/0.log"
    attempt: int = 0  # restart count, recorded for the kubelet
    labels: Mapping[str, str] = dataclasses.field(default_factory=dict)
    annotations: Mapping[str, str] = dataclasses.field(default_factory=dict)


class SandboxState(enum.Enum):
    READY = "ready"
    NOT_READY = "not_ready"


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    UNKNOWN = "unknown"


@dataclasses.dataclass(frozen=True)
class SandboxStatus:
    id: SandboxId
    name: str
    namespace: str
    uid: str
    state: SandboxState
    created_at: float
    hostname: str
    network_namespace_path: str | None  # None for hostNetwork
    ips: tuple[str, ...]
    cgroup_path: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ContainerStatus:
    id: ContainerId
    sandbox_id: SandboxId
    name: str
    state: ContainerState
    created_at: float
    started_at: float | None
    finished_at: float | None
    exit_code: int | None
    reason: str  # "", "Completed", "Error", "OOMKilled", "StartError", "Unknown"
    message: str
    pid: int | None  # the container's main process as the node sees it, while running
    log_path: str
    attempt: int
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclasses.dataclass(frozen=True)
class ExecResult:
    exit_code: int
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


@dataclasses.dataclass(frozen=True)
class Usage:
    """One sample of a cgroup's usage; cpu_nano_cores is the rate since the previous sample
    of the same object (None on the first)."""

    timestamp: float
    cpu_usage_ns: int
    cpu_nano_cores: int | None
    memory_usage_bytes: int
    memory_working_set_bytes: int
    pids: int


@dataclasses.dataclass(frozen=True)
class ContainerStats:
    id: ContainerId
    name: str
    usage: Usage


@dataclasses.dataclass(frozen=True)
class SandboxStats:
    id: SandboxId
    usage: Usage
    containers: tuple[ContainerStats, ...]


@dataclasses.dataclass(frozen=True)
class RuntimeInfo:
    name: str
    version: str
    cgroup_version: int


class ExecSession(Protocol):
    """A running exec for the streaming path. With tty, `terminal` is the pty master (read
    and write it; stdout and stderr are merged); without, stdin/stdout/stderr are pipes (stdin
    is None unless asked for). The caller closes the session."""

    pid: int
    terminal: int | None
    stdin: int | None
    stdout: int | None
    stderr: int | None

    def resize(self, rows: int, cols: int) -> None: ...

    def wait(self, timeout_s: float | None = None) -> int | None:
        """The exit code, or None if the process still runs after timeout_s."""

    def kill(self) -> None: ...

    def close(self) -> None: ...


class ContainerRuntime(Protocol):
    def info(self) -> RuntimeInfo: ...

    # Sandboxes.
    def run_sandbox(self, config: SandboxConfig) -> SandboxId: ...

    def stop_sandbox(self, sandbox_id: SandboxId) -> None:
        """Kill every container of the sandbox (the kubelet stops them gracefully first)."""

    def remove_sandbox(self, sandbox_id: SandboxId) -> None:
        """Remove the sandbox and its containers; nothing stays on the node but logs."""

    def sandbox_status(self, sandbox_id: SandboxId) -> SandboxStatus: ...

    def list_sandboxes(self) -> list[SandboxStatus]: ...

    def set_sandbox_ips(self, sandbox_id: SandboxId, ips: tuple[str, ...]) -> None:
        """Record the Pod's addresses (from the network code) and add them to /etc/hosts."""

    # Containers.
    def create_container(self, sandbox_id: SandboxId, config: ContainerConfig) -> ContainerId: ...

    def start_container(self, container_id: ContainerId) -> None: ...

    def stop_container(self, container_id: ContainerId, timeout_s: float) -> None:
        """Send the stop signal, then SIGKILL every process left after timeout_s."""

    def remove_container(self, container_id: ContainerId) -> None: ...

    def container_status(self, container_id: ContainerId) -> ContainerStatus: ...

    def list_containers(self, sandbox_id: SandboxId | None = None) -> list[ContainerStatus]: ...

    def wait_container(self, container_id: ContainerId, timeout_s: float) -> ContainerStatus:
        """Block until the container has exited or timeout_s passed; its status then."""

    # Exec and stats.
    def exec_sync(
        self, container_id: ContainerId, argv: tuple[str, ...], timeout_s: float
    ) -> ExecResult: ...

    def exec_stream(
        self,
        container_id: ContainerId,
        argv: tuple[str, ...],
        *,
        tty: bool,
        stdin: bool,
        rows: int = 24,
        cols: int = 80,
    ) -> ExecSession: ...

    def container_stats(self, container_id: ContainerId) -> ContainerStats: ...

    def sandbox_stats(self, sandbox_id: SandboxId) -> SandboxStats: ...

    def close(self) -> None:
        """Release the runtime's helpers; containers keep running."""
