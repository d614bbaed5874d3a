"""The per-container supervisor: starts the container, keeps its output, records its exit.

One shim per running container, forked by the fork server and detached into its own
session, so it outlives a runtime (kubelet) that is restarted or killed. It holds the read
ends of the container's stdout and stderr (or the pty master), turns the output into CRI
log lines, waits for the container's main process, and writes exit.json (exit code,
finish time, reason) before it exits itself. The runtime knows the shim by pid and start
time (running.json) and learns of the exit by polling a pidfd of the shim, so no exit code
is lost whether or not the runtime was alive when the container ended.

How the container's process is created is the Launcher's business: NativeLauncher forks it
here (container_init), RuncLauncher asks runc (see oci.py). Reasons follow the kubelet:
Completed for exit code 0, OOMKilled when the cgroup counted an OOM kill, Error otherwise,
StartError (exit code 128) when the process never started.
"""

from __future__ import annotations

import errno
import os
import selectors
import signal
import socket
import time
from typing import NoReturn, Protocol

from kubelet.runtime import _libc as libc
from kubelet.runtime import channel, launch
from kubelet.runtime.logs import LogWriter
from kubelet.runtime.spec import LaunchSpec
from kubelet.runtime.state import boot_id, start_time, write_json

DRAIN_S = 2.0  # how long output is still read after the main process exited
START_ERROR_EXIT_CODE = 128


class StartFailure(Exception):
    pass


class Launcher(Protocol):
    subreaper: bool

    def launch(self, spec: LaunchSpec, stdio: tuple[int, int, int]) -> tuple[int, int | None]:
        """Start the container's process with stdio (ignored with a tty); its pid and, with
        a tty, the pty master. StartFailure if it did not start."""

    def after_exit(self, spec: LaunchSpec) -> None:
        """Release what launch() holds once the container has exited."""


class NativeLauncher:
    """Forks the container's init here, in a new (or the Pod's) PID namespace."""

    subreaper = False

    def launch(self, spec: LaunchSpec, stdio: tuple[int, int, int]) -> tuple[int, int | None]:
        pidns = dict(spec.join_namespaces).get("pid")
        if pidns:
            launch.join_namespace("pid", pidns)
        elif spec.new_pid_namespace:
            libc.unshare(libc.CLONE_NEWPID)
        start_r, start_w = os.pipe2(os.O_CLOEXEC)
        console, console_child = channel.pair() if spec.tty else (None, None)
        pid = os.fork()
        if pid == 0:
            os.close(start_r)
            if console is not None:
                console.close()
            launch.container_init(spec, stdio, start_w, console_child)
        os.close(start_w)
        terminal = None
        if console is not None and console_child is not None:
            # The pty is made inside the container's devpts; its master comes back to us.
            console_child.close()
            _, fds = channel.recv(console)
            console.close()
            terminal = fds[0] if fds else None
        message = _read_all(start_r)
        os.close(start_r)
        if message:
            os.waitpid(pid, 0)
            if terminal is not None:
                os.close(terminal)
            raise StartFailure(message.decode(errors="replace"))
        return pid, terminal

    def after_exit(self, spec: LaunchSpec) -> None:
        pass


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def run(spec: LaunchSpec, report: socket.socket, launcher: Launcher) -> NoReturn:
    """The shim's whole life; never returns."""
    os.setsid()
    _detach_stdio(spec.container_dir)
    libc.set_process_name("kubelite-shim")
    _best_effort_write("/proc/self/oom_score_adj", "-998")
    if launcher.subreaper:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)
    try:
        writer = LogWriter(
            spec.log_path, max_bytes=spec.log_max_bytes, max_files=spec.log_max_files
        )
    except OSError as exc:
        _record_start_failure(spec, report, None, f"cannot open log {spec.log_path}: {exc}")
        os._exit(0)
    stdio, readers = _make_stdio()
    try:
        pid, terminal = launcher.launch(spec, stdio)
    except (StartFailure, OSError) as exc:
        _record_start_failure(spec, report, writer, str(exc))
        os._exit(0)
    finally:
        for fd in set(stdio):
            os.close(fd)
    if terminal is not None:
        # With a tty, stdout and stderr are one stream (as CRI logs it) and the pipes idle.
        for fd, _ in readers:
            os.close(fd)
        readers = [(terminal, "stdout")]
    started_at = time.time()
    shim_pid = os.getpid()
    write_json(
        spec.container_dir + "/running.json",
        {
            "shim_pid": shim_pid,
            "shim_start": start_time(shim_pid),
            "pid": pid,
            "pid_start": start_time(pid),
            "started_at": started_at,
            "boot_id": boot_id(),
        },
    )
    channel.send(report, {"ok": True, "pid": pid, "started_at": started_at})
    report.close()
    status = _supervise(spec, pid, readers, writer)
    launcher.after_exit(spec)
    _record_exit(spec, status, writer)
    os._exit(0)


