"""RuncRuntime: the same ContainerRuntime, with runc creating the containers from OCI bundles.

The sandbox, cgroups, state directory, shim, logs and stop logic are NativeRuntime's; what
changes is who builds the container. At create time the runtime writes an OCI bundle
(config.json: process, root, mounts, namespaces joined by path, cgroupsPath, resources,
masked and read-only paths) next to the container's state. The shim (RuncLauncher) makes
itself a subreaper, mounts the overlay root in a mount namespace of its own (so the host
never sees it), and runs `runc create` then `runc start`; runc's init is re-parented to the
shim, which therefore waits for it and records its exit as for a native container. exec
goes through `runc exec`. This is the yardstick of bench/container_start.py and an escape
hatch for users who trust runc more than this project.

Limits: a container with tty is refused (runc needs a console socket for it, not written);
runc's own error messages go to the container's stderr log as well as to runc.log.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

from kubelet.runtime import paths, rootfs, seccomp
from kubelet.runtime.cgroups import CPU_PERIOD_US, cpu_quota_us, cpu_shares
from kubelet.runtime.interface import (
    ContainerConfig,
    ContainerId,
    ExecResult,
    InvalidConfigError,
    Resources,
    RuntimeFailure,
)
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from kubelet.runtime.runc_launcher import RuncLauncher
from kubelet.runtime.spec import LaunchSpec

OCI_VERSION = "1.0.2"
NS_TYPES = {"net": "network", "uts": "uts", "ipc": "ipc", "pid": "pid"}
RUNC_TIMEOUT_S = 60.0
__all__ = ["RuncLauncher", "RuncRuntime", "bundle_config"]


def bundle_config(spec: LaunchSpec, resources: Resources, *, rootfs_path: str) -> dict[str, Any]:
    """The OCI runtime config.json equivalent to what NativeRuntime does for spec."""
    process = spec.process
    capabilities = [f"CAP_{name}" for name in process.capabilities]
    config: dict[str, Any] = {
        "ociVersion": OCI_VERSION,
        "process": {
            "terminal": spec.tty,
            "user": {
                "uid": process.uid,
                "gid": process.gid,
                "additionalGids": list(process.groups),
            },
            "args": list(process.argv),
            "env": list(process.env),
            "cwd": process.cwd,
            "capabilities": {
                "bounding": capabilities,
                "effective": capabilities,
                "permitted": capabilities,
                "inheritable": [],
                "ambient": [],
            },
            "noNewPrivileges": process.no_new_privs,
        },
        "root": {"path": rootfs_path, "readonly": spec.read_only_rootfs},
        "mounts": _mounts(spec),
        "linux": {
            "namespaces": _namespaces(spec),
            "cgroupsPath": "/" + spec.cgroup_path,
            "resources": _resources(resources, privileged=spec.privileged),
        },
    }
    if spec.oom_score_adj is not None:
        config["process"]["oomScoreAdj"] = spec.oom_score_adj
    if process.seccomp_profile != seccomp.UNCONFINED:
        config["linux"]["seccomp"] = seccomp.oci_section(process.capabilities)
    if not spec.privileged:
        config["linux"]["maskedPaths"] = list(rootfs.MASKED_PATHS)
        config["linux"]["readonlyPaths"] = list(rootfs.READ_ONLY_PATHS)
    return config


def _mounts(spec: LaunchSpec) -> list[dict[str, Any]]:
    sys_mode = "rw" if spec.privileged else "ro"
    mounts = [
        {
            "destination": "/proc",
            "type": "proc",
            "source": "proc",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/dev",
            "type": "tmpfs",
            "source": "tmpfs",
            "options": ["nosuid", "strictatime", "mode=755", "size=65536k"],
        },
        {
            "destination": "/dev/pts",
            "type": "devpts",
            "source": "devpts",
            "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"],
        },
        {
            "destination": "/dev/mqueue",
            "type": "mqueue",
            "source": "mqueue",
            "options": ["nosuid", "noexec", "nodev"],
        },
        {
            "destination": "/sys",
            "type": "sysfs",
            "source": "sysfs",
            "options": ["nosuid", "noexec", "nodev", sys_mode],
        },
        {
            "destination": "/sys/fs/cgroup",
            "type": "cgroup",
            "source": "cgroup",
            "options": ["nosuid", "noexec", "nodev", "relatime", sys_mode],
        },
    ]
    if spec.shm_dir:
        mounts.append(
            {
                "destination": "/dev/shm",
                "type": "bind",
                "source": spec.shm_dir,
                "options": ["rbind", "rw"],
            }
        )
    for destination, host_file in spec.etc_files:
        mounts.append(
            {
                "destination": destination,
                "type": "bind",
                "source": host_file,
                "options": ["rbind", "rw"],
            }
        )
    for volume in sorted(spec.mounts, key=lambda m: m.destination.rstrip("/").count("/")):
        source = volume.source
        if volume.sub_path:
            source = paths.ensure_beneath(volume.source, volume.sub_path, directory=True)
        mode = "ro" if volume.read_only else "rw"
        mounts.append(
            {
                "destination": volume.destination,
                "type": "bind",
                "source": source,
                "options": ["rbind", "rprivate", mode],
            }
        )
    return mounts


def _namespaces(spec: LaunchSpec) -> list[dict[str, str]]:
    joined = dict(spec.join_namespaces)
    out = [{"type": "mount"}, {"type": "cgroup"}]
    for kind, oci_type in NS_TYPES.items():
        if kind in joined:
            out.append({"type": oci_type, "path": joined[kind]})
    if spec.new_pid_namespace:
        out.append({"type": "pid"})
    return out


def _resources(res: Resources, *, privileged: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not privileged:
        out["devices"] = [{"allow": False, "access": "rwm"}]
    if res.memory_limit_bytes is not None:
        out["memory"] = {"limit": res.memory_limit_bytes}
    cpu: dict[str, int] = {}
    if res.cpu_limit_millis is not None:
        cpu.update(quota=cpu_quota_us(res.cpu_limit_millis), period=CPU_PERIOD_US)
    if res.cpu_request_millis is not None:
        cpu["shares"] = cpu_shares(res.cpu_request_millis)
    if cpu:
        out["cpu"] = cpu
    if res.pids_limit:
        out["pids"] = {"limit": res.pids_limit}
    return out


class RuncExecSession:
    """An exec through `runc exec` (ExecSession of interface.py)."""

    def __init__(self, proc: subprocess.Popen[bytes], *, terminal: int | None) -> None:
        self._proc = proc
        self.pid = proc.pid
        self.terminal = terminal
        self.stdin = proc.stdin.fileno() if proc.stdin else None
        self.stdout = proc.stdout.fileno() if proc.stdout else None
        self.stderr = proc.stderr.fileno() if proc.stderr else None

    def resize(self, rows: int, cols: int) -> None:
        import fcntl
        import struct
        import termios

        if self.terminal is None:
            raise RuntimeFailure("resize: this exec has no terminal")
        fcntl.ioctl(self.terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        # runc copies the size of its own terminal to the container's on SIGWINCH.
        self._proc.send_signal(signal.SIGWINCH)

    def wait(self, timeout_s: float | None = None) -> int | None:
        try:
            return self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def kill(self) -> None:
        self._proc.kill()

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout, self._proc.stderr):
            if stream:
                stream.close()
        if self.terminal is not None:
            os.close(self.terminal)
            self.terminal = None


class RuncRuntime(NativeRuntime):
    name = "kubelite-runc"

    def __init__(self, options: RuntimeOptions, *, runc: str = "", **kwargs: Any) -> None:
        found = runc or shutil.which("runc")
        if not found:
            raise RuntimeFailure("runc not found in $PATH (Debian package runc)")
        self._runc = found
        super().__init__(options, **kwargs)
        self._runc_root = str(self._root / "runc")
        os.makedirs(self._runc_root, exist_ok=True)

    def _bundle(self, spec: LaunchSpec) -> str:
        return spec.container_dir + "/bundle"

    def _prepare_engine(self, spec: LaunchSpec, config: ContainerConfig) -> None:
        if spec.tty:
            raise InvalidConfigError(
                f"container {config.name!r}: tty is not supported by the runc driver"
            )
        os.mkdir(self._bundle(spec))
        resources = dataclasses.replace(
            config.resources,
            pids_limit=config.resources.pids_limit
            if config.resources.pids_limit is not None
            else self._opts.default_pids_limit,
        )
        document = bundle_config(spec, resources, rootfs_path=spec.rootfs_dir)
        Path(self._bundle(spec), "config.json").write_text(json.dumps(document, indent=1))

    def _shim_args(self, spec: LaunchSpec) -> dict[str, Any]:
        runc = {"runc": self._runc, "root": self._runc_root, "bundle": self._bundle(spec)}
        return {"spec": spec, "runc": runc}

    def _cleanup_engine(self, spec: LaunchSpec) -> None:
        if os.path.isdir(os.path.join(self._runc_root, spec.container_id)):
            subprocess.run(
                [self._runc, "--root", self._runc_root, "delete", "--force", spec.container_id],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=RUNC_TIMEOUT_S,
                check=False,
            )

    def _exec_command(self, container_id: str, argv: tuple[str, ...], *, tty: bool) -> list[str]:
        if not argv:
            raise InvalidConfigError(f"exec in container {container_id}: empty command")
        self._exec_target(container_id)  # StateError unless running
        command = [self._runc, "--root", self._runc_root, "exec"]
        if tty:
            command.append("--tty")
        return [*command, container_id, *argv]

    def exec_sync(
        self, container_id: ContainerId, argv: tuple[str, ...], timeout_s: float
    ) -> ExecResult:
        command = self._exec_command(container_id, argv, tty=False)
        try:
            done = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            return ExecResult(137, exc.stdout or b"", exc.stderr or b"", timed_out=True)
        return ExecResult(done.returncode, done.stdout, done.stderr)

    def exec_stream(
        self,
        container_id: ContainerId,
        argv: tuple[str, ...],
        *,
        tty: bool,
        stdin: bool,
        rows: int = 24,
        cols: int = 80,
    ) -> RuncExecSession:
        import fcntl
        import pty
        import struct
        import termios

        command = self._exec_command(container_id, argv, tty=tty)
        if not tty:
            proc = subprocess.Popen(
                command,
                stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            return RuncExecSession(proc, terminal=None)
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        try:
            proc = subprocess.Popen(
                command, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
            )
        finally:
            os.close(slave)
        return RuncExecSession(proc, terminal=master)
