"""Container lifecycle: start failures, graceful stop, logs, and a runtime killed mid-way."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from kubelet.runtime import logs, state
from kubelet.runtime.interface import ContainerState, StartError, StateError
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from tests.runtime.conftest import cleanup_runtime, container, pod, run_to_exit, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        pytest.param(
            ("no-such-binary",),
            'exec "no-such-binary": executable file not found',
            id="not-in-path",
        ),
        pytest.param(
            ("/etc/image-file",), 'exec "/etc/image-file": Permission denied', id="not-executable"
        ),
    ],
)
def test_start_failure_is_reported(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path, argv, message
):
    container_id = runtime.create_container(sandbox, container(busybox_rootfs, *argv))
    with pytest.raises(StartError, match=message):
        runtime.start_container(container_id)
    status = runtime.container_status(container_id)
    assert status.state == ContainerState.EXITED
    assert (status.exit_code, status.reason) == (128, "StartError")
    assert message in status.message


def test_start_twice_is_refused(runtime: NativeRuntime, sandbox, busybox_rootfs: Path):
    status, _ = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "true"))
    with pytest.raises(StateError, match="only a created container can be started"):
        runtime.start_container(status.id)


@pytest.mark.parametrize(
    ("script", "timeout_s", "exit_code", "reason", "log"),
    [
        pytest.param(
            "trap 'echo got-term; exit 3' TERM; echo ready; while true; do sleep 0.05; done",
            20,
            3,
            "Error",
            "got-term",
            id="sigterm-handled",
        ),
        pytest.param(
            "trap '' TERM; echo ready; while true; do sleep 0.05; done",
            0.5,
            137,
            "Error",
            "",
            id="sigkill-after-timeout",
        ),
        pytest.param(
            "trap 'exit 0' TERM; echo ready; while true; do sleep 0.05; done",
            20,
            0,
            "Completed",
            "",
            id="clean-exit-on-term",
        ),
    ],
)
def test_stop_with_grace(
    runtime: NativeRuntime,
    sandbox,
    busybox_rootfs: Path,
    script,
    timeout_s,
    exit_code,
    reason,
    log,
):
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, script))
    runtime.start_container(container_id)
    path = runtime.container_status(container_id).log_path
    deadline = time.monotonic() + 10
    while b"ready\n" not in b"".join(logs.read_log(path)) and time.monotonic() < deadline:
        time.sleep(0.02)
    runtime.stop_container(container_id, timeout_s)
    status = runtime.container_status(container_id)
    assert (status.state, status.exit_code, status.reason) == (
        ContainerState.EXITED,
        exit_code,
        reason,
    )
    assert log in b"".join(logs.read_log(path)).decode()
    assert status.finished_at is not None and status.started_at is not None
    assert status.finished_at >= status.started_at


def test_logs_are_written_in_the_cri_format(runtime: NativeRuntime, sandbox, busybox_rootfs):
    script = "echo out-1; echo err-1 >&2; printf 'no-newline'"
    status, _ = run_to_exit(runtime, sandbox, sh(busybox_rootfs, script))
    raw = Path(status.log_path).read_bytes().splitlines()
    records = [logs.parse_line(line) for line in raw]
    assert all(r is not None for r in records)
    assert sorted((r.stream, r.partial, r.text) for r in records) == [
        ("stderr", False, b"err-1"),
        ("stdout", False, b"out-1"),
        ("stdout", True, b"no-newline"),
    ]
    stamp = records[0].timestamp
    assert len(stamp) == 30 and stamp.endswith("Z") and stamp[10] == "T"


ADOPT_HELPER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    from kubelet.runtime.interface import ContainerConfig, Mount, SandboxConfig
    from kubelet.runtime.native import NativeRuntime, RuntimeOptions

    state_dir, cgroup_root, rootfs, volume = sys.argv[1:5]
    rt = NativeRuntime(RuntimeOptions(state_dir=Path(state_dir), cgroup_root=cgroup_root))
    sandbox = rt.run_sandbox(SandboxConfig(name="adopted", namespace="default", uid="adopt"))
    script = ("echo before; while [ ! -e /shared/go ]; do sleep 0.05; done; "
              "echo after; exit 7")
    cid = rt.create_container(sandbox, ContainerConfig(
        name="main", layers=(Path(rootfs),), argv=("sh", "-c", script),
        mounts=(Mount(volume, "/shared"),)))
    rt.start_container(cid)
    print(json.dumps({"sandbox": sandbox, "container": cid,
                      "forkserver": rt._forks._proc.pid}), flush=True)
    time.sleep(600)
    """
)


