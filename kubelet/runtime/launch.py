"""The last steps before a container's process image replaces ours.

container_init runs in the child the shim forks (already inside the container's PID
namespace when it has one): it joins the Pod's namespaces and the container's cgroups,
builds the file system view (rootfs.build), and drops privileges. exec helpers share
drop_privileges and exec_process. Errors are written to the start pipe as one line of
text and the process exits 127; a successful execve closes the pipe (it is close-on-exec),
which is how the shim learns that the container started.

The privilege drop follows the order the kernel needs: the capability bounding set first
(needs CAP_SETPCAP), then groups, gid and uid, then the remaining sets (inheritable and
ambient cleared, so that no capability comes back through a file's inheritable set),
then no_new_privs, then the seccomp filter (seccomp.py), the last thing before exec. A process
without no_new_privs (allowPrivilegeEscalation) needs CAP_SYS_ADMIN to load a filter, so it
loads it first, before any capability is dropped.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import termios
from typing import NoReturn

from kubelet.runtime import _libc as libc
from kubelet.runtime import caps, channel, rootfs, seccomp
from kubelet.runtime.paths import ensure_beneath
from kubelet.runtime.spec import LaunchSpec, ProcessSpec

TIOCGPTN = 0x80045430
TIOCSPTLCK = 0x40045431
NS_FLAGS = {
    "net": libc.CLONE_NEWNET,
    "uts": libc.CLONE_NEWUTS,
    "ipc": libc.CLONE_NEWIPC,
    "pid": libc.CLONE_NEWPID,
    "mnt": libc.CLONE_NEWNS,
    "cgroup": libc.CLONE_NEWCGROUP,
}


def container_init(
    spec: LaunchSpec,
    stdio: tuple[int, int, int],
    start_w: int,
    console: socket.socket | None = None,
) -> NoReturn:
    try:
        _prepare(spec, stdio, console)
        close_inherited_fds(keep=start_w)
        exec_process(spec.process)
    except BaseException as exc:  # noqa: BLE001 - everything must reach the shim
        _report(start_w, exc)
    os._exit(127)


def _report(start_w: int, exc: BaseException) -> None:
    text = str(exc) or type(exc).__name__
    try:
        os.write(start_w, text.encode(errors="replace")[:4000])
    except OSError:
        pass


def _prepare(spec: LaunchSpec, stdio: tuple[int, int, int], console: socket.socket | None) -> None:
    for target, fd in enumerate(stdio):
        os.dup2(fd, target)
    for kind, path in spec.join_namespaces:
        if kind != "pid":  # the shim joined or created the PID namespace before forking us
            join_namespace(kind, path)
    for procs in spec.cgroup_procs:
        _write(procs, "0")
    if spec.oom_score_adj is not None:
        _write("/proc/self/oom_score_adj", str(spec.oom_score_adj))
    else:
        # Not the shim's own (nearly OOM-proof) score: a container is an ordinary victim.
        try:
            _write("/proc/self/oom_score_adj", "0")
        except OSError:
            pass
    libc.unshare(libc.CLONE_NEWNS | libc.CLONE_NEWCGROUP)
    rootfs.build(spec)
    if console is not None:
        _take_terminal(console)
    enter_cwd(spec.process.cwd)
    drop_privileges(spec.process)


def _take_terminal(console: socket.socket) -> None:
    """Open a pty in the container's own devpts, send its master to the shim, and make the
    slave our stdio and controlling terminal."""
    master, slave = open_pty()
    channel.send(console, {"terminal": True}, (master,))
    console.close()
    os.close(master)
    os.setsid()
    for target in (0, 1, 2):
        os.dup2(slave, target)
    os.close(slave)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def open_pty(rows: int = 0, cols: int = 0) -> tuple[int, int]:
    """(master, slave) from /dev/ptmx as the calling process sees it."""
    master = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    fcntl.ioctl(master, TIOCSPTLCK, struct.pack("i", 0))
    number = struct.unpack("I", fcntl.ioctl(master, TIOCGPTN, struct.pack("I", 0)))[0]
    slave = os.open(f"/dev/pts/{number}", os.O_RDWR | os.O_NOCTTY | os.O_CLOEXEC)
    if rows and cols:
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    return master, slave


def join_namespace(kind: str, path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        libc.setns(fd, NS_FLAGS[kind])
    except OSError as exc:
        raise OSError(exc.errno, f"failed to join {kind} namespace {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def _write(path: str, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    except OSError as exc:
        raise OSError(exc.errno, f"failed to write {value} to {path}: {exc.strerror}") from exc
    finally:
        os.close(fd)


def enter_cwd(cwd: str) -> None:
    # Container runtimes create a missing working directory rather than fail.
    try:
        os.chdir(cwd)
    except FileNotFoundError:
        os.chdir(ensure_beneath("/", cwd, directory=True))


def drop_privileges(process: ProcessSpec) -> None:
    if not process.no_new_privs:
        apply_seccomp(process.seccomp_profile, process.capabilities)
    keep = caps.mask(frozenset(process.capabilities))
    for number in range(caps.last_cap() + 1):
        if not keep & (1 << number):
            libc.prctl(libc.PR_CAPBSET_DROP, number)
    os.setgroups(list(process.groups))
    os.setresgid(process.gid, process.gid, process.gid)
    os.setresuid(process.uid, process.uid, process.uid)
    effective, permitted, _ = libc.capget()
    libc.capset(effective & keep, permitted & keep, 0)
    libc.prctl(libc.PR_CAP_AMBIENT, libc.PR_CAP_AMBIENT_CLEAR_ALL)
    if process.no_new_privs:
        libc.prctl(libc.PR_SET_NO_NEW_PRIVS, 1)
        apply_seccomp(process.seccomp_profile, process.capabilities)


def apply_seccomp(profile: str | None, capabilities: tuple[str, ...]) -> None:
    """Load the container's resolved profile (native.py resolved it at create time:
    RuntimeDefault or Unconfined; None, from a spec written before, is RuntimeDefault)."""
    if profile == seccomp.UNCONFINED:
        return
    if problem := seccomp.check_profile(profile):
        raise OSError(problem)
    seccomp.load(capabilities)


def reset_signals() -> None:
    """Undo what Python and the fork server did to signals: Python ignores SIGPIPE and
    SIGXFSZ, the fork server SIGCHLD and SIGINT, and an ignored signal stays ignored across
    execve. A container must start with every signal at its default and none blocked."""
    for signum in signal.valid_signals():
        if signum in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(signum) == signal.SIG_IGN:
                signal.signal(signum, signal.SIG_DFL)
        except (OSError, ValueError):
            continue  # signals the C library reserves for itself
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def close_inherited_fds(keep: int) -> None:
    """Close every descriptor above stdio but `keep` (the close-on-exec start pipe): what
    the runtime, the fork server or the shim had open is none of the container's business."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != keep:
            try:
                os.close(fd)
            except OSError:
                pass  # the descriptor listdir itself used


def exec_process(process: ProcessSpec) -> NoReturn:
    reset_signals()
    env = {}
    for item in process.env:
        key, _, value = item.partition("=")
        env[key] = value
    program = process.argv[0]
    try:
        os.execvpe(program, list(process.argv), env)
    except FileNotFoundError:
        where = "" if "/" in program else " in $PATH"
        raise OSError(f'exec "{program}": executable file not found{where}') from None
    except OSError as exc:
        raise OSError(f'exec "{program}": {exc.strerror}') from None
