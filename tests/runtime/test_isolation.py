"""What a container sees and may do: processes, hostname, mounts, sockets, files, devices.

Every case runs a real container (busybox) through NativeRuntime and judges it by what its
own process printed or by its exit code.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubelet.runtime import caps, rootfs
from kubelet.runtime.interface import ContainerState, Mount, Security
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import container, pod, run_to_exit, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


def test_pid_1_is_the_container_process_and_host_processes_are_invisible(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    script = "cat /proc/1/cmdline | tr '\\0' ' '; echo; ls /proc | grep -c '^[0-9]'"
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    assert status.exit_code == 0, output
    cmdline, count = output.splitlines()
    assert cmdline.strip() == f"sh -c {script}"
    # sh, cat/ls/grep of the pipeline: a handful, where the host has hundreds.
    assert int(count) <= 4
    assert int(count) < len([p for p in os.listdir("/proc") if p.isdigit()])


def test_hostname_is_the_pods(runtime: NativeRuntime, busybox_rootfs: Path):
    sandbox = runtime.run_sandbox(pod("frontend-7d9f"))
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, "hostname; cat /etc/hostname; echo $HOSTNAME")
    )
    assert output.split() == ["frontend-7d9f"] * 3
    assert os.uname().nodename != "frontend-7d9f"


@pytest.mark.parametrize(
    ("script", "refusal"),
    [
        pytest.param("mkdir -p /mnt; mount -t tmpfs none /mnt", "denied", id="mount"),
        pytest.param("traceroute -m 1 -w 1 127.0.0.1", "not permitted", id="raw-socket"),
        pytest.param(
            "echo h > /proc/sysrq-trigger",
            "Read-only",
            id="sysrq-trigger",
            marks=pytest.mark.skipif(
                not Path("/proc/sysrq-trigger").exists(), reason="this kernel has no magic SysRq"
            ),
        ),
        pytest.param("echo 1 > /proc/sys/kernel/panic", "Read-only", id="proc-sys"),
        pytest.param("touch /sys/kernel/x", "Read-only", id="sys"),
        pytest.param("hostname other", "not permitted", id="sethostname"),
        pytest.param(
            "mknod /tmp/disk b 8 0 && head -c1 /tmp/disk", "not permitted", id="block-device"
        ),
        pytest.param("date -s 2000-01-01", "not permitted", id="clock"),
        pytest.param(
            "echo junk > /tmp/m.ko; insmod /tmp/m.ko",
            "not permitted",
            id="load-module",
            marks=pytest.mark.skipif(
                not Path("/proc/modules").exists(), reason="this kernel has no module support"
            ),
        ),
        pytest.param("unshare -m true", "not permitted", id="new-namespace"),
        pytest.param(f"kill -TERM {os.getpid()}", "no such process", id="signal-the-node"),
    ],
)
def test_privileged_operations_are_refused(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, script: str, refusal: str
):
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script + " 2>&1"))
    # The refusal message is the evidence: some applets (date) exit 0 after a refused call.
    assert refusal.lower() in output.lower()


@pytest.mark.parametrize(
    ("security", "script"),
    [
        pytest.param(
            Security(add_capabilities=("NET_RAW",)),
            "traceroute -m 1 -w 1 127.0.0.1",
            id="net-raw-added",
        ),
        pytest.param(
            Security(privileged=True),
            "mkdir -p /mnt; mount -t tmpfs none /mnt && touch /mnt/x",
            id="privileged-mounts",
        ),
    ],
)
def test_what_is_refused_by_default_works_when_asked_for(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, security: Security, script: str
):
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script, security=security))
    assert status.exit_code == 0, output


def test_masked_paths_read_empty(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    present = [p for p in rootfs.MASKED_PATHS if os.path.exists(p)]
    if not present:
        pytest.skip("this kernel has none of the masked paths")
    script = "; ".join(
        f"ls -A {p} | wc -l" if os.path.isdir(p) else f"wc -c < {p}" for p in present
    )
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    assert output.split() == ["0"] * len(present), output


@pytest.mark.parametrize(
    ("security", "expected"),
    [
        pytest.param(Security(), caps.DEFAULT, id="default"),
        pytest.param(
            Security(drop_capabilities=("ALL",), add_capabilities=("NET_BIND_SERVICE",)),
            frozenset({"NET_BIND_SERVICE"}),
            id="drop-all-add-one",
        ),
        pytest.param(
            Security(drop_capabilities=("CHOWN", "cap_kill")),
            caps.DEFAULT - {"CHOWN", "KILL"},
            id="drop-two",
        ),
    ],
)
def test_capability_bounding_set(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, security: Security, expected
):
    status, output = run_to_exit(
        runtime,
        sandbox,
        sh(
            busybox_rootfs,
            "grep -E 'CapBnd|CapEff|CapInh|NoNewPrivs' /proc/self/status",
            security=security,
        ),
    )
    fields = dict(line.split(":\t") for line in output.splitlines())
    assert int(fields["CapBnd"], 16) == caps.mask(expected)
    assert int(fields["CapEff"], 16) == caps.mask(expected)
    assert int(fields["CapInh"], 16) == 0
    assert fields["NoNewPrivs"].strip() == "1"


def test_rootfs_is_the_images_and_writes_stay_in_the_container(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    before = sorted(p.name for p in busybox_rootfs.iterdir())
    script = (
        "cat /etc/image-file; echo changed > /etc/image-file; rm /bin/vi; "
        "echo new > /new-file; cat /etc/image-file"
    )
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    assert output.splitlines() == ["from the image", "changed"]
    assert (busybox_rootfs / "etc" / "image-file").read_text() == "from the image\n"
    assert (busybox_rootfs / "bin" / "vi").is_symlink()
    assert sorted(p.name for p in busybox_rootfs.iterdir()) == before
    # A second container of the same image starts from the image, not from the first's layer.
    _, second = run_to_exit(
        runtime,
        sandbox,
        sh(busybox_rootfs, "cat /etc/image-file; ls /new-file 2>&1", name="second"),
    )
    assert second.splitlines()[0] == "from the image"
    assert "No such file" in second


def test_run_as_user_group_and_read_only_rootfs(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, tmp_path: Path
):
    volume = tmp_path / "volume"
    volume.mkdir()
    volume.chmod(0o777)
    config = sh(
        busybox_rootfs,
        "id; touch /root-write 2>&1; touch /data/ok && echo volume-ok",
        run_as_user=1000,
        run_as_group=1000,
        supplemental_groups=(4242,),
        mounts=(Mount(str(volume), "/data"),),
        security=Security(read_only_root_filesystem=True),
    )
    status, output = run_to_exit(runtime, sandbox, config)
    ident, refused, volume_ok = output.splitlines()
    assert ident.startswith("uid=1000(app) gid=1000(app)")
    assert "50(staff)" in ident and "4242" in ident
    assert "Read-only file system" in refused
    assert volume_ok == "volume-ok"
    assert (volume / "ok").stat().st_uid == 1000


def test_image_user_by_name(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    status, output = run_to_exit(
        runtime, sandbox, container(busybox_rootfs, "id", "-u", image_user="app")
    )
    assert output.strip() == "1000"


def test_dev_holds_only_the_small_set(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    status, output = run_to_exit(
        runtime,
        sandbox,
        sh(
            busybox_rootfs,
            "ls /dev; echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c",
        ),
    )
    lines = output.split()
    assert set(lines[:-2]) == {
        "fd",
        "full",
        "mqueue",
        "null",
        "ptmx",
        "pts",
        "random",
        "shm",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
    }
    assert lines[-2:] == ["null-ok", "4"]


def test_volume_destination_through_a_symlink_stays_inside_the_rootfs(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, tmp_path: Path
):
    # An image whose /escape points at a host directory by absolute path and by '..'.
    layer = tmp_path / "evil-layer"
    outside = tmp_path / "outside"
    outside.mkdir()
    (layer / "etc").mkdir(parents=True)
    (layer / "escape").symlink_to(outside)
    (layer / "dotdot").symlink_to("../../../../../../.." + str(outside))
    volume = tmp_path / "volume"
    volume.mkdir()
    (volume / "marker").write_text("volume\n")
    config = sh(
        busybox_rootfs,
        "cat /escape/v/marker /dotdot/w/marker /y/marker",
        layers=(busybox_rootfs, layer),
        mounts=(
            Mount(str(volume), "/escape/v"),
            Mount(str(volume), "/dotdot/w"),
            Mount(str(volume), "/x/../../y"),
        ),
    )
    status, output = run_to_exit(runtime, sandbox, config)
    assert status.exit_code == 0, output
    assert output.split() == ["volume"] * 3
    assert list(outside.iterdir()) == []


def test_sub_path_symlink_cannot_leave_the_volume(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, tmp_path: Path
):
    volume = tmp_path / "volume"
    (volume / "real").mkdir(parents=True)
    (volume / "real" / "inside").write_text("inside\n")
    (volume / "link").symlink_to("/etc")
    status, output = run_to_exit(
        runtime,
        sandbox,
        sh(
            busybox_rootfs,
            "ls /mnt/link-view; cat /mnt/real/inside",
            mounts=(
                Mount(str(volume), "/mnt/link-view", sub_path="link"),
                Mount(str(volume), "/mnt/real", sub_path="real"),
            ),
        ),
    )
    assert status.state == ContainerState.EXITED
    # The symlink to /etc resolves inside the volume: an empty directory, not the node's /etc.
    assert output.split() == ["inside"]
    assert (volume / "etc").is_dir()


def test_privileged_container_sees_the_nodes_devices(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    host = sorted(
        e.name
        for e in os.scandir("/dev")
        if not e.is_dir()
        and not e.is_symlink()
        and (os.stat(e.path).st_mode & 0o170000) in (0o020000, 0o060000)
    )
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, "ls /dev", security=Security(privileged=True))
    )
    assert set(host) - {"ptmx", "console"} <= set(output.split())


def test_host_pid_namespace(runtime: NativeRuntime, busybox_rootfs: Path):
    from kubelet.runtime.interface import NamespaceMode, NamespaceOptions

    sandbox = runtime.run_sandbox(pod(namespaces=NamespaceOptions(pid=NamespaceMode.NODE)))
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, f"test -d /proc/{os.getpid()} && echo sees-host")
    )
    assert output.strip() == "sees-host"


def test_container_with_a_tty(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    status, output = run_to_exit(
        runtime, sandbox, sh(busybox_rootfs, "tty; echo to-stderr >&2; echo $((40+2))", tty=True)
    )
    assert status.exit_code == 0, output
    assert output.replace("\r", "").split() == ["/dev/pts/0", "to-stderr", "42"]


def test_signals_start_at_their_defaults(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    # Python ignores SIGPIPE; a container must not inherit that (yes | head would spin on
    # EPIPE instead of dying of SIGPIPE).
    script = "grep -E 'SigIgn|SigBlk' /proc/self/status; yes | head -n 1"
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    assert output.split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16, "y"]
    sleeper = runtime.create_container(sandbox, sh(busybox_rootfs, "exec sleep 60", name="sleeper"))
    runtime.start_container(sleeper)
    result = runtime.exec_sync(sleeper, ("grep", "SigIgn", "/proc/self/status"), 10)
    assert result.stdout == b"SigIgn:\t" + b"0" * 16 + b"\n"


def test_only_stdio_reaches_the_container(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    # ls lists its own directory handle (3) besides stdio; nothing of the runtime's is left.
    status, output = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "ls /proc/self/fd"))
    assert output.split() == ["0", "1", "2", "3"]
    sleeper = runtime.create_container(sandbox, sh(busybox_rootfs, "exec sleep 60", name="sleeper"))
    runtime.start_container(sleeper)
    assert runtime.exec_sync(sleeper, ("ls", "/proc/self/fd"), 10).stdout.split() == [
        b"0",
        b"1",
        b"2",
        b"3",
    ]
    session = runtime.exec_stream(sleeper, ("ls", "/proc/self/fd"), tty=True, stdin=True)
    try:
        assert session.wait(10) == 0
    finally:
        session.close()


@pytest.mark.parametrize("count", [pytest.param(3, id="few"), pytest.param(60, id="past-a-page")])
def test_layers_stack_bottom_first(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, tmp_path: Path, count: int
):
    # Long directory names make 60 layers overflow the one page of mount options.
    layers = [busybox_rootfs]
    for index in range(count):
        layer = tmp_path / f"layer-{index:03d}-{'x' * 60}"
        (layer / "etc").mkdir(parents=True)
        (layer / "etc" / "which").write_text(f"{index}\n")
        (layer / "etc" / f"only-{index}").write_text("here\n")
        layers.append(layer)
    status, output = run_to_exit(
        runtime,
        sandbox,
        sh(
            busybox_rootfs,
            f"cat /etc/which /etc/only-0 /etc/only-{count - 1}",
            layers=tuple(layers),
        ),
    )
    assert status.exit_code == 0, output
    assert output.split() == [str(count - 1), "here", "here"]
