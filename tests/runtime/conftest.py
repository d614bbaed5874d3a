"""Fixtures for the runtime tests: a busybox root file system, a runtime, a sandbox.

Everything a test makes on the host is named with a prefix unique to the test (cgroup
root kltest-<pid>-<random>, state directory in the test's tmp_path) and is removed in the
fixture's teardown even when the test failed: sandboxes and containers through the
runtime, then the cgroup root, then any mount left under the state directory (which would
be a bug the cleanup test reports, but must not leak into other tests).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubelet.runtime import _libc, logs
from kubelet.runtime.cgroups import detect
from kubelet.runtime.interface import (
    ContainerConfig,
    ContainerStatus,
    SandboxConfig,
    SandboxId,
)
from kubelet.runtime.native import NativeRuntime, RuntimeOptions

BUSYBOX = Path("/bin/busybox")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (namespaces, cgroups, mounts)"
    if not BUSYBOX.exists():
        return "needs /bin/busybox (Debian package busybox-static)"
    filesystems = Path("/proc/filesystems").read_text()
    if "overlay" not in filesystems:
        return "needs overlayfs in the kernel"
    if not Path("/proc/self/ns/pid").exists():
        return "needs PID namespaces"
    return None


@pytest.fixture(autouse=True)
def _needs_root_and_kernel_features(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("root") and (reason := _skip_reason()):
        pytest.skip(reason)


def make_busybox_rootfs(target: Path) -> Path:
    """A root file system from Debian's busybox-static: /bin/busybox and its applet links."""
    (target / "bin").mkdir(parents=True)
    shutil.copy2(BUSYBOX, target / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            (target / "bin" / applet).symlink_to("busybox")
    for directory in ("etc", "tmp", "proc", "sys", "dev", "root", "home/app"):
        (target / directory).mkdir(parents=True, exist_ok=True)
    (target / "tmp").chmod(0o1777)
    (target / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n"
    )
    (target / "etc" / "group").write_text("root:x:0:\napp:x:1000:\nstaff:x:50:app\n")
    (target / "etc" / "image-file").write_text("from the image\n")
    return target


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_busybox_rootfs(tmp_path_factory.mktemp("image") / "layer0")


def unique_prefix() -> str:
    return f"kltest-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def cleanup_runtime(runtime: NativeRuntime, state_dir: Path, cgroup_root: str) -> None:
    for sandbox in runtime.list_sandboxes():
        runtime.remove_sandbox(sandbox.id)
    for container in runtime.list_containers():
        runtime.remove_container(container.id)
    runtime.close()
    detect().remove(cgroup_root)
    for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
        point = line.split()[4]
        if point.startswith(str(state_dir)):
            _libc.umount2(point, _libc.MNT_DETACH)


@pytest.fixture
def cgroup_root() -> str:
    return unique_prefix()


@pytest.fixture
def runtime(tmp_path: Path, cgroup_root: str) -> Iterator[NativeRuntime]:
    state_dir = tmp_path / "state"
    rt = NativeRuntime(RuntimeOptions(state_dir=state_dir, cgroup_root=cgroup_root))
    try:
        yield rt
    finally:
        cleanup_runtime(rt, state_dir, cgroup_root)


def pod(name: str = "web", **overrides: object) -> SandboxConfig:
    return SandboxConfig(
        name=name, namespace="default", uid=overrides.pop("uid", uuid.uuid4().hex), **overrides
    )  # type: ignore[arg-type]


@pytest.fixture
def sandbox(runtime: NativeRuntime) -> SandboxId:
    return runtime.run_sandbox(pod())


def container(rootfs: Path, *argv: str, **overrides: object) -> ContainerConfig:
    return ContainerConfig(
        name=overrides.pop("name", "main"),  # type: ignore[arg-type]
        layers=overrides.pop("layers", (rootfs,)),  # type: ignore[arg-type]
        argv=argv,
        **overrides,  # type: ignore[arg-type]
    )


def run_to_exit(
    runtime: NativeRuntime, sandbox_id: SandboxId, config: ContainerConfig, timeout_s: float = 30
) -> tuple[ContainerStatus, str]:
    """Create, start and wait for a container; its final status and its log output."""
    container_id = runtime.create_container(sandbox_id, config)
    runtime.start_container(container_id)
    status = runtime.wait_container(container_id, timeout_s)
    output = b"".join(logs.read_log(status.log_path)).decode()
    return status, output


def sh(rootfs: Path, script: str, **overrides: object) -> ContainerConfig:
    return container(rootfs, "sh", "-c", script, **overrides)