def test_runtime_killed_and_restarted_adopts_the_running_container(
    tmp_path: Path, cgroup_root: str, busybox_rootfs: Path, runtime: NativeRuntime
):
    state_dir = tmp_path / "state"  # the runtime fixture's: it cleans up after the test
    volume = tmp_path / "volume"
    volume.mkdir()
    helper = subprocess.Popen(
        [
            sys.executable,
            "-c",
            ADOPT_HELPER,
            str(state_dir),
            cgroup_root,
            str(busybox_rootfs),
            str(volume),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        ready, _, _ = select.select([helper.stdout], [], [], 60)
        assert ready, "the helper runtime did not start its container"
        ids = json.loads(helper.stdout.readline())
    finally:
        helper.send_signal(signal.SIGKILL)
        helper.wait()
    # The killed runtime's fork server goes away; its container does not.
    forkserver = os.pidfd_open(ids["forkserver"])
    assert select.select([forkserver], [], [], 10)[0], "fork server outlived its runtime"
    os.close(forkserver)

    adopted = NativeRuntime(RuntimeOptions(state_dir=state_dir, cgroup_root=cgroup_root))
    try:
        status = adopted.container_status(ids["container"])
        assert status.state == ContainerState.RUNNING
        assert state.start_time(status.pid) is not None
        assert adopted.exec_sync(ids["container"], ("echo", "exec-ok"), 10).stdout == b"exec-ok\n"
        (volume / "go").touch()
        status = adopted.wait_container(ids["container"], 30)
        assert (status.state, status.exit_code, status.reason) == (
            ContainerState.EXITED,
            7,
            "Error",
        )
        assert logs.read_log(status.log_path) == [b"before\n", b"after\n"]
        assert [s.id for s in adopted.list_sandboxes()] == [ids["sandbox"]]
    finally:
        adopted.close()


def test_container_exit_while_no_runtime_runs_is_recorded(
    tmp_path: Path, cgroup_root: str, busybox_rootfs: Path, runtime: NativeRuntime, sandbox
):
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, "sleep 0.3; exit 4"))
    runtime.start_container(container_id)
    runtime.close()  # the fork server goes; shims stay
    time.sleep(1.0)
    later = NativeRuntime(RuntimeOptions(state_dir=tmp_path / "state", cgroup_root=cgroup_root))
    try:
        status = later.container_status(container_id)
        assert (status.state, status.exit_code) == (ContainerState.EXITED, 4)
    finally:
        later.close()


def test_log_rotation_keeps_the_newest_output(
    tmp_path: Path, cgroup_root: str, busybox_rootfs: Path
):
    options = RuntimeOptions(
        state_dir=tmp_path / "rot-state",
        cgroup_root=cgroup_root,
        log_max_bytes=4096,
        log_max_files=3,
    )
    rt = NativeRuntime(options)
    try:
        sandbox = rt.run_sandbox(pod())
        status, _ = run_to_exit(rt, sandbox, sh(busybox_rootfs, "seq 1 2000"))
        files = logs.log_files(status.log_path)
        assert len(files) == 3
        assert all(f.stat().st_size <= 4096 for f in files)
        lines = logs.read_log(status.log_path)
        assert lines[-1] == b"2000\n"
        numbers = [int(line) for line in lines]
        assert numbers == list(range(numbers[0], 2001))
        assert logs.read_log(status.log_path, tail=2) == [b"1999\n", b"2000\n"]
    finally:
        cleanup_runtime(rt, options.state_dir, cgroup_root)


def test_follow_log_sees_new_lines_until_the_container_exits(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    container_id = runtime.create_container(
        sandbox, sh(busybox_rootfs, "for i in 1 2 3 4 5; do echo line-$i; sleep 0.1; done")
    )
    runtime.start_container(container_id)
    path = runtime.container_status(container_id).log_path

    def exited() -> bool:
        return runtime.container_status(container_id).state == ContainerState.EXITED

    seen = list(logs.follow_log(path, done=exited, timestamps=True, poll_s=0.02))
    assert [line.split(b" ", 1)[1] for line in seen] == [b"line-%d\n" % i for i in range(1, 6)]
    assert all(line[:4].isdigit() for line in seen)


def test_concurrent_starts_from_many_threads(runtime: NativeRuntime, sandbox, busybox_rootfs):
    from concurrent.futures import ThreadPoolExecutor

    def one(index: int) -> tuple[int | None, list[bytes]]:
        status, _ = run_to_exit(
            runtime, sandbox, sh(busybox_rootfs, f"echo {index}; exit {index}", name=f"c{index}")
        )
        return status.exit_code, logs.read_log(status.log_path)

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(one, range(12)))
    assert results == [(i, [b"%d\n" % i]) for i in range(12)]


def test_unwritable_log_directory_is_a_start_error(
    runtime: NativeRuntime, busybox_rootfs: Path, tmp_path: Path
):
    blocked = tmp_path / "logs-file"
    blocked.write_text("a file where the log directory should be")
    sandbox = runtime.run_sandbox(pod(log_directory=str(blocked)))
    container_id = runtime.create_container(sandbox, sh(busybox_rootfs, "true"))
    with pytest.raises(StartError, match="cannot open log"):
        runtime.start_container(container_id)
    assert runtime.container_status(container_id).reason == "StartError"
