"""exec into running containers: exec_sync for probes, exec_stream with and without a pty."""

from __future__ import annotations

import os
import select
import time
from pathlib import Path

import pytest

from kubelet.runtime.interface import ContainerId, StateError
from kubelet.runtime.native import NativeRuntime
from tests.runtime.conftest import run_to_exit, sh

pytestmark = [pytest.mark.root, pytest.mark.timeout(120)]


@pytest.fixture
def running(runtime: NativeRuntime, sandbox, busybox_rootfs: Path) -> ContainerId:
    container_id = runtime.create_container(
        sandbox,
        sh(
            busybox_rootfs,
            "echo inside > /tmp/marker; exec sleep 60",
            env={"GREETING": "hi"},
            working_dir="/tmp",
        ),
    )
    runtime.start_container(container_id)
    return container_id


@pytest.mark.parametrize(
    ("argv", "exit_code", "stdout", "stderr"),
    [
        pytest.param(("cat", "/tmp/marker"), 0, b"inside\n", b"", id="sees-container-files"),
        pytest.param(
            ("sh", "-c", "echo $GREETING; pwd"), 0, b"hi\n/tmp\n", b"", id="container-env-and-cwd"
        ),
        pytest.param(
            ("sh", "-c", "echo oops >&2; exit 3"), 3, b"", b"oops\n", id="stderr-and-exit-code"
        ),
        pytest.param(
            ("sh", "-c", "cat /proc/1/cmdline"), 0, b"sleep\x0060\x00", b"", id="same-pid-namespace"
        ),
    ],
)
def test_exec_sync(runtime: NativeRuntime, running: ContainerId, argv, exit_code, stdout, stderr):
    result = runtime.exec_sync(running, argv, timeout_s=10)
    assert (result.exit_code, result.stdout, result.stderr) == (exit_code, stdout, stderr)
    assert not result.timed_out


def test_exec_sync_missing_command(runtime: NativeRuntime, running: ContainerId):
    result = runtime.exec_sync(running, ("no-such-command",), timeout_s=10)
    assert result.exit_code == 127
    assert b"no-such-command" in result.stderr


def test_exec_sync_timeout_kills_the_command(runtime: NativeRuntime, running: ContainerId):
    result = runtime.exec_sync(running, ("sh", "-c", "echo started; exec sleep 30"), timeout_s=0.5)
    assert result.timed_out
    assert result.stdout == b"started\n"
    assert result.exit_code == 137
    # Nothing of the exec is left in the container.
    left = runtime.exec_sync(running, ("ps", "-o", "comm"), timeout_s=10).stdout.split()
    assert left.count(b"sleep") == 1


def test_exec_runs_with_the_containers_restrictions(runtime: NativeRuntime, running):
    result = runtime.exec_sync(
        running,
        ("sh", "-c", "grep CapBnd /proc/self/status; mount -t tmpfs none /tmp 2>&1"),
        timeout_s=10,
    )
    assert b"CapBnd:\t00000000a80405fb" in result.stdout
    assert b"denied" in result.stdout


def test_exec_into_an_exited_container_is_refused(
    runtime: NativeRuntime, sandbox, busybox_rootfs: Path
):
    status, _ = run_to_exit(runtime, sandbox, sh(busybox_rootfs, "true"))
    with pytest.raises(StateError, match="exited"):
        runtime.exec_sync(status.id, ("true",), timeout_s=5)


def _read_until(fd: int, needle: bytes, timeout_s: float = 10) -> bytes:
    seen = b""
    deadline = time.monotonic() + timeout_s
    while needle not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                break
            if not chunk:
                break
            seen += chunk
    return seen


def test_exec_with_a_pty_is_interactive_and_resizable(runtime: NativeRuntime, running: ContainerId):
    session = runtime.exec_stream(running, ("sh",), tty=True, stdin=True, rows=30, cols=100)
    try:
        assert session.terminal is not None
        os.write(session.terminal, b"tty; stty size; echo done-$((40+2))\n")
        output = _read_until(session.terminal, b"done-42")
        assert b"/dev/pts/0" in output
        assert b"30 100" in output
        session.resize(50, 132)
        os.write(session.terminal, b"stty size; exit 5\n")
        output = _read_until(session.terminal, b"50 132")
        assert b"50 132" in output
        assert session.wait(10) == 5
    finally:
        session.close()


def test_exec_stream_with_pipes(runtime: NativeRuntime, running: ContainerId):
    session = runtime.exec_stream(
        running, ("sh", "-c", "read line; echo got-$line; echo err >&2"), tty=False, stdin=True
    )
    try:
        assert session.stdin is not None and session.stdout is not None
        os.write(session.stdin, b"abc\n")
        os.close(session.stdin)
        session.stdin = None
        assert _read_until(session.stdout, b"got-abc\n") == b"got-abc\n"
        assert _read_until(session.stderr, b"err\n") == b"err\n"
        assert session.wait(10) == 0
    finally:
        session.close()
