"""A container cannot reach its node: processes, mounts, the kernel, the clock, files, limits.

Every case runs a command in a real container (busybox on overlayfs, NativeRuntime, the
default security settings: not privileged, default capabilities, no_new_privs, the
RuntimeDefault seccomp filter) and is judged twice: by the command's exit status and output
inside the container, and by the node's state before and after (its clock, hostname and
domain name, mount table, a canary process and a canary file outside every root file system,
a few kernel knobs, the container's own cgroup limits). When a case did change the node, the
node is put back (clock, knobs, files) before the test fails, so that one hole does not
break the machine for the tests after it.

The checks of one group share one long-lived container and run in it through exec, which
keeps the suite fast; one case checks that an exec'd process is confined exactly like the
container's first process. System calls busybox cannot make are made by Debian's python3
(the node's /usr mounted read-only into the container), also through the 32-bit entry
points a 64-bit process can use, and are skipped where the node has no python3. Volume
cases go through the kubelet's VolumeManager (hostPath, emptyDir, subPath, subPathExpr) and
the API's validation, so that a path is checked where a Pod really sends it; one of them
races a container that swaps symlinks into its emptyDir against the kubelet making subPath
directories. Everything runs on both runtimes a kubelet may be given (NativeRuntime and
RuncRuntime): the walls are the runtime's to build.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kubelet.envvars import expand
from kubelet.runtime import logs, oci, seccomp
from kubelet.runtime.cgroups import detect
from kubelet.runtime.interface import (
    ContainerId,
    InvalidConfigError,
    Mount,
    Resources,
    SandboxId,
)
from kubelet.runtime.native import NativeRuntime, RuntimeOptions
from kubelet.volumes import VolumeError, VolumeManager
from machinery import defaults, validation
from tests.objects import pod as api_pod
from tests.runtime.conftest import _skip_reason, cleanup_runtime, container, pod, unique_prefix

pytestmark = [pytest.mark.root, pytest.mark.timeout(180)]

HOST_PYTHON = Path("/usr/bin/python3")
EXEC_TIMEOUT_S = 30.0
CLOCK_TOLERANCE_S = 5.0  # the node's own time keeping may slew a little meanwhile
# Only a jump this large is put back: a case sets the clock years away, while a smaller step
# may be the node's own time synchronisation, which a test must not undo.
CLOCK_REPAIR_S = 3600.0
DEFAULT_PIDS_LIMIT = next(
    f.default for f in dataclasses.fields(RuntimeOptions) if f.name == "default_pids_limit"
)
CONTAINER_PATH = "/bin"  # busybox's applets, not the node's /usr/bin mounted for python3
# Kernel knobs a case tries to write: compared before and after, and written back.
KNOBS = (
    "/proc/sys/kernel/hostname",
    "/proc/sys/kernel/domainname",
    "/proc/sys/kernel/printk_ratelimit_burst",
    "/proc/sys/kernel/core_pattern",
    "/sys/kernel/rcu_expedited",
)


# -- the node: canaries, and its state before and after each case -----------------------------


@dataclasses.dataclass(frozen=True)
class Snapshot:
    clock_offset_s: float  # CLOCK_REALTIME - CLOCK_BOOTTIME: moves only when the clock is set
    canary_alive: bool
    tagged_mounts: tuple[str, ...]  # lines of the node's mount tables naming the tag
    files: tuple[tuple[str, bytes | None], ...]  # knobs, canary, cgroup files; None: missing
    listings: tuple[tuple[str, tuple[str, ...]], ...]


class Node:
    """The node as a case must leave it: a canary process and file, a tag for mounts."""

    def __init__(self, base: Path) -> None:
        self.tag = unique_prefix()
        self.outside = base / "outside"  # a node directory below no root file system
        self.outside.mkdir()
        self.canary_file = self.outside / "canary"
        self.canary_text = f"node canary {self.tag}"
        self.canary_file.write_text(self.canary_text)
        self.canary_name = f"{self.tag}-canary"
        sleep = shutil.which("sleep") or "/bin/sleep"
        # argv[0] names the process, so that a container listing it would show the name.
        self.canary = subprocess.Popen([self.canary_name, "3600"], executable=sleep)
        self.watched: list[str] = [*KNOBS, str(self.canary_file)]
        self.must_not_exist: list[str] = [
            f"/etc/{self.tag}",
            f"/{self.tag}",
            str(self.outside / self.tag),
        ]

    def close(self) -> None:
        self.canary.kill()
        self.canary.wait()

    def values(self) -> dict[str, str]:
        """What a case's command may name: {pid}, {file}, {tag}, ..."""
        return {
            "pid": str(self.canary.pid),
            "file": str(self.canary_file),
            "outside": str(self.outside),
            "tag": self.tag,
            "canary_name": self.canary_name,
            "canary_text": self.canary_text,
        }

    def snapshot(self) -> Snapshot:
        paths = [*self.watched, *self.must_not_exist]
        return Snapshot(
            clock_offset_s=time.clock_gettime(time.CLOCK_REALTIME)
            - time.clock_gettime(time.CLOCK_BOOTTIME),
            canary_alive=self.canary.poll() is None,
            tagged_mounts=tuple(
                line
                for table in ("/proc/1/mountinfo", "/proc/self/mountinfo")
                for line in Path(table).read_text().splitlines()
                if self.tag in line
            ),
            files=tuple((path, _read_or_none(path)) for path in paths),
            listings=((str(self.outside), tuple(sorted(os.listdir(self.outside)))),),
        )

    def differences(self, before: Snapshot, after: Snapshot) -> list[str]:
        found = []
        drift = after.clock_offset_s - before.clock_offset_s
        if abs(drift) > CLOCK_TOLERANCE_S:
            found.append(f"the node's clock moved by {drift:.0f} s")
        if not after.canary_alive:
            found.append(f"the canary process {self.canary.pid} died")
        if after.tagged_mounts != before.tagged_mounts:
            found.append(f"the node's mount table changed: {after.tagged_mounts}")
        for (path, old), (_, new) in zip(before.files, after.files, strict=True):
            if old != new:
                found.append(f"{path} changed from {old!r} to {new!r}")
        if after.listings != before.listings:
            found.append(f"node directories changed: {before.listings} -> {after.listings}")
        return found

    def repair(self, before: Snapshot, after: Snapshot) -> None:
        """Undo what a case changed on the node, as far as a test can."""
        if abs(after.clock_offset_s - before.clock_offset_s) > CLOCK_REPAIR_S:
            now = time.clock_gettime(time.CLOCK_BOOTTIME) + before.clock_offset_s
            time.clock_settime(time.CLOCK_REALTIME, now)
        for (path, old), (_, new) in zip(before.files, after.files, strict=True):
            if old == new:
                continue
            if old is None:
                _remove(path)
            else:
                Path(path).write_bytes(old)
        for name in set(os.listdir(self.outside)) - {self.canary_file.name}:
            _remove(str(self.outside / name))


