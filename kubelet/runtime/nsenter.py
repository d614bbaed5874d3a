"""exec: a new process inside a running container, for exec_sync, probes and `kctl exec`.

run_exec runs in a child of the fork server. It opens the namespace files of the
container's main process (and checks by start time that the pid still names it), joins the
container's cgroups, then its cgroup, IPC, UTS, network, PID and mount namespaces (mount
last: it moves our root into the container), and forks: only a child enters a PID
namespace. With a terminal, the pty is opened inside the container's own devpts (so that
tty and ps inside see a real /dev/pts/N) and its master is sent back to the caller. The
child takes the container's user, capabilities and no_new_privs before exec. The helper
reports {"pid"} once the child runs and {"exit_code", "timed_out"} when it ended; it
enforces the deadline itself so that a caller that went away leaves nothing running.
"""

from __future__ import annotations

import fcntl
import os
import select
import signal
import socket
import termios
import time
from typing import NoReturn

from kubelet.runtime import _libc as libc
from kubelet.runtime import channel, launch
from kubelet.runtime.spec import ProcessSpec
from kubelet.runtime.state import start_time

# Join order: cgroup namespace first (its root is taken from our cgroup, just joined),
# mount namespace last.
JOIN_ORDER = ("cgroup", "ipc", "uts", "net", "pid", "mnt")
EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126


def run_exec(
    *,
    target_pid: int,
    target_start: int,
    process: ProcessSpec,
    cgroup_procs: tuple[str, ...],
    tty: bool,
    rows: int,
    cols: int,
    timeout_s: float | None,
    report: socket.socket,
    stdio: tuple[int, int, int] | None,
) -> NoReturn:
    try:
        namespaces = _open_namespaces(target_pid, target_start)
        for procs in cgroup_procs:
            with open(procs, "w") as f:
                f.write("0")
        for kind in JOIN_ORDER:
            libc.setns(namespaces[kind], launch.NS_FLAGS[kind])
            os.close(namespaces[kind])
        if tty:
            master, slave = launch.open_pty(rows, cols)
            channel.send(report, {"terminal": True}, (master,))
            os.close(master)
            stdio = (slave, slave, slave)
        assert stdio is not None
        child, start_error = _spawn(process, stdio, tty)
    except (OSError, ValueError) as exc:
        channel.send(report, {"error": f"failed to enter the container: {exc}"})
        os._exit(1)
    for fd in set(stdio):
        os.close(fd)
    channel.send(report, {"pid": child})
    code, timed_out = _wait(child, timeout_s)
    if start_error:
        code = start_error[0]
    channel.send(
        report,
        {"exit_code": code, "timed_out": timed_out, "error": start_error[1] if start_error else ""},
    )
    os._exit(0)


def _open_namespaces(pid: int, started: int) -> dict[str, int]:
    fds = {
        kind: os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC) for kind in JOIN_ORDER
    }
    if start_time(pid) != started:
        for fd in fds.values():
            os.close(fd)
        raise OSError(f"the container's process {pid} has exited")
    return fds


def _spawn(
    process: ProcessSpec, stdio: tuple[int, int, int], tty: bool
) -> tuple[int, tuple[int, str] | None]:
    """Fork and exec the process; (pid, None) or (pid, (exit code, why it did not start))."""
    start_r, start_w = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        os.close(start_r)
        try:
            os.setsid()
            for target, fd in enumerate(stdio):
                os.dup2(fd, target)
            if tty:
                fcntl.ioctl(0, termios.TIOCSCTTY, 0)
            launch.enter_cwd(process.cwd)
            launch.drop_privileges(process)
            launch.close_inherited_fds(keep=start_w)
            launch.exec_process(process)
        except BaseException as exc:  # noqa: BLE001 - everything must reach the caller
            not_found = "not found" in str(exc)
            code = EXIT_NOT_FOUND if not_found else EXIT_CANNOT_RUN
            os.write(start_w, b"%d %s" % (code, str(exc).encode(errors="replace")[:4000]))
        os._exit(EXIT_CANNOT_RUN)
    os.close(start_w)
    message = b""
    while chunk := os.read(start_r, 65536):
        message += chunk
    os.close(start_r)
    if not message:
        return pid, None
    code_text, _, text = message.partition(b" ")
    return pid, (int(code_text), text.decode(errors="replace"))


def _wait(pid: int, timeout_s: float | None) -> tuple[int, bool]:
    pidfd = os.pidfd_open(pid)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    timed_out = False
    while True:
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([pidfd], [], [], remaining)
        if ready:
            break
        timed_out = True
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        deadline = None
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    return (128 - code if code < 0 else code), timed_out
