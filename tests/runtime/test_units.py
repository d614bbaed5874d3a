"""Pure parts of the runtime, table-driven and without root: path resolution, log format,
cgroup conversions and detection, image config merging, capability sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubelet.runtime import caps, cgroups, imageconfig, logs, paths
from kubelet.runtime.interface import InvalidConfigError


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "data").mkdir()
    (root / "abs").symlink_to("/etc")
    (root / "rel").symlink_to("../../../../etc")
    (root / "loop").symlink_to("loop")
    (root / "data" / "up").symlink_to("..")
    return root


@pytest.mark.parametrize(
    ("unsafe", "expected"),
    [
        pytest.param("/etc/passwd", "etc/passwd", id="plain"),
        pytest.param("/../../etc", "etc", id="dotdot-clamped"),
        pytest.param("/abs/shadow", "etc/shadow", id="absolute-symlink-stays-inside"),
        pytest.param("/rel/x", "etc/x", id="relative-symlink-clamped"),
        pytest.param("/data/up/data/up/../etc", "etc", id="dotdot-through-symlink"),
        pytest.param("/missing/../etc", "etc", id="missing-component"),
        pytest.param("", "", id="root-itself"),
    ],
)
def test_secure_join(tree: Path, unsafe: str, expected: str):
    assert paths.secure_join(str(tree), unsafe) == os.path.join(str(tree), expected).rstrip("/")


def test_secure_join_symlink_loop(tree: Path):
    with pytest.raises(OSError, match="too many symlinks"):
        paths.secure_join(str(tree), "/loop/x")


@pytest.mark.parametrize(
    ("sub_path", "refused"),
    [
        pytest.param("a/b", False, id="relative"),
        pytest.param("/etc", True, id="absolute"),
        pytest.param("a/../../b", True, id="dotdot"),
        pytest.param("a..b/c", False, id="dots-in-a-name"),
    ],
)
def test_check_sub_path(sub_path: str, refused: bool):
    assert (paths.check_sub_path(sub_path, where="mounts[0]") is not None) == refused


def test_open_beneath_refuses_a_path_outside(tree: Path):
    with pytest.raises(OSError, match="outside"):
        paths.open_beneath(str(tree / "data"), str(tree / "etc"))


def test_log_writer_and_reader_round_trip(tmp_path: Path):
    path = str(tmp_path / "c" / "0.log")
    writer = logs.LogWriter(path, max_bytes=1 << 20, max_files=2)
    long_line = b"x" * (logs.MAX_LINE + 10)
    writer.write("stdout", b"one\ntw")
    writer.write("stderr", b"err\n")
    writer.write("stdout", b"o\n" + long_line + b"\n")
    writer.write("stdout", b"tail-without-newline")
    writer.close()
    records = [logs.parse_line(line) for line in Path(path).read_bytes().splitlines()]
    tags = [(r.stream, r.partial) for r in records]
    assert tags == [
        ("stdout", False),
        ("stderr", False),
        ("stdout", False),
        ("stdout", True),
        ("stdout", False),
        ("stdout", True),
    ]
    assert logs.read_log(path) == [
        b"one\n",
        b"err\n",
        b"two\n",
        long_line + b"\n",
        b"tail-without-newline",
    ]
    assert logs.read_log(path, streams=("stderr",)) == [b"err\n"]
    assert logs.read_log(path, tail=1) == [b"tail-without-newline"]
    stamped = logs.read_log(path, timestamps=True)[0]
    assert stamped.endswith(b" one\n") and stamped[:2] == b"20"


@pytest.mark.parametrize(
    "line",
    [
        pytest.param(b"2026-01-01T00:00:00.000000000Z stdout X text", id="bad-tag"),
        pytest.param(b"2026-01-01T00:00:00.000000000Z console F text", id="bad-stream"),
        pytest.param(b"garbage", id="garbage"),
    ],
)
def test_parse_line_refuses_malformed(line: bytes):
    assert logs.parse_line(line) is None


def test_previous_log_path(tmp_path: Path):
    for attempt in (0, 1):
        path = logs.container_log_path(tmp_path, "app", attempt)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    assert logs.previous_log_path(tmp_path, "app", 2) == tmp_path / "app" / "1.log"
    assert logs.previous_log_path(tmp_path, "app", 0) is None


@pytest.mark.parametrize(
    ("millis", "shares", "quota", "weight"),
    [
        pytest.param(1, 2, 1000, 1, id="tiny"),
        pytest.param(100, 102, 10000, 4, id="tenth"),
        pytest.param(1000, 1024, 100000, 39, id="one-core"),
        pytest.param(2500, 2560, 250000, 98, id="two-and-a-half"),
    ],
)
def test_cpu_conversions(millis: int, shares: int, quota: int, weight: int):
    assert cgroups.cpu_shares(millis) == shares
    assert cgroups.cpu_quota_us(millis) == quota
    assert cgroups.cpu_weight(shares) == weight


HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


@pytest.mark.parametrize(
    ("mountinfo", "version", "procs"),
    [
        pytest.param(
            HYBRID,
            1,
            (
                "/sys/fs/cgroup/cpu,cpuacct/k/cgroup.procs",
                "/sys/fs/cgroup/memory/k/cgroup.procs",
                "/sys/fs/cgroup/pids/k/cgroup.procs",
                "/sys/fs/cgroup/unified/k/cgroup.procs",
            ),
            id="hybrid",
        ),
        pytest.param(UNIFIED, 2, ("/sys/fs/cgroup/k/cgroup.procs",), id="unified"),
    ],
)
def test_detect(tmp_path: Path, mountinfo: str, version: int, procs: tuple[str, ...]):
    (tmp_path / "mountinfo").write_text(mountinfo)
    driver = cgroups.detect(str(tmp_path / "mountinfo"))
    assert driver.version == version
    assert driver.procs_files("k") == procs


def test_detect_hybrid_container_mounts_keep_co_mounted_controllers(tmp_path: Path):
    (tmp_path / "mountinfo").write_text(HYBRID)
    driver = cgroups.detect(str(tmp_path / "mountinfo"))
    assert isinstance(driver, cgroups.CgroupV1)
    assert driver.container_mounts() == (
        ("cpu,cpuacct", "cpu,cpuacct"),
        ("memory", "memory"),
        ("pids", "pids"),
    )


@pytest.fixture
def layer(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_text(
        "root:x:0:0::/root:/bin/sh\nweb:x:33:33::/var/www:/bin/sh\n"
    )
    (tmp_path / "etc" / "group").write_text("root:x:0:\nweb:x:33:\nlogs:x:4:web\n")
    return tmp_path


@pytest.mark.parametrize(
    ("image_user", "run_as_user", "run_as_group", "expected"),
    [
        pytest.param("", None, None, (0, 0, (0,)), id="default-root"),
        pytest.param("web", None, None, (33, 33, (33, 4)), id="by-name"),
        pytest.param("33:4", None, None, (33, 4, (4,)), id="numeric-pair"),
        pytest.param("web", 1000, None, (1000, 0, (0,)), id="run-as-user-wins"),
        pytest.param("", 33, 77, (33, 77, (77, 4)), id="run-as-user-and-group"),
    ],
)
def test_resolve_user(layer: Path, image_user, run_as_user, run_as_group, expected):
    assert (
        imageconfig.resolve_user(
            [layer], image_user=image_user, run_as_user=run_as_user, run_as_group=run_as_group
        )
        == expected
    )


def test_resolve_user_unknown_name(layer: Path):
    with pytest.raises(InvalidConfigError, match="'nobody' is not in the image's /etc/passwd"):
        imageconfig.resolve_user([layer], image_user="nobody", run_as_user=None, run_as_group=None)


IMAGE = imageconfig.ImageProcess(
    entrypoint=("/entry",), cmd=("--flag",), env=("PATH=/bin", "A=image"), working_dir="/srv"
)


@pytest.mark.parametrize(
    ("command", "args", "argv"),
    [
        pytest.param((), (), ("/entry", "--flag"), id="image-defaults"),
        pytest.param(("/bin/sh",), (), ("/bin/sh",), id="command-drops-cmd"),
        pytest.param((), ("--other",), ("/entry", "--other"), id="args-replace-cmd"),
        pytest.param(("/bin/sh",), ("-c", "true"), ("/bin/sh", "-c", "true"), id="both"),
    ],
)
def test_merge_process(command, args, argv):
    merged = imageconfig.merge_process(IMAGE, command=command, args=args, env={"A": "pod"})
    assert merged.argv == argv
    assert merged.env == {"PATH": "/bin", "A": "pod"}
    assert merged.working_dir == "/srv"


@pytest.mark.parametrize(
    ("privileged", "add", "drop", "expected"),
    [
        pytest.param(False, (), (), caps.DEFAULT, id="default"),
        pytest.param(False, ("cap_net_raw",), (), caps.DEFAULT | {"NET_RAW"}, id="add"),
        pytest.param(False, ("SYS_TIME",), ("ALL",), frozenset({"SYS_TIME"}), id="drop-all"),
    ],
)
def test_effective_capabilities(privileged, add, drop, expected):
    assert caps.effective_set(privileged=privileged, add=add, drop=drop, where="c") == expected
    assert "NET_RAW" not in caps.DEFAULT


def test_unknown_capability_is_named():
    with pytest.raises(InvalidConfigError, match="c.add: unknown capability 'NET_MAGIC'"):
        caps.effective_set(privileged=False, add=("NET_MAGIC",), drop=(), where="c")
