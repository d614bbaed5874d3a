"""Remove what a node's kubelet left on the host once the kubelet is stopped.

Containers outlive their kubelet on purpose (a restarted kubelet adopts
them), so taking a cluster down must stop them through the runtime that
made them: every sandbox of the node's runtime state is stopped and
removed, which unmounts root filesystems and volumes and removes cgroups.
What is left after that (a cgroup or mount of a container whose state was
lost) is removed by name, since everything a node makes carries its
cgroup root and lives under its state directory.
"""

from __future__ import annotations

import pathlib

from kubelet.runtime.interface import RuntimeFailure
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from machinery.log import get_logger

log = get_logger("deploy")

CGROUP_MOUNT = pathlib.Path("/sys/fs/cgroup")


def clean_node(node_state: pathlib.Path, cgroup_root: str) -> None:
    runtime_state = node_state / "runtime"
    if runtime_state.exists():
        runtime = NativeRuntime(RuntimeOptions(state_dir=runtime_state, cgroup_root=cgroup_root))
        try:
            for sandbox in runtime.list_sandboxes():
                try:
                    runtime.stop_sandbox(sandbox.id)
                    runtime.remove_sandbox(sandbox.id)
                except RuntimeFailure as err:
                    log.warning("failed to remove sandbox", sandbox=sandbox.id, err=err)
        finally:
            runtime.close()
    unmount_below(node_state)
    remove_cgroups(cgroup_root)


def unmount_below(path: pathlib.Path) -> None:
    import subprocess

    prefix = str(path.resolve())
    mounts = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == prefix or point.startswith(prefix + "/"):
            mounts.append(point)
    for point in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], check=False, capture_output=True)


def remove_cgroups(cgroup_root: str) -> None:
    """rmdir the node's cgroup subtree in every hierarchy, deepest first."""
    for hierarchy in [CGROUP_MOUNT, *sorted(p for p in CGROUP_MOUNT.iterdir() if p.is_dir())]:
        top = hierarchy / cgroup_root
        if not top.is_dir():
            continue
        for directory in sorted(
            (p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
        ):
            _rmdir(directory)
        _rmdir(top)


def _rmdir(path: pathlib.Path) -> None:
    try:
        path.rmdir()
    except OSError as err:
        log.warning("failed to remove cgroup", path=str(path), err=err)
