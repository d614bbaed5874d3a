"""The runtime's state directory: the only memory that outlives a runtime process.

Layout under the root:
    sandboxes/<id>/sandbox.json   the SandboxConfig and what run_sandbox made
    sandboxes/<id>/ns/{net,uts,ipc}  bind-mounted namespace files (nsfs)
    sandboxes/<id>/{hosts,hostname,resolv.conf}, shm/ (a tmpfs)
    containers/<id>/container.json  the ContainerConfig as created, with its sandbox
    containers/<id>/spec.json     the LaunchSpec (what the shim and exec use)
    containers/<id>/running.json  written by the shim once the process runs
    containers/<id>/exit.json     written by the shim once the process has exited
    containers/<id>/{upper,work,rootfs}  the writable layer and the overlay mount point

Files are written whole (a temporary file renamed over the name), so a reader sees either
the old or the new content, never half. A process is identified by pid and start time
(field 22 of /proc/<pid>/stat) within one boot (boot_id), so a recycled pid is never
taken for a container, not even after the node rebooted.
"""

from __future__ import annotations

import functools
import json
import os
from typing import Any


def write_json(path: str, value: dict[str, Any]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, json.dumps(value).encode())
    finally:
        os.close(fd)
    os.rename(tmp, path)


def read_json(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


@functools.cache
def boot_id() -> str:
    """This boot's id: pids and start times from another boot name nothing of ours."""
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def _stat_fields(pid: int) -> list[bytes] | None:
    """Fields of /proc/<pid>/stat from the state on (index 0), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None  # gone before the open, or between the open and the read
    # The command name may hold spaces and parentheses; fields resume after the last ')'.
    return raw[raw.rindex(b")") + 2 :].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[19])


def is_alive(pid: int | None, started: int | None) -> bool:
    """Whether pid still names the process that started at `started` (zombies are dead)."""
    if pid is None or started is None:
        return False
    fields = _stat_fields(pid)
    return fields is not None and int(fields[19]) == started and fields[0] != b"Z"


def open_pidfd(pid: int | None, started: int | None) -> int | None:
    """A pidfd for the process if it is still the one that started at `started`."""
    if pid is None or started is None:
        return None
    try:
        fd = os.pidfd_open(pid)
    except (ProcessLookupError, OSError):
        return None
    if start_time(pid) != started:
        os.close(fd)
        return None
    return fd
