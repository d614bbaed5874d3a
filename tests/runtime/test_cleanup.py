"""Removing containers and sandboxes leaves nothing on the node: no mounts, cgroups,
processes, namespace files or state."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubelet.runtime import cgroups, state
from kubelet.runtime.interface import Mount, NamespaceMode, NamespaceOptions, NotFoundError
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import pod, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def _mounts_under(prefix: Path) -> list[str]:
    lines = Path("/proc/self/mountinfo").read_text().splitlines()
    return [line.split()[4] for line in lines if line.split()[4].startswith(str(prefix))]


def _cgroup_dirs(name: str) -> list[str]:
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] in ("cgroup", "cgroup2"):
            for directory, _, _ in os.walk(fields[4]):
                if name in directory:
                    found.append(directory)
    return found


def test_remove_leaves_nothing_behind(
    runtime: NativeRuntime, busybox_rootfs: Path, tmp_path: Path, cgroup_root: str
):
    state_dir = tmp_path / "state"
    volume = tmp_path / "volume"
    volume.mkdir()
    sandbox = runtime.run_sandbox(
        pod(uid="cleanup-uid", namespaces=NamespaceOptions(pid=NamespaceMode.POD))
    )
    running = runtime.create_container(
        sandbox,
        sh(
            busybox_rootfs,
            "sleep 60 & sleep 60",
            name="running",
            mounts=(Mount(str(volume), "/data"),),
        ),
    )
    runtime.start_container(running)
    exec_session = runtime.exec_stream(running, ("sleep", "60"), tty=True, stdin=True)
    exited = runtime.create_container(sandbox, sh(busybox_rootfs, "true", name="exited"))
    runtime.start_container(exited)
    runtime.wait_container(exited, 30)
    never_started = runtime.create_container(sandbox, sh(busybox_rootfs, "true", name="created"))

    shim = state.read_json(str(state_dir / "containers" / running / "running.json"))
    sandbox_record = state.read_json(str(state_dir / "sandboxes" / sandbox / "sandbox.json"))
    pause = sandbox_record["pause"]
    assert _mounts_under(state_dir), "the sandbox should have pinned its namespaces"
    assert _cgroup_dirs(f"{cgroup_root}/podcleanup-uid")

    runtime.remove_sandbox(sandbox)
    exec_session.close()

    assert _mounts_under(state_dir) == []
    assert _mounts_under(tmp_path) == []
    assert _cgroup_dirs(f"{cgroup_root}/podcleanup-uid") == []
    for pid, started in (
        (shim["shim_pid"], shim["shim_start"]),
        (shim["pid"], shim["pid_start"]),
        (pause["pid"], pause["start"]),
    ):
        assert not state.is_alive(pid, started), (pid, shim, pause)
    assert list((state_dir / "sandboxes").iterdir()) == []
    assert list((state_dir / "containers").iterdir()) == []
    for container_id in (running, exited, never_started):
        with pytest.raises(NotFoundError):
            runtime.container_status(container_id)
    assert runtime.list_sandboxes() == []
    # Only the node's (empty) cgroup root is left, which the kubelet keeps.
    driver = cgroups.detect()
    assert driver.pids(cgroup_root) == []


def test_remove_container_keeps_the_sandbox(runtime: NativeRuntime, sandbox, busybox_rootfs):
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, "sleep 60"))
    runtime.start_container(container_id)
    cgroup = f"{runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
    runtime.remove_container(container_id)
    assert _cgroup_dirs(container_id) == []  # container ids are unique on every run
    assert not cgroups.detect().exists(cgroup)
    assert runtime.sandbox_status(sandbox).state.value == "ready"
    runtime.remove_container(container_id)  # removing twice is fine
