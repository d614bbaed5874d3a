"""The fully resolved description of one container, as the shim and the init process use it.

The runtime turns a ContainerConfig plus its sandbox into a LaunchSpec at create time:
every path is absolute, every namespace is a file to join or a flag to unshare, the user is
numeric, capabilities are a final list. It is stored in the container's state directory
(spec.json), so a runtime restarted later (or exec) needs nothing but that file, and it is
handed to the shim over the fork server's private channel.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any


@dataclasses.dataclass(frozen=True)
class MountSpec:
    source: str  # host path, sub_path not yet applied
    destination: str  # path inside the container
    read_only: bool
    sub_path: str = ""


@dataclasses.dataclass(frozen=True)
class ProcessSpec:
    """What exec needs as well as the container's main process."""

    argv: tuple[str, ...]
    env: tuple[str, ...]  # "KEY=value"
    cwd: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    capabilities: tuple[str, ...]
    no_new_privs: bool
    seccomp_profile: str | None


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    container_id: str
    sandbox_id: str
    container_dir: str
    process: ProcessSpec
    layers: tuple[str, ...]  # bottom first
    upper_dir: str
    work_dir: str
    rootfs_dir: str  # mount point of the overlay, inside container_dir
    read_only_rootfs: bool
    privileged: bool
    mounts: tuple[MountSpec, ...]
    etc_files: tuple[tuple[str, str], ...]  # (path in container, host file)
    shm_dir: str | None  # the Pod's /dev/shm, bind-mounted; None: a private tmpfs
    join_namespaces: tuple[tuple[str, str], ...]  # (kind, nsfs path): net, uts, ipc, pid
    new_pid_namespace: bool
    cgroup_path: str
    cgroup_procs: tuple[str, ...]
    cgroup_version: int
    cgroup_mounts: tuple[tuple[str, str], ...]  # (dir under /sys/fs/cgroup, v1 options)
    oom_file: str  # the cgroup file that counts OOM kills ("oom_kill N")
    kill_file: str | None  # cgroup.kill, when the kernel has it
    tty: bool
    oom_score_adj: int | None
    stop_signal: int
    log_path: str
    log_max_bytes: int
    log_max_files: int

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> LaunchSpec:
        raw: dict[str, Any] = json.loads(text)
        raw["process"] = ProcessSpec(**_tuples(raw["process"]))
        raw["mounts"] = tuple(MountSpec(**m) for m in raw["mounts"])
        return cls(**_tuples(raw))


def _tuples(raw: dict[str, Any]) -> dict[str, Any]:
    """JSON gives lists; the frozen dataclasses hold tuples (of tuples for pairs)."""
    out = {}
    for key, value in raw.items():
        if isinstance(value, list):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        out[key] = value
    return out
