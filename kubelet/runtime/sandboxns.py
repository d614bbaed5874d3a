"""The Pod's namespaces, made by a short-lived child and kept alive by bind-mounted files.

make_namespaces runs in a child of the fork server (which lives in the host's mount
namespace): it unshares the network, UTS and IPC namespaces the sandbox asks for, sets the
hostname, brings loopback up, lets unprivileged ICMP sockets through ping_group_range,
mounts the Pod's /dev/shm tmpfs, and bind-mounts /proc/self/ns/<kind> onto files in the
sandbox directory. The child then exits: a namespace lives as long as a mount of its file,
so a sandbox without a shared PID namespace needs no process at all. The network code
enters the network namespace through its file (setns), as `ip netns exec` does.

A shared PID namespace needs a process as its init (when it exits, the kernel kills the
namespace): run_pause forks one that reaps orphans and waits to be killed.
"""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct

from kubelet.runtime import _libc as libc
from kubelet.runtime import launch

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
NS_KINDS = {"net": libc.CLONE_NEWNET, "uts": libc.CLONE_NEWUTS, "ipc": libc.CLONE_NEWIPC}


def make_namespaces(
    *, kinds: tuple[str, ...], hostname: str, ns_dir: str, shm_dir: str | None
) -> dict[str, str]:
    """Create the namespaces of `kinds` and pin them; the {kind: path} made."""
    flags = 0
    for kind in kinds:
        flags |= NS_KINDS[kind]
    if flags:
        libc.unshare(flags)
    if "uts" in kinds:
        libc.sethostname(hostname)
    if "net" in kinds:
        loopback_up()
        with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:
            f.write("0 2147483647")
    if shm_dir:
        libc.mount(
            "shm",
            shm_dir,
            "tmpfs",
            libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC,
            "mode=1777,size=65536k",
        )
    paths = {}
    for kind in kinds:
        target = f"{ns_dir}/{kind}"
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
        libc.mount(f"/proc/self/ns/{kind}", target, None, libc.MS_BIND)
        paths[kind] = target
    return paths


def loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, SIOCGIFFLAGS, request))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))


def run_pause(
    *, join: tuple[tuple[str, str], ...], cgroup_procs: tuple[str, ...], ns_dir: str
) -> int:
    """Fork the init of a new PID namespace (in the Pod's other namespaces and cgroup);
    pin its PID namespace at <ns_dir>/pid; its pid as the node sees it."""
    for kind, path in join:
        launch.join_namespace(kind, path)
    for procs in cgroup_procs:
        with open(procs, "w") as f:
            f.write("0")
    libc.unshare(libc.CLONE_NEWPID)
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        _pause(ready_w)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    target = f"{ns_dir}/pid"
    os.close(os.open(target, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o444))
    libc.mount(f"/proc/{pid}/ns/pid", target, None, libc.MS_BIND)
    return pid


def _pause(ready_w: int) -> None:
    libc.set_process_name("kubelite-pause")
    null = os.open(os.devnull, os.O_RDWR)
    for target in (0, 1, 2):
        os.dup2(null, target)
    # Hold nothing of the runtime's: only the pipe that says we are ready.
    os.closerange(3, ready_w)
    os.closerange(ready_w + 1, 1 << 16)

    def reap(signum: int, frame: object) -> None:
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    signal.signal(signal.SIGCHLD, reap)
    os.write(ready_w, b"x")
    os.close(ready_w)
    while True:
        signal.pause()