def _read_or_none(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        return b"<directory>"


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)


# -- what runs in the container, and what it must answer ---------------------------------------


@dataclasses.dataclass(frozen=True)
class Shell:
    """A busybox shell script; {names} are filled in from Node.values()."""

    script: str


@dataclasses.dataclass(frozen=True)
class Syscall:
    """One raw system call made by python3: it prints the errno name, or "ok"; exit 1 on
    failure. A string argument is passed as a C string, "$self" as the caller's pid, "$now"
    as a pointer to the current time (struct timespec), "$now_tv" as a struct timeval: if
    the call got through, it would set the clock to what it already is.

    abi "x32" makes the call under its x32 number, "i386" through int 0x80 (integer
    arguments only, at most three): a 64-bit process may use both on x86_64, so the filter
    must refuse them there too."""

    name: str
    args: tuple[object, ...] = ()
    abi: str = "native"


@dataclasses.dataclass(frozen=True)
class Python:
    """A python3 program, run with the values of Node.values() as JSON in argv[1]."""

    program: str


Command = Shell | Syscall | Python

SYSCALL_PROGRAM = r"""
import ctypes, errno, json, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long

class Timespec(ctypes.Structure):
    _fields_ = [("sec", ctypes.c_long), ("nsec", ctypes.c_long)]

def arg(value):
    if value == "$self":
        return ctypes.c_long(os.getpid())
    if value in ("$now", "$now_tv"):
        now = time.clock_gettime_ns(time.CLOCK_REALTIME)
        sub = now % 10**9 if value == "$now" else now % 10**9 // 1000
        return ctypes.byref(Timespec(now // 10**9, sub))
    if isinstance(value, str):
        return ctypes.c_char_p(value.encode())
    return ctypes.c_long(value)

number, args = int(sys.argv[1]), json.loads(sys.argv[2])
result = libc.syscall(ctypes.c_long(number), *[arg(a) for a in args])
if result < 0:
    print(errno.errorcode[ctypes.get_errno()])
    sys.exit(1)
print("ok")
"""

# The same through the 32-bit entry (int 0x80), from a few bytes of machine code: save rbx,
# load eax (the number) and ebx, ecx, edx (the arguments), int 0x80, restore rbx, return eax.
INT80_PROGRAM = r"""
import ctypes, errno, json, mmap, struct, sys
number, args = int(sys.argv[1]), json.loads(sys.argv[2])
a, b, c = (args + [0, 0, 0])[:3]
code = (b"\x53\xb8" + struct.pack("<I", number) + b"\xbb" + struct.pack("<i", a)
        + b"\xb9" + struct.pack("<i", b) + b"\xba" + struct.pack("<i", c) + b"\xcd\x80\x5b\xc3")
page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
call = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
result = call()
if result < 0:
    print(errno.errorcode[-result])
    sys.exit(1)
print("ok")
"""

# The classic way out of a chroot: chroot deeper, keep a descriptor of the old root, climb
# with '..' from it, chroot there. After pivot_root it can climb no higher than the
# container's own root.
CHROOT_BREAKOUT = r"""
import json, os, sys
values = json.loads(sys.argv[1])
root = os.stat("/")
os.makedirs("/tmp/jail", exist_ok=True)
old = os.open("/", os.O_RDONLY)
os.chroot("/tmp/jail")
os.fchdir(old)
for _ in range(64):
    os.chdir("..")
os.chroot(".")
now = os.stat("/")
print("root", "unchanged" if (now.st_dev, now.st_ino) == (root.st_dev, root.st_ino) else "moved")
print("canary", "visible" if os.path.exists(values["file"]) else "absent")
"""


@dataclasses.dataclass(frozen=True)
class Expect:
    ok: bool  # whether the command exits 0
    says: tuple[str, ...]  # regular expressions (multi-line) its output must all match
    never: str = ""  # one its output must not match

    def problems(self, exit_code: int, output: str, values: dict[str, str]) -> list[str]:
        found = []
        if (exit_code == 0) != self.ok:
            found.append(f"exit code {exit_code}, expected {'0' if self.ok else 'non-zero'}")
        for pattern in self.says:
            says = pattern.format(**values)
            if not re.search(says, output, re.MULTILINE):
                found.append(f"output does not match {says!r}")
        never = self.never.format(**values)
        if never and re.search(never, output, re.MULTILINE):
            found.append(f"output matches {never!r}")
        return found


def fails(*says: str, never: str = "") -> Expect:
    return Expect(ok=False, says=says, never=never)


def succeeds(*says: str, never: str = "") -> Expect:
    return Expect(ok=True, says=says, never=never)


def refused(errno_name: str = "EPERM") -> Expect:
    return fails(f"^{errno_name}$")


EPERM_TEXT = "Operation not permitted"
SAME_TWICE = r"^(\S+)\n\1$"  # two stat lines naming the same file
MOUNTED = "MOUNTED-IN-CONTAINER"