def _detach_stdio(container_dir: str) -> None:
    null = os.open(os.devnull, os.O_RDWR)
    log = os.open(container_dir + "/shim.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(null, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(null)
    os.close(log)


def _best_effort_write(path: str, value: str) -> None:
    try:
        with open(path, "w") as f:
            f.write(value)
    except OSError:
        pass


def _make_stdio() -> tuple[tuple[int, int, int], list[tuple[int, str]]]:
    """(stdin, stdout, stderr) for the container and the (fd, stream) pairs we read."""
    null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    out_r, out_w = os.pipe2(os.O_CLOEXEC)
    err_r, err_w = os.pipe2(os.O_CLOEXEC)
    return (null, out_w, err_w), [(out_r, "stdout"), (err_r, "stderr")]


def _supervise(
    spec: LaunchSpec, pid: int, readers: list[tuple[int, str]], writer: LogWriter
) -> int:
    """Copy output to the log until the process exited and its output ran dry; its status."""
    selector = selectors.DefaultSelector()
    for fd, stream in readers:
        selector.register(fd, selectors.EVENT_READ, stream)
    pidfd = os.pidfd_open(pid)
    selector.register(pidfd, selectors.EVENT_READ, None)
    status: int | None = None
    deadline = 0.0
    while True:
        timeout = None if status is None else max(0.0, deadline - time.monotonic())
        events = selector.select(timeout)
        if status is not None and (not events or len(selector.get_map()) == 0):
            break
        for key, _ in events:
            if key.data is None:
                status = _reap(pid)
                selector.unregister(pidfd)
                os.close(pidfd)
                deadline = time.monotonic() + DRAIN_S
                if not spec.new_pid_namespace:
                    # Outside a PID namespace of its own nothing kills the rest for us.
                    _kill_rest(spec)
            elif not _copy(key.fd, key.data, writer):
                selector.unregister(key.fd)
                os.close(key.fd)
        if status is not None and len(selector.get_map()) == 0:
            break
    return status


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    # A subreaper also inherits the container's orphans; collect them too.
    while True:
        try:
            other, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if other == 0:
            break
    return status


def _copy(fd: int, stream: str, writer: LogWriter) -> bool:
    try:
        data = os.read(fd, 65536)
    except OSError as exc:
        if exc.errno == errno.EIO:  # a pty whose last slave closed
            return False
        raise
    if not data:
        return False
    writer.write(stream, data)
    return True


def _kill_rest(spec: LaunchSpec) -> None:
    if spec.kill_file and os.path.exists(spec.kill_file):
        _best_effort_write(spec.kill_file, "1")
        return
    for procs in spec.cgroup_procs:
        try:
            with open(procs) as f:
                pids = [int(p) for p in f.read().split()]
        except OSError:
            continue
        for other in pids:
            try:
                os.kill(other, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _oom_kills(spec: LaunchSpec) -> int:
    try:
        with open(spec.oom_file) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        pass
    return 0


def exit_reason(exit_code: int, oom_kills: int) -> str:
    if oom_kills > 0 and exit_code != 0:
        return "OOMKilled"
    return "Completed" if exit_code == 0 else "Error"


def _record_exit(spec: LaunchSpec, status: int, writer: LogWriter) -> None:
    code = os.waitstatus_to_exitcode(status)
    killed_by = -code if code < 0 else None
    exit_code = 128 + killed_by if killed_by else code
    writer.close()
    write_json(
        spec.container_dir + "/exit.json",
        {
            "exit_code": exit_code,
            "signal": killed_by,
            "reason": exit_reason(exit_code, _oom_kills(spec)),
            "message": "",
            "finished_at": time.time(),
        },
    )


def _record_start_failure(
    spec: LaunchSpec, report: socket.socket, writer: LogWriter | None, message: str
) -> None:
    if writer is not None:
        writer.close()
    now = time.time()
    write_json(
        spec.container_dir + "/exit.json",
        {
            "exit_code": START_ERROR_EXIT_CODE,
            "signal": None,
            "reason": "StartError",
            "message": message,
            "finished_at": now,
        },
    )
    channel.send(report, {"ok": False, "error": message})
    report.close()
