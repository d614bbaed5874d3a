"""The runc driver: the same interface, with runc building the container from a bundle."""

from __future__ import annotations

import json
import os
import select
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubelet.runtime import logs, oci
from kubelet.runtime.interface import (
    ContainerState,
    InvalidConfigError,
    Mount,
    Resources,
    StartError,
)
from kubelet.runtime.native import RuntimeOptions
from tests.runtime.conftest import cleanup_runtime, container, pod, run_to_exit, sh

pytestmark = [
    pytest.mark.root,
    pytest.mark.timeout(120),
    pytest.mark.skipif(shutil.which("runc") is None, reason="needs runc (Debian package runc)"),
]


@pytest.fixture
def runc_runtime(tmp_path: Path, cgroup_root: str) -> Iterator[oci.RuncRuntime]:
    state_dir = tmp_path / "runc-state"
    rt = oci.RuncRuntime(RuntimeOptions(state_dir=state_dir, cgroup_root=cgroup_root))
    try:
        yield rt
    finally:
        cleanup_runtime(rt, state_dir, cgroup_root)


def test_runc_runs_a_container_with_the_same_isolation(
    runc_runtime: oci.RuncRuntime, busybox_rootfs: Path, tmp_path: Path
):
    volume = tmp_path / "volume"
    volume.mkdir()
    sandbox = runc_runtime.run_sandbox(pod("runc-pod"))
    script = (
        "hostname; cat /proc/1/cmdline | tr '\\0' ' '; echo; grep CapBnd /proc/self/status; "
        "echo hi > /data/from-runc; mkdir -p /mnt; mount -t tmpfs none /mnt 2>&1; exit 9"
    )
    status, output = run_to_exit(
        runc_runtime,
        sandbox,
        sh(
            busybox_rootfs,
            script,
            mounts=(Mount(str(volume), "/data"),),
            resources=Resources(memory_limit_bytes=64 * 1024 * 1024),
        ),
    )
    lines = output.splitlines()
    assert lines[0] == "runc-pod"
    assert lines[1].startswith("sh -c hostname")
    assert lines[2] == "CapBnd:\t00000000a80405fb"
    assert "denied" in lines[3]
    assert (status.exit_code, status.reason) == (9, "Error")
    assert (volume / "from-runc").read_text() == "hi\n"


def test_runc_bundle_is_an_oci_config(runc_runtime: oci.RuncRuntime, busybox_rootfs: Path):
    sandbox = runc_runtime.run_sandbox(pod())
    container_id = runc_runtime.create_container(sandbox, sh(busybox_rootfs, "true"))
    status = runc_runtime.sandbox_status(sandbox)
    bundle = json.loads(
        Path(runc_runtime._container_dir(container_id), "bundle", "config.json").read_text()
    )
    namespaces = {n["type"]: n.get("path") for n in bundle["linux"]["namespaces"]}
    assert namespaces["network"] == status.network_namespace_path
    assert namespaces["pid"] is None and namespaces["mount"] is None
    assert bundle["linux"]["cgroupsPath"] == f"/{status.cgroup_path}/{container_id}"
    assert bundle["linux"]["resources"]["pids"] == {"limit": 1024}
    assert "/proc/kcore" in bundle["linux"]["maskedPaths"]
    assert bundle["process"]["noNewPrivileges"] is True


def test_runc_exec_and_graceful_stop(runc_runtime: oci.RuncRuntime, busybox_rootfs: Path):
    sandbox = runc_runtime.run_sandbox(pod())
    container_id = runc_runtime.create_container(
        sandbox, sh(busybox_rootfs, "trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done")
    )
    runc_runtime.start_container(container_id)
    result = runc_runtime.exec_sync(container_id, ("sh", "-c", "echo $((6*7)); exit 2"), 10)
    assert (result.exit_code, result.stdout) == (2, b"42\n")
    runc_runtime.stop_container(container_id, 20)
    status = runc_runtime.container_status(container_id)
    assert (status.state, status.exit_code, status.reason) == (
        ContainerState.EXITED,
        0,
        "Completed",
    )
    assert b"bye\n" in b"".join(logs.read_log(status.log_path))


def test_runc_start_failure(runc_runtime: oci.RuncRuntime, busybox_rootfs: Path):
    sandbox = runc_runtime.run_sandbox(pod())
    container_id = runc_runtime.create_container(
        sandbox, container(busybox_rootfs, "no-such-binary", name="bad")
    )
    with pytest.raises(StartError, match="runc create failed"):
        runc_runtime.start_container(container_id)
    status = runc_runtime.container_status(container_id)
    assert (status.exit_code, status.reason) == (128, "StartError")


def test_runc_refuses_tty(runc_runtime: oci.RuncRuntime, busybox_rootfs: Path):
    sandbox = runc_runtime.run_sandbox(pod())
    with pytest.raises(InvalidConfigError, match="tty"):
        runc_runtime.create_container(sandbox, sh(busybox_rootfs, "true", tty=True))


def test_runc_exec_with_a_terminal(runc_runtime: oci.RuncRuntime, busybox_rootfs: Path):
    sandbox = runc_runtime.run_sandbox(pod())
    container_id = runc_runtime.create_container(sandbox, sh(busybox_rootfs, "exec sleep 60"))
    runc_runtime.start_container(container_id)
    session = runc_runtime.exec_stream(
        container_id, ("sh",), tty=True, stdin=True, rows=30, cols=90
    )
    try:
        assert session.terminal is not None

        def read_until(marker: bytes, seen: bytes = b"") -> bytes:
            deadline = time.monotonic() + 20
            while marker not in seen and time.monotonic() < deadline:
                if select.select([session.terminal], [], [], 0.2)[0]:
                    try:
                        seen += os.read(session.terminal, 4096)  # type: ignore[arg-type]
                    except OSError:
                        break
            return seen

        # Typed only at the prompt: typed ahead, the line can reach the terminal before
        # runc has made it the container's, and be read by the wrong side.
        assert b"# " in read_until(b"# ")
        os.write(session.terminal, b"stty size; exit 4\n")
        assert b"30 90" in read_until(b"30 90")
        assert session.wait(10) == 4
    finally:
        session.close()
