"""The shim's side of the runc driver: runc creates the container, the shim supervises it.

The shim makes itself a subreaper, mounts the overlay root in a mount namespace of its own
(so the host never sees it), then runs `runc create` (stdio passed through to the
container) and `runc start`. runc's init process is re-parented to the shim, which waits
for it like a native container's init; after the exit `runc delete` drops runc's state.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
from pathlib import Path
from typing import Any

from kubelet.runtime import _libc as libc
from kubelet.runtime import rootfs
from kubelet.runtime.shim import StartFailure
from kubelet.runtime.spec import LaunchSpec

RUNC_TIMEOUT_S = 60.0


@dataclasses.dataclass(frozen=True)
class RuncLauncher:
    """Runs in the shim: the container's process is runc's init, re-parented to us."""

    runc: str
    root: str
    bundle: str
    subreaper = True

    def _run(self, *args: str, stdio: tuple[int, int, int] | None = None) -> None:
        log = f"{self.bundle}/runc.log"
        command = [self.runc, "--root", self.root, "--log", log, "--log-format", "json", *args]
        streams: dict[str, Any] = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.DEVNULL,
            "stderr": subprocess.DEVNULL,
        }
        if stdio is not None:
            streams = {"stdin": stdio[0], "stdout": stdio[1], "stderr": stdio[2]}
        done = subprocess.run(command, timeout=RUNC_TIMEOUT_S, check=False, **streams)
        if done.returncode != 0:
            raise StartFailure(f"runc {args[0]} failed: {_last_runc_error(log)}")

    def launch(self, spec: LaunchSpec, stdio: tuple[int, int, int]) -> tuple[int, None]:
        libc.unshare(libc.CLONE_NEWNS)
        libc.mount(None, "/", None, libc.MS_REC | libc.MS_SLAVE)
        rootfs.mount_overlay(spec)
        pid_file = f"{self.bundle}/init.pid"
        self._run(
            "create",
            "--bundle",
            self.bundle,
            "--pid-file",
            pid_file,
            spec.container_id,
            stdio=stdio,
        )
        pid = int(Path(pid_file).read_text())
        self._run("start", spec.container_id)
        return pid, None

    def after_exit(self, spec: LaunchSpec) -> None:
        try:
            self._run("delete", "--force", spec.container_id)
        except (StartFailure, subprocess.TimeoutExpired):
            pass  # remove_container tries again


def _last_runc_error(log: str) -> str:
    try:
        lines = Path(log).read_text().splitlines()
    except OSError:
        return "no runc.log"
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("level") in ("error", "fatal"):
            return str(entry.get("msg", line))
    return lines[-1] if lines else "runc.log is empty"
