"""The cgroup v2 driver on whatever v2 hierarchy this host mounts (the unified one of a hybrid
host, or /sys/fs/cgroup itself): tree, membership, kill, removal and the BPF device filter.
Limits are checked only where the hierarchy has the controllers."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from kubelet.runtime import cgroups
from kubelet.runtime.interface import InvalidConfigError, Resources
from tests.runtime.conftest import unique_prefix

pytestmark = [pytest.mark.root, pytest.mark.timeout(60)]


def _v2_mount() -> str | None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return fields[4]
    return None


@pytest.fixture
def v2() -> Iterator[tuple[cgroups.CgroupV2, str]]:
    mount = _v2_mount()
    if mount is None:
        pytest.skip("no cgroup v2 hierarchy is mounted")
    driver = cgroups.CgroupV2(mount)
    root = unique_prefix()
    try:
        yield driver, root
    finally:
        driver.kill_all(root)
        driver.remove(root)


def _in_cgroup(driver: cgroups.CgroupV2, path: str, action) -> int:
    """Run action() in a child that joined path; the child's exit status."""
    pid = os.fork()
    if pid == 0:
        try:
            for procs in driver.procs_files(path):
                with open(procs, "w") as f:
                    f.write("0")
            os._exit(action())
        except BaseException:  # noqa: BLE001 - report through the exit status
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def test_tree_membership_kill_and_removal(v2):
    driver, root = v2
    path = f"{root}/pod1/ctr"
    driver.create(path, None, restrict_devices=False)
    read_r, read_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        with open(driver.procs_files(path)[0], "w") as f:
            f.write("0")
        os.write(read_w, b"x")
        os.execvp("sleep", ["sleep", "60"])
    os.read(read_r, 1)
    assert driver.pids(root) == [pid]
    driver.kill_all(f"{root}/pod1")
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == -9
    driver.remove(f"{root}/pod1")
    assert not driver.exists(f"{root}/pod1")


def test_device_filter_allows_only_the_small_set(v2, tmp_path: Path):
    driver, root = v2
    path = f"{root}/ctr"
    driver.create(path, None, restrict_devices=True)
    nodes = {"null": (1, 3), "port": (1, 4), "tun": (10, 200), "pts9": (136, 9)}
    for name, (major, minor) in nodes.items():
        os.mknod(tmp_path / name, 0o666 | stat.S_IFCHR, os.makedev(major, minor))

    def probe(name: str) -> int:
        try:
            os.close(os.open(tmp_path / name, os.O_RDWR))
        except PermissionError:
            return 1
        except OSError:
            return 0  # the filter let it through; the device itself may not exist
        return 0

    def mknod() -> int:
        os.mknod(tmp_path / "made", 0o600 | stat.S_IFCHR, os.makedev(1, 4))
        return 0

    assert _in_cgroup(driver, path, lambda: probe("null")) == 0
    assert _in_cgroup(driver, path, lambda: probe("pts9")) == 0
    assert _in_cgroup(driver, path, lambda: probe("port")) == 1
    assert _in_cgroup(driver, path, lambda: probe("tun")) == 1
    assert _in_cgroup(driver, path, mknod) == 0  # creating is allowed, opening is not
    # Outside the cgroup the node's own rules apply.
    assert probe("port") == 0


def test_limits_without_the_controller_are_refused_by_name(v2):
    driver, root = v2
    available = Path(driver._dir(""), "cgroup.controllers").read_text().split()
    if "memory" in available:
        pytest.skip("this v2 hierarchy has the memory controller")
    with pytest.raises(InvalidConfigError, match="limits.memory is set but .*memory.max"):
        driver.create(f"{root}/ctr", Resources(memory_limit_bytes=1 << 26), restrict_devices=False)


def test_limits_are_written_where_the_controllers_exist(v2):
    driver, root = v2
    available = Path(driver._dir(""), "cgroup.controllers").read_text().split()
    if not {"cpu", "memory", "pids"} <= set(available):
        pytest.skip("this v2 hierarchy lacks the cpu, memory or pids controller")
    path = f"{root}/ctr"
    driver.create(
        path,
        Resources(
            cpu_limit_millis=500, cpu_request_millis=250, memory_limit_bytes=1 << 26, pids_limit=50
        ),
        restrict_devices=False,
    )
    directory = Path(driver._dir(path))
    assert (directory / "cpu.max").read_text().split() == ["50000", "100000"]
    assert (directory / "cpu.weight").read_text().strip() == "10"
    assert (directory / "memory.max").read_text().strip() == str(1 << 26)
    assert (directory / "pids.max").read_text().strip() == "50"
