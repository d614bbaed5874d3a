"""cgroup limits on real containers: OOM kills reported, fork bombs contained, CPU settings."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kubelet.runtime import cgroups, logs
from kubelet.runtime.interface import ContainerState, Resources
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import run_to_exit, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]

MiB = 1024 * 1024


def test_memory_hog_is_oom_killed_and_reported(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    # dd allocates its 256 MiB block and fills it: far past a 32 MiB limit.
    config = sh(
        busybox_rootfs,
        "echo start; exec dd if=/dev/zero of=/dev/null bs=256M count=1",
        resources=Resources(memory_limit_bytes=32 * MiB),
    )
    status, output = run_to_exit(runtime, sandbox, config)
    assert status.reason == "OOMKilled", (status, output)
    assert status.exit_code != 0
    assert status.exit_code == 137
    assert output.startswith("start")


def test_exit_within_the_memory_limit_is_completed(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    config = sh(
        busybox_rootfs,
        "dd if=/dev/zero of=/dev/null bs=1M count=4",
        resources=Resources(memory_limit_bytes=64 * MiB),
    )
    status, _ = run_to_exit(runtime, sandbox, config)
    assert (status.exit_code, status.reason) == (0, "Completed")


def test_fork_bomb_is_stopped_by_the_pids_limit(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    limit = 16
    # Every shell forks a copy of itself and recurses: exponential until forks are refused.
    bomb = "b() { b & b; }; b"
    container_id = runtime.create_container(
        sandbox, sh(busybox_rootfs, bomb, resources=Resources(pids_limit=limit))
    )
    runtime.start_container(container_id)
    log = runtime.container_status(container_id).log_path
    driver = cgroups.detect()
    cgroup = f"{runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
    try:
        highest = 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            highest = max(highest, driver.usage(cgroup).pids)
            if "can't fork" in b"".join(logs.read_log(log)).decode():
                break
            time.sleep(0.05)
        assert "can't fork" in b"".join(logs.read_log(log)).decode()
        assert highest <= limit
        # The node is unharmed: it still forks.
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        assert os.waitpid(pid, 0)[1] == 0
    finally:
        runtime.stop_container(container_id, 0)
    assert runtime.container_status(container_id).state == ContainerState.EXITED
    assert driver.pids(cgroup) == []


@pytest.mark.parametrize(
    ("resources", "expected"),
    [
        pytest.param(
            Resources(cpu_limit_millis=250),
            {"cpu.cfs_quota_us": "25000", "cpu.cfs_period_us": "100000"},
            id="quota",
        ),
        pytest.param(Resources(cpu_request_millis=500), {"cpu.shares": "512"}, id="shares"),
        pytest.param(
            Resources(memory_limit_bytes=48 * MiB),
            {"memory.limit_in_bytes": str(48 * MiB)},
            id="memory",
        ),
        pytest.param(Resources(pids_limit=77), {"pids.max": "77"}, id="pids"),
    ],
)
def test_cgroup_v1_files_carry_the_limits(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, resources, expected
):
    driver = cgroups.detect()
    if driver.version != 1:
        pytest.skip("this host runs cgroup v2; the v1 file names do not apply")
    container_id = runtime.create_container(
        sandbox, sh(busybox_rootfs, "true", resources=resources)
    )
    cgroup = f"{runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
    for name, value in expected.items():
        controller = name.split(".")[0]
        text = Path(f"/sys/fs/cgroup/{controller}/{cgroup}/{name}").read_text().strip()
        assert text == value, name


def test_default_pids_limit_applies(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, "true"))
    cgroup = f"{runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
    driver = cgroups.detect()
    if driver.version == 1:
        text = Path(f"/sys/fs/cgroup/pids/{cgroup}/pids.max").read_text().strip()
    else:
        text = Path(f"/sys/fs/cgroup/{cgroup}/pids.max").read_text().strip()
    assert text == "1024"


def test_stats_report_usage(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    container_id = runtime.create_container(
        sandbox,
        sh(
            busybox_rootfs,
            "dd if=/dev/zero of=/dev/null bs=1M count=300; "
            "head -c 8000000 /dev/zero > /dev/shm/x; sleep 30",
        ),
    )
    runtime.start_container(container_id)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = runtime.container_stats(container_id)
            if stats.usage.memory_working_set_bytes > 4 * MiB:
                break
            time.sleep(0.1)
        assert stats.usage.cpu_usage_ns > 0
        assert stats.usage.memory_working_set_bytes > 4 * MiB
        assert stats.usage.pids >= 1
        second = runtime.container_stats(container_id)
        assert second.usage.cpu_nano_cores is not None
        pod = runtime.sandbox_stats(sandbox)
        assert [c.id for c in pod.containers] == [container_id]
        assert pod.usage.memory_working_set_bytes >= stats.usage.memory_working_set_bytes // 2
    finally:
        runtime.stop_container(container_id, 0)