def needs(path: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(not os.path.exists(path), reason=f"this kernel has no {path}")


def mount_attempt(script: str) -> Shell:
    """A mount attempt, then whether the container's own mount table names the tag (the
    exit status stays the attempt's)."""
    check = f"grep -qF {{tag}} /proc/self/mountinfo && echo {MOUNTED}"
    return Shell(f"mkdir -p /mnt/{{tag}}; {script}; rc=$?; {check}; exit $rc")


# -- the container that holds the walls' cases --------------------------------------------------


@dataclasses.dataclass
class Walls:
    runtime: NativeRuntime
    sandbox: SandboxId
    container: ContainerId
    node: Node
    hostname: str
    python: bool

    def values(self) -> dict[str, str]:
        return {**self.node.values(), "hostname": self.hostname}

    def argv(self, command: Command) -> tuple[str, ...]:
        values = self.values()
        if isinstance(command, Shell):
            return ("/bin/sh", "-c", command.script.format(**values))
        if not self.python:
            pytest.skip(f"needs Debian's python3 at {HOST_PYTHON} on the node")
        if isinstance(command, Python):
            return (str(HOST_PYTHON), "-c", command.program, json.dumps(values))
        number = _syscall_number(command)
        args = [_fill(a, values) for a in command.args]
        program = INT80_PROGRAM if command.abi == "i386" else SYSCALL_PROGRAM
        return (str(HOST_PYTHON), "-c", program, str(number), json.dumps(args))


def _syscall_number(command: Syscall) -> int:
    lib = seccomp.BINDINGS
    if lib is None:
        pytest.skip(seccomp.BINDINGS_PROBLEM)
    if command.abi != "native" and os.uname().machine != "x86_64":
        pytest.skip(f"the {command.abi} system call ABI is x86_64's")
    arch = {"native": lib.Arch.NATIVE, "x32": lib.Arch.X32, "i386": lib.Arch.X86}[command.abi]
    number = lib.resolve_syscall(arch, command.name)
    if number < 0:
        pytest.skip(f"{command.name} does not exist on this architecture")
    return number


def _fill(value: object, values: dict[str, str]) -> object:
    if not isinstance(value, str) or value.startswith("$"):
        return value
    filled = value.format(**values)
    return int(filled) if filled.lstrip("-").isdigit() else filled


def python_layer(base: Path) -> Path:
    """A layer over busybox in which the node's /usr (mounted read-only) resolves."""
    layer = base / "python-layer"
    (layer / "usr").mkdir(parents=True)
    for name in ("lib", "lib64"):
        (layer / name).symlink_to(f"usr/{name}")
    return layer


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    if reason := _skip_reason():
        pytest.skip(reason)
    the_node = Node(tmp_path_factory.mktemp("escape-node"))
    try:
        yield the_node
    finally:
        the_node.close()


@pytest.fixture(scope="module", params=["native", "runc"])
def module_runtime(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NativeRuntime]:
    """Both runtimes a kubelet may be given: the walls are the runtime's to build."""
    if reason := _skip_reason():
        pytest.skip(reason)
    if request.param == "runc" and shutil.which("runc") is None:
        pytest.skip("needs runc (Debian package runc)")
    state_dir = tmp_path_factory.mktemp("escape-runtime") / "state"
    cgroup_root = unique_prefix()
    options = RuntimeOptions(state_dir=state_dir, cgroup_root=cgroup_root)
    rt = NativeRuntime(options) if request.param == "native" else oci.RuncRuntime(options)
    try:
        yield rt
    finally:
        cleanup_runtime(rt, state_dir, cgroup_root)


@pytest.fixture(scope="module")
def walls(
    module_runtime: NativeRuntime,
    node: Node,
    busybox_rootfs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Walls:
    python = HOST_PYTHON.exists()
    layers: tuple[Path, ...] = (busybox_rootfs,)
    mounts: tuple[Mount, ...] = ()
    if python:
        layers += (python_layer(tmp_path_factory.mktemp("escape-python")),)
        mounts = (Mount("/usr", "/usr", read_only=True),)
    sandbox = module_runtime.run_sandbox(pod("walls"))
    config = container(
        busybox_rootfs,
        "sleep",
        "86400",
        name="walls",
        layers=layers,
        mounts=mounts,
        env={"PATH": CONTAINER_PATH},
    )
    container_id = module_runtime.create_container(sandbox, config)
    module_runtime.start_container(container_id)
    cgroup = f"{module_runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
    cgroup_dirs = tuple(os.path.dirname(p) for p in detect().procs_files(cgroup))
    for name in ("pids.max", "devices.list"):
        node.watched += [f"{d}/{name}" for d in cgroup_dirs if os.path.exists(f"{d}/{name}")]
    return Walls(module_runtime, sandbox, container_id, node, "walls", python)


def run_case(walls: Walls, command: Command, expect: Expect) -> None:
    argv = walls.argv(command)
    before = walls.node.snapshot()
    try:
        result = walls.runtime.exec_sync(walls.container, argv, EXEC_TIMEOUT_S)
    finally:
        after = walls.node.snapshot()
        walls.node.repair(before, after)
    output = (result.stdout + result.stderr).decode(errors="replace")
    problems = walls.node.differences(before, after)
    problems += expect.problems(result.exit_code, output, walls.values())
    assert not problems, f"{command}: {problems}\n{output}"


# -- processes and signals ----------------------------------------------------------------------

PROCESSES = [
    pytest.param(Shell("ls /proc/{pid}"), fails("No such file"), id="host-pid-absent-from-proc"),
    pytest.param(
        Shell("ls -d /proc/[0-9]* | wc -l"),
        # sleep (pid 1), this shell, ls and wc: a handful, where the node has hundreds.
        succeeds(r"^\s*[1-5]\s*$"),
        id="proc-lists-only-the-containers-processes",
    ),
    pytest.param(Shell("ps -o pid,args"), succeeds("sleep 86400", never="{canary_name}"), id="ps"),
    pytest.param(Shell("kill -0 {pid}"), fails("No such process"), id="kill-0-host-pid"),
    pytest.param(Shell("kill -KILL {pid}"), fails("No such process"), id="kill-host-pid"),
    pytest.param(
        # -1 is every process the caller may signal: in a PID namespace, only the container's.
        # Sent only when the node's processes are out of sight, lest a hole kill the machine.
        Shell("test -e /proc/{pid} && echo SEES-THE-NODE || kill -KILL -1; echo survived"),
        succeeds("^survived$", never="SEES-THE-NODE"),
        id="kill-all",
    ),
    pytest.param(Syscall("pidfd_open", ("{pid}", 0)), refused("ESRCH"), id="pidfd-open-host-pid"),
    pytest.param(
        Syscall("ptrace", (16, "{pid}", 0, 0)), refused("ESRCH"), id="ptrace-attach-host-pid"
    ),
    pytest.param(
        Syscall("ptrace", (0x4206, "{pid}", 0, 0)), refused("ESRCH"), id="ptrace-seize-host-pid"
    ),
    pytest.param(
        Shell(
            "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status > /tmp/self; "
            "grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/1/status | diff - /tmp/self "
            "&& grep NoNewPrivs /tmp/self"
        ),
        succeeds(r"^NoNewPrivs:\s+1$"),
        id="exec-is-confined-like-pid-1",
    ),
]


@pytest.mark.parametrize(("command", "expect"), PROCESSES)
def test_host_processes_are_out_of_sight_and_reach(walls: Walls, command, expect):
    run_case(walls, command, expect)


def _ptrace_family_args() -> dict[str, tuple[object, ...]]:
    """Arguments that the kernel would answer with something else than EPERM."""
    return {
        "kcmp": ("$self", "$self", 0, 0, 0),  # KCMP_FILE of fd 0 with itself
        "process_vm_readv": ("$self", 0, 0, 0, 0, 0),
        "process_vm_writev": ("$self", 0, 0, 0, 0, 0),
        "pidfd_getfd": (-1, 0, 0),
        "process_madvise": (-1, 0, 0, 0, 0),
        "ptrace": (0x4206, -1, 0, 0),  # PTRACE_SEIZE of no process: ESRCH
    }


def _ptrace_family() -> list[str]:
    """The calls the runtime promises to refuse with other processes' memory and files (on
    this kernel: ptrace itself only before 4.8, where seccomp could be skipped under it)."""
    return sorted(
        refusal.syscall
        for group in seccomp.groups()
        if "SYS_PTRACE" in group.unlocked_by
        for refusal in group.refusals
    )


def test_ptrace_family_table_covers_the_promise():
    assert set(_ptrace_family()) <= set(_ptrace_family_args())


@pytest.mark.parametrize("name", _ptrace_family())
def test_seccomp_refuses_the_ptrace_family(walls: Walls, name: str):
    run_case(walls, Syscall(name, _ptrace_family_args()[name]), refused("EPERM"))


# -- mounts and namespaces ----------------------------------------------------------------------

MOUNTS = [
    pytest.param(
        mount_attempt("mount -t tmpfs {tag} /mnt/{tag}"),
        fails("permission denied", never=MOUNTED),
        id="mount-tmpfs",
    ),
    pytest.param(
        mount_attempt("mount --bind /tmp /mnt/{tag}"),
        fails("permission denied", never=MOUNTED),
        id="mount-bind",
    ),
    pytest.param(
        mount_attempt("mount -t proc {tag} /mnt/{tag}"),
        fails("permission denied", never=MOUNTED),
        id="mount-a-second-proc",
    ),
    pytest.param(
        Shell(
            "mount -o remount,rw /sys; rc=$?; grep -E ' /sys .*\\bro\\b' /proc/self/mountinfo "
            "> /dev/null || echo WRITABLE; exit $rc"
        ),
        fails("permission denied", never="WRITABLE"),
        id="remount-sys-writable",
    ),
    pytest.param(
        Shell("mount -o remount,rw /proc/sys"), fails("permission denied"), id="remount-proc-sys"
    ),
    pytest.param(
        Shell("umount /proc/timer_list; rc=$?; wc -c < /proc/timer_list; exit $rc"),
        fails(EPERM_TEXT, r"^\s*0$"),
        id="unmount-a-mask",
    ),
    pytest.param(Shell("umount -l /"), fails(EPERM_TEXT), id="unmount-the-root"),
    pytest.param(Shell("pivot_root /tmp /tmp"), fails(EPERM_TEXT), id="pivot-root"),
    pytest.param(Shell("unshare -m true"), fails(EPERM_TEXT), id="unshare-mount-namespace"),
    pytest.param(Shell("unshare -U true"), fails(EPERM_TEXT), id="unshare-user-namespace"),
    pytest.param(
        Shell("unshare -Urm mount -t tmpfs {tag} /tmp"),
        fails(EPERM_TEXT),
        id="user-namespace-then-mount",
    ),
    pytest.param(
        Shell("unshare -Urfp --mount-proc true"), fails(EPERM_TEXT), id="user-and-pid-namespace"
    ),
    pytest.param(Shell("nsenter -t 1 -m true"), fails(EPERM_TEXT), id="setns"),
    pytest.param(Syscall("mount", ("{tag}", "/tmp", "tmpfs", 0, 0)), refused(), id="mount(2)"),
    pytest.param(Syscall("fsopen", ("tmpfs", 0)), refused(), id="fsopen(2)"),
    pytest.param(Syscall("open_tree", (-100, "/", 1)), refused(), id="open_tree(2)"),
    pytest.param(Syscall("unshare", (0x10000000,)), refused(), id="unshare(CLONE_NEWUSER)"),
    pytest.param(Syscall("unshare", (0x00020000,)), refused(), id="unshare(CLONE_NEWNS)"),
    pytest.param(Syscall("clone3", (0, 0)), refused("ENOSYS"), id="clone3-falls-back-to-clone"),
    pytest.param(Shell("swapon /tmp"), fails(EPERM_TEXT), id="swapon"),
]


@pytest.mark.parametrize(("command", "expect"), MOUNTS)
def test_nothing_can_be_mounted(walls: Walls, command, expect):
    run_case(walls, command, expect)


# -- the kernel: modules, kexec, keyrings, reboot, the clock, the host name ----------------------

KERNEL = [
    pytest.param(Shell("echo junk > /tmp/m.ko; insmod /tmp/m.ko"), fails(EPERM_TEXT), id="insmod"),
    pytest.param(Shell("rmmod {tag}"), fails(EPERM_TEXT), id="rmmod"),
    # The filter answers before the kernel looks at the image (or finds no module support).
    pytest.param(Syscall("init_module", ("junk", 4, "")), refused(), id="init_module(2)"),
    pytest.param(Syscall("finit_module", (0, "", 0)), refused(), id="finit_module(2)"),
    pytest.param(Syscall("delete_module", ("{tag}", 0o4000)), refused(), id="delete_module(2)"),
    # An unknown flag: even a kernel that let the call through would load nothing.
    pytest.param(Syscall("kexec_load", (0, 0, 0, 0x80)), refused(), id="kexec_load(2)"),
    pytest.param(
        Syscall("kexec_file_load", (-1, -1, 0, 0, 0x80)), refused(), id="kexec_file_load(2)"
    ),
    pytest.param(Syscall("keyctl", (0, -3, 1)), refused(), id="keyctl-session-keyring"),
    # No capability guards keyctl: only the filter refuses it, under every ABI.
    pytest.param(Syscall("keyctl", (0, -3, 1), abi="x32"), refused(), id="keyctl-x32"),
    pytest.param(Syscall("keyctl", (0, -3, 1), abi="i386"), refused(), id="keyctl-i386"),
    pytest.param(Syscall("unshare", (0x10000000,), abi="i386"), refused(), id="unshare-i386"),
    # ... by its rules, not by killing every 32-bit call: a 32-bit program still runs.
    pytest.param(Syscall("getpid", abi="i386"), succeeds("^ok$"), id="ordinary-i386-call"),
    pytest.param(
        Syscall("add_key", ("user", "{tag}", "secret", 6, -3)), refused(), id="add_key(2)"
    ),
    pytest.param(Syscall("request_key", ("user", "{tag}", 0, 0)), refused(), id="request_key(2)"),
    # Bad magic numbers: the capability (and the filter) are checked before them, and a
    # call that got through would be refused EINVAL rather than reboot anything.
    pytest.param(Syscall("reboot", (0, 0, 0, 0)), refused(), id="reboot(2)"),
    pytest.param(
        Shell("date -s '2001-02-03 04:05:06'"),
        # busybox date reports the refusal and still exits 0.
        succeeds(f"can't set date: {EPERM_TEXT}"),
        id="date-s",
    ),
    pytest.param(Shell("adjtimex -o 100"), fails(EPERM_TEXT), id="adjtimex"),
    pytest.param(Syscall("settimeofday", ("$now_tv", 0)), refused(), id="settimeofday(2)"),
    pytest.param(Syscall("clock_settime", (0, "$now")), refused(), id="clock_settime(2)"),
    pytest.param(Syscall("clock_adjtime", (0, 1)), refused(), id="clock_adjtime(2)"),
    pytest.param(
        Shell("hostname {tag}; rc=$?; hostname; exit $rc"),
        fails(EPERM_TEXT, "^{hostname}$"),
        id="hostname",
    ),
    pytest.param(
        Shell("echo {tag} > /proc/sys/kernel/hostname"),
        fails("Read-only file system"),
        id="hostname-through-proc-sys",
    ),
    pytest.param(Syscall("sethostname", ("{tag}", 8)), refused(), id="sethostname(2)"),
    pytest.param(Syscall("setdomainname", ("{tag}", 8)), refused(), id="setdomainname(2)"),
    pytest.param(Shell("unshare -u hostname {tag}"), fails(EPERM_TEXT), id="new-uts-namespace"),
]


@pytest.mark.parametrize(("command", "expect"), KERNEL)
def test_the_kernel_is_the_nodes(walls: Walls, command, expect):
    run_case(walls, command, expect)


# -- the root file system: '..', /proc/*/root, chroot ---------------------------------------------

ROOT = [
    pytest.param(
        Shell("cd -P /../../../../..; pwd; stat -c %d:%i /../../../.. /"),
        succeeds(r"^/\n(\S+)\n\1$"),
        id="dotdot-stays-at-the-root",
    ),
    pytest.param(Shell("cat /../../../..{file}"), fails("No such file"), id="dotdot-to-canary"),
    pytest.param(
        Shell("find / -xdev -name canary"), succeeds(never="{outside}"), id="canary-nowhere"
    ),
    pytest.param(
        Shell("readlink /proc/1/root; stat -c %d:%i /proc/1/root/ /"),
        succeeds(r"^/\n(\S+)\n\1$"),
        id="proc-1-root-is-the-containers",
    ),
    pytest.param(
        Shell("readlink /proc/self/root; stat -c %d:%i /proc/self/root/../.. /"),
        succeeds(r"^/\n(\S+)\n\1$"),
        id="proc-self-root-is-the-containers",
    ),
    pytest.param(Shell("cat /proc/1/root{file}"), fails("No such file"), id="proc-1-root-canary"),
    pytest.param(
        Shell("cat /proc/self/root/../..{file}"), fails("No such file"), id="proc-self-root-canary"
    ),
    pytest.param(
        Shell("stat -c %d:%i /proc/1/cwd/../../.. /"),
        succeeds(SAME_TWICE),
        id="proc-1-cwd",
    ),
    pytest.param(
        # Every process the container can see has its root where the container's is.
        Shell("stat -c %d:%i / /proc/[0-9]*/root/ 2>/dev/null | sort -u | wc -l"),
        succeeds(r"^\s*1\s*$"),
        id="every-visible-root-is-the-containers",
    ),
    pytest.param(
        Python(CHROOT_BREAKOUT),
        succeeds("^root unchanged\ncanary absent$"),
        id="chroot-breakout",
    ),
    pytest.param(Syscall("open_by_handle_at", (-100, 1, 0)), refused(), id="open_by_handle_at(2)"),
    pytest.param(
        Syscall("name_to_handle_at", (-100, "/", 1, 1, 0)), refused(), id="name_to_handle_at(2)"
    ),
]


@pytest.mark.parametrize(("command", "expect"), ROOT)
def test_the_root_file_system_has_no_way_out(walls: Walls, command, expect):
    run_case(walls, command, expect)


# -- /proc and /sys -------------------------------------------------------------------------------

KERNEL_FILES = [
    pytest.param(
        Shell("echo 11 > /proc/sys/kernel/printk_ratelimit_burst"),
        fails("Read-only file system"),
        id="proc-sys-write",
    ),
    pytest.param(
        Shell("sysctl -w kernel.core_pattern='|/tmp/{tag}'"),
        fails("Read-only file system"),
        id="core-pattern",
    ),
    pytest.param(
        Shell("echo 1 > /sys/kernel/rcu_expedited"),
        fails("Read-only file system"),
        id="sys-write",
        marks=needs("/sys/kernel/rcu_expedited"),
    ),
    pytest.param(Shell("touch /sys/{tag}"), fails("Read-only file system"), id="sys-create"),
    pytest.param(
        Shell(
            "f=$(ls /sys/fs/cgroup/pids.max /sys/fs/cgroup/pids/pids.max 2>/dev/null); "
            "cat $f; echo max > $f"
        ),
        fails(f"^{DEFAULT_PIDS_LIMIT}$", "Read-only file system"),
        id="raise-own-pids-limit",
    ),
    pytest.param(
        Shell(
            "f=$(ls /sys/fs/cgroup/devices/devices.allow 2>/dev/null || "
            "echo /sys/fs/cgroup/cgroup.subtree_control); echo a > $f"
        ),
        fails("Read-only file system"),
        id="open-own-devices-or-controllers",
    ),
    pytest.param(
        Shell("wc -c < /proc/kcore"), succeeds(r"^\s*0$"), id="kcore", marks=needs("/proc/kcore")
    ),
    pytest.param(
        Shell("wc -c < /proc/keys"), succeeds(r"^\s*0$"), id="keys", marks=needs("/proc/keys")
    ),
    pytest.param(
        Shell("wc -c < /proc/timer_list"),
        succeeds(r"^\s*0$"),
        id="timer-list",
        marks=needs("/proc/timer_list"),
    ),
    pytest.param(
        Shell("wc -c < /proc/sched_debug"),
        succeeds(r"^\s*0$"),
        id="sched-debug",
        marks=needs("/proc/sched_debug"),
    ),
    pytest.param(
        Shell("ls -A /sys/firmware | wc -l; touch /sys/firmware/x"),
        fails(r"^\s*0$", "Read-only file system"),
        id="sys-firmware",
        marks=needs("/sys/firmware"),
    ),
    pytest.param(
        Shell("echo h > /proc/sysrq-trigger"),
        fails("Read-only file system"),
        id="sysrq-trigger",
        marks=needs("/proc/sysrq-trigger"),
    ),
    pytest.param(Shell("cat /proc/kmsg"), fails(EPERM_TEXT), id="kmsg"),
    pytest.param(Shell("dmesg"), fails(EPERM_TEXT), id="dmesg"),
    pytest.param(
        # The device cgroup refuses opening what a container could make with mknod.
        Shell("mknod /tmp/mem c 1 1 && head -c 1 /tmp/mem"),
        fails(EPERM_TEXT),
        id="dev-mem",
    ),
    pytest.param(
        Shell("ls /dev/mem /dev/kmsg /dev/port"), fails("No such file"), id="no-node-devices"
    ),
]


@pytest.mark.parametrize(("command", "expect"), KERNEL_FILES)
def test_proc_and_sys_are_masked_or_read_only(walls: Walls, command, expect):
    run_case(walls, command, expect)


# -- the pids limit -------------------------------------------------------------------------------

# A subshell starts sleepers until a fork is refused (the shell then exits); the container's
# own shell counts what runs with builtins only (no fork is left for anything else), then
# kill -1 (a builtin too) clears the way for reading the subshell's complaint. It stays up
# afterwards so that the node can read the container's cgroup (runc removes it at exit).
SPAWN = """
(for i in $(seq {attempts}); do sleep 60 & done) 2> /tmp/err
set -- /proc/[0-9]*
echo running=$#
kill -KILL -1
wait
cat /tmp/err
echo counted
exec sleep 600
"""


def wait_for_output(runtime: NativeRuntime, container_id: ContainerId, text: str) -> str:
    """The container's log once it holds text (or the container ended)."""
    log_path = runtime.container_status(container_id).log_path
    deadline = time.monotonic() + 120
    while True:
        output = b"".join(logs.read_log(log_path)).decode()
        ended = runtime.container_status(container_id).exit_code is not None
        if text in output or ended or time.monotonic() > deadline:
            return output
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("resources", "limit"),
    [
        pytest.param(Resources(pids_limit=12), 12, id="the-containers-limit"),
        pytest.param(Resources(), DEFAULT_PIDS_LIMIT, id="the-runtimes-default"),
    ],
)
def test_pids_limit_holds(
    module_runtime: NativeRuntime, busybox_rootfs: Path, node: Node, resources, limit: int
):
    attempts = limit + 20
    sandbox = module_runtime.run_sandbox(pod(f"pids-{limit}"))
    before = node.snapshot()
    try:
        config = container(
            busybox_rootfs, "sh", "-c", SPAWN.format(attempts=attempts), resources=resources
        )
        container_id = module_runtime.create_container(sandbox, config)
        module_runtime.start_container(container_id)
        output = wait_for_output(module_runtime, container_id, "counted")
        cgroup = f"{module_runtime.sandbox_status(sandbox).cgroup_path}/{container_id}"
        pids_dir = next(
            d
            for d in (os.path.dirname(p) for p in detect().procs_files(cgroup))
            if os.path.exists(f"{d}/pids.max")
        )
        limit_file = Path(pids_dir, "pids.max").read_text().strip()
        events = Path(pids_dir, "pids.events").read_text()
    finally:
        module_runtime.remove_sandbox(sandbox)
    assert node.differences(before, node.snapshot()) == []
    running = re.search(r"^running=(\d+)$", output, re.MULTILINE)
    assert running is not None, output
    # The shell, the subshell and the sleepers filled the limit; the subshell is gone.
    assert limit - 2 <= int(running.group(1)) < limit, output
    assert "can't fork: Resource temporarily unavailable" in output
    assert limit_file == str(limit)
    # The kernel counted the refusal too (pids.events: "max N").
    refusals = re.search(r"^max (\d+)$", events, re.MULTILINE)
    assert refusals is not None and int(refusals.group(1)) >= 1, events


# -- volumes: symlinks and subPaths ------------------------------------------------------------


class NoObjects:
    """volumes.Sources for Pods with hostPath and emptyDir volumes only (never consulted)."""

    def configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    def secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return None


# Symlinks a Pod can place in its volumes: the node's admin in a hostPath directory, or a
# container of the Pod in an emptyDir (the other containers then mount them by subPath).
LINKS = {
    "to-root": "/",
    "to-etc": "/etc",
    "to-outside": "{outside}",
    "to-canary": "{file}",
    "up": "../../../../../../../../..",
}
SUB_PATHS = {
    "root": "to-root",
    "etc": "to-etc",
    "outside": "to-outside",
    "outside-new": "to-outside/{tag}",
    "canary": "to-canary",
    "up": "up",
    "file": "app.conf",  # a plain file of the volume: mounted as that one file
}


@dataclasses.dataclass
class VolumeWalls:
    walls: Walls
    manager: VolumeManager
    host_dir: Path
    empty_dir: Path


def _link_script(directory: str, values: dict[str, str]) -> str:
    links = [f"ln -s {target.format(**values)} {directory}/{n}" for n, target in LINKS.items()]
    return "; ".join([*links, f"echo scratch-conf > {directory}/app.conf"])


def _volume_pod(uid: str, host_dir: Path, mounts: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "metadata": {"name": "volumes", "namespace": "default", "uid": uid},
        "spec": {
            "containers": [{"name": "reader", "volumeMounts": mounts}],
            "volumes": [
                {"name": "host", "hostPath": {"path": str(host_dir), "type": "Directory"}},
                {"name": "scratch", "emptyDir": {}},
            ],
        },
    }


def _reader_mounts() -> list[dict[str, Any]]:
    mounts = [
        {"name": "host", "mountPath": "/host"},
        {"name": "scratch", "mountPath": "/scratch"},
    ]
    for volume in ("host", "scratch"):
        for name, sub_path in SUB_PATHS.items():
            mounts.append(
                {"name": volume, "mountPath": f"/sub/{volume}-{name}", "subPath": sub_path}
            )
    return mounts


@pytest.fixture(scope="module")
def volume_walls(
    module_runtime: NativeRuntime,
    node: Node,
    busybox_rootfs: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[VolumeWalls]:
    base = tmp_path_factory.mktemp("escape-volumes")
    values = node.values()
    host_dir = base / "host-dir"
    host_dir.mkdir()
    for name, target in LINKS.items():
        (host_dir / name).symlink_to(target.format(**values))
    (host_dir / "app.conf").write_text("host-conf\n")
    manager = VolumeManager(base / "pods", NoObjects())
    uid = uuid.uuid4().hex
    mounts = [
        {**m, "subPath": m["subPath"].format(**values)} if "subPath" in m else m
        for m in _reader_mounts()
    ]
    spec = _volume_pod(uid, host_dir, mounts)
    volumes = manager.setup(spec)
    sandbox = module_runtime.run_sandbox(pod("volumes", uid=uid))
    try:
        # A container of the Pod leaves symlinks in the emptyDir for the next one.
        scratch = volumes["scratch"].host_path
        writer = container(
            busybox_rootfs,
            "sh",
            "-c",
            _link_script("/scratch", values),
            name="writer",
            mounts=(Mount(scratch, "/scratch"),),
        )
        writer_id = module_runtime.create_container(sandbox, writer)
        module_runtime.start_container(writer_id)
        assert module_runtime.wait_container(writer_id, 60).exit_code == 0
        reader_spec = spec["spec"]["containers"][0]
        reader = container(
            busybox_rootfs,
            "sleep",
            "86400",
            name="reader",
            mounts=manager.mounts_for(reader_spec, volumes, {}),
            env={"PATH": CONTAINER_PATH},
        )
        reader_id = module_runtime.create_container(sandbox, reader)
        module_runtime.start_container(reader_id)
        walls = Walls(module_runtime, sandbox, reader_id, node, "volumes", python=False)
        yield VolumeWalls(walls, manager, host_dir, Path(scratch))
    finally:
        module_runtime.remove_sandbox(sandbox)
        manager.teardown(uid)


def _volume_cases() -> list[Any]:
    cases = []
    for volume in ("host", "scratch"):
        v = f"/{volume}"
        s = f"/sub/{volume}"
        cases += [
            # Through the volume itself: symlinks resolve inside the container's root.
            pytest.param(
                Shell(f"cat {v}/to-canary"), fails("No such file"), id=f"{volume}-link-to-canary"
            ),
            pytest.param(
                Shell(f"ls {v}/to-outside/"), fails("No such file"), id=f"{volume}-link-to-outside"
            ),
            pytest.param(
                Shell(f"cat {v}/to-etc/hostname"), succeeds("^volumes$"), id=f"{volume}-link-to-etc"
            ),
            pytest.param(
                # The image's passwd (root and app), not the node's.
                Shell(f"cat {v}/to-etc/passwd"),
                succeeds("^app:x:1000:", never="^(daemon|bin|sys):"),
                id=f"{volume}-link-to-etc-passwd",
            ),
            pytest.param(
                Shell(f"stat -c %d:%i {v}/to-root/ /"),
                succeeds(SAME_TWICE),
                id=f"{volume}-link-to-root",
            ),
            pytest.param(
                Shell(f"echo owned > {v}/to-etc/{{tag}} && cat /etc/{{tag}}"),
                succeeds("^owned$"),
                id=f"{volume}-write-through-link-to-etc",
            ),
            pytest.param(
                Shell(f"echo owned > {v}/to-outside/{{tag}}"),
                fails("No such file|nonexistent directory"),
                id=f"{volume}-write-through-link-to-outside",
            ),
            # By subPath: the kubelet and the runtime resolve the link inside the volume.
            pytest.param(
                Shell(f"stat -c %d:%i {s}-root/ {v}/"),
                succeeds(SAME_TWICE),
                id=f"{volume}-subpath-to-root",
            ),
            pytest.param(
                Shell(f"stat -c %d:%i {s}-up/ {v}/"),
                succeeds(SAME_TWICE),
                id=f"{volume}-subpath-up",
            ),
            pytest.param(
                Shell(f"ls -A {s}-etc | wc -l; test -e {s}-etc/passwd"),
                fails(r"^\s*0$"),
                id=f"{volume}-subpath-to-etc",
            ),
            pytest.param(
                # The kubelet made <volume><outside>/canary a directory for the next case.
                Shell(f"cat {s}-outside/canary"),
                fails("Is a directory", never="{canary_text}"),
                id=f"{volume}-subpath-to-outside",
            ),
            pytest.param(
                Shell(f"cat {s}-canary"), fails("Is a directory"), id=f"{volume}-subpath-to-canary"
            ),
            pytest.param(
                Shell(f"cat {s}-file && test -f {s}-file && echo a-file"),
                succeeds(f"^{volume}-conf$", "^a-file$"),
                id=f"{volume}-subpath-to-a-file",
            ),
            pytest.param(
                Shell(f"touch {s}-outside-new/{{tag}} {s}-outside/{{tag}} && echo written"),
                succeeds("^written$"),
                id=f"{volume}-subpath-writes-stay-in-the-volume",
            ),
        ]
    return cases


@pytest.mark.parametrize(("command", "expect"), _volume_cases())
def test_symlinks_in_volumes_stay_inside(volume_walls: VolumeWalls, command, expect):
    run_case(volume_walls.walls, command, expect)


def test_links_resolved_by_subpath_were_made_inside_the_volumes(
    volume_walls: VolumeWalls, node: Node
):
    # Where the kubelet and the runtime made the directories the subPaths named.
    for directory in (volume_walls.host_dir, volume_walls.empty_dir):
        inside = Path(str(directory) + str(node.outside))
        assert inside.is_dir() and (inside / node.tag).is_dir()
        assert Path(str(directory) + "/etc").is_dir()
    assert sorted(os.listdir(node.outside)) == ["canary"]
    assert not os.path.lexists(f"/etc/{node.tag}")


# (volumeMount fields, the container's environment, what the API server says or None when
# it cannot judge: a subPathExpr is known only on the node).
NOT_DOTDOT = "must not contain '..'"
UNSAFE_SUB_PATHS = [
    pytest.param({"subPath": "../../etc"}, {}, NOT_DOTDOT, id="dotdot"),
    pytest.param({"subPath": "a/../../etc"}, {}, NOT_DOTDOT, id="inner-dotdot"),
    pytest.param({"subPath": ".."}, {}, NOT_DOTDOT, id="parent"),
    pytest.param({"subPath": "/etc"}, {}, "must be a relative path", id="absolute"),
    pytest.param({"subPathExpr": "$(EVIL)"}, {"EVIL": "../../etc"}, None, id="expr-dotdot"),
    pytest.param({"subPathExpr": "$(EVIL)/passwd"}, {"EVIL": "/etc"}, None, id="expr-absolute"),
]


def _api_sub_path_causes(mount: dict[str, Any]) -> list[str]:
    manifest = api_pod("unsafe", volumes=[{"name": "data", "emptyDir": {}}])
    manifest["spec"]["containers"][0]["volumeMounts"] = [mount]
    defaults.apply_defaults(manifest)
    causes = [str(cause) for cause in validation.validate(manifest)]
    return [c for c in causes if c.startswith("spec.containers[0].volumeMounts[0].subPath")]


@pytest.mark.parametrize(("field", "env", "api_says"), UNSAFE_SUB_PATHS)
def test_unsafe_sub_paths_are_refused_everywhere(
    tmp_path: Path,
    busybox_rootfs: Path,
    module_runtime: NativeRuntime,
    field: dict[str, str],
    env: dict[str, str],
    api_says: str | None,
):
    mount = {"name": "data", "mountPath": "/data", **field}
    sub_path = field.get("subPath") or expand(field["subPathExpr"], env)

    causes = _api_sub_path_causes(mount)
    if api_says is None:
        assert causes == []
    else:
        field_path = "spec.containers[0].volumeMounts[0].subPath"
        assert causes == [f"{field_path}: Invalid value: {json.dumps(sub_path)}: {api_says}"]

    # The kubelet refuses the expanded path, naming the mount.
    manager = VolumeManager(tmp_path / "pods", NoObjects())
    uid = uuid.uuid4().hex
    pod_spec = {"volumes": [{"name": "data", "emptyDir": {}}]}
    volumes = manager.setup({"metadata": {"uid": uid}, "spec": pod_spec})
    try:
        with pytest.raises(
            VolumeError,
            match=re.escape(
                f"volumeMounts[0] (data): subPath {sub_path!r} must be relative without"
            ),
        ):
            manager.mounts_for({"volumeMounts": [mount]}, volumes, env)
    finally:
        manager.teardown(uid)
    assert os.listdir(tmp_path) == ["pods"]

    # So does the runtime, should a caller other than the kubelet hand it in.
    sandbox = module_runtime.run_sandbox(pod("unsafe"))
    try:
        config = container(
            busybox_rootfs, "true", mounts=(Mount(str(tmp_path), "/data", sub_path=sub_path),)
        )
        with pytest.raises(
            InvalidConfigError, match=f"mounts\\[0\\]: subPath {re.escape(repr(sub_path))}"
        ):
            module_runtime.create_container(sandbox, config)
    finally:
        module_runtime.remove_sandbox(sandbox)


@pytest.mark.parametrize(
    "sub_path",
    [
        # Resolved inside the volume, /etc names the link itself again.
        pytest.param("etc/passwd", id="link-naming-itself"),
        pytest.param("a", id="two-links-in-a-ring"),
    ],
)
def test_a_subpath_through_a_symlink_loop_is_a_clear_error(
    tmp_path: Path, node: Node, sub_path: str
):
    host_dir = tmp_path / "looping"
    host_dir.mkdir()
    (host_dir / "etc").symlink_to("/etc")
    (host_dir / "a").symlink_to("b")
    (host_dir / "b").symlink_to("a")
    manager = VolumeManager(tmp_path / "pods", NoObjects())
    volumes = manager.setup(_volume_pod(uuid.uuid4().hex, host_dir, []))
    reader = {"volumeMounts": [{"name": "host", "mountPath": "/x", "subPath": sub_path}]}
    with pytest.raises(VolumeError, match=r"volumeMounts\[0\] \(host\): .*too many symlinks"):
        manager.mounts_for(reader, volumes, {})
    assert sorted(os.listdir(host_dir)) == ["a", "b", "etc"]


# A container of the Pod keeps replacing a directory of its emptyDir with a symlink to a node
# directory, while the kubelet makes subPath directories below it for another container.
FLIPPER = r"""
import os, sys
link, target = "/scratch/d", sys.argv[1]

def empty_and_remove():
    for entry in os.listdir(link):
        os.rmdir(f"{link}/{entry}")
    os.rmdir(link)

steps = (lambda: os.mkdir(link), empty_and_remove, lambda: os.symlink(target, link),
         lambda: os.unlink(link))
while True:
    for step in steps:
        try:
            step()
        except OSError:
            pass
"""
RACE_ATTEMPTS = 4000


def test_a_symlink_swapped_in_while_the_kubelet_makes_a_subpath_is_not_followed(
    module_runtime: NativeRuntime,
    node: Node,
    busybox_rootfs: Path,
    tmp_path_factory: pytest.TempPathFactory,
):
    if not HOST_PYTHON.exists():
        pytest.skip(f"needs Debian's python3 at {HOST_PYTHON} on the node")
    base = tmp_path_factory.mktemp("escape-race")
    manager = VolumeManager(base / "pods", NoObjects())
    uid = uuid.uuid4().hex
    volumes = manager.setup(
        {"metadata": {"uid": uid}, "spec": {"volumes": [{"name": "scratch", "emptyDir": {}}]}}
    )
    sandbox = module_runtime.run_sandbox(pod("race", uid=uid))
    before = node.snapshot()
    try:
        flipper = container(
            busybox_rootfs,
            str(HOST_PYTHON),
            "-c",
            FLIPPER,
            str(node.outside),
            name="flipper",
            layers=(busybox_rootfs, python_layer(base)),
            mounts=(
                Mount("/usr", "/usr", read_only=True),
                Mount(volumes["scratch"].host_path, "/scratch"),
            ),
        )
        module_runtime.start_container(module_runtime.create_container(sandbox, flipper))
        refused = 0
        for attempt in range(RACE_ATTEMPTS):
            mount = {"name": "scratch", "mountPath": "/x", "subPath": f"d/{node.tag}-{attempt}"}
            try:
                manager.mounts_for({"volumeMounts": [mount]}, volumes, {})
            except VolumeError:
                refused += 1  # the swap was seen: a failed mount, retried by the kubelet
            if os.listdir(node.outside) != ["canary"]:
                break
    finally:
        after = node.snapshot()
        node.repair(before, after)
        module_runtime.remove_sandbox(sandbox)
        manager.teardown(uid)
    assert node.differences(before, after) == [], f"after {attempt + 1} subPaths"
