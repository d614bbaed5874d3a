"""Seccomp for containers: the RuntimeDefault profile, and loading it through libseccomp.

Profiles a container may name (ContainerConfig.security.seccomp_profile):
- None or "RuntimeDefault": the filter below. kubelite filters by default, where Kubernetes
  leaves a container Unconfined unless its Pod asks; a privileged container is never
  filtered, whatever it names (as container runtimes do).
- "Unconfined": no filter.
- "localhost/<file>" (a Localhost profile): refused at create time, this runtime has no
  profile files.

RuntimeDefault refuses, with EPERM, the system calls that container runtimes keep from
containers: they reach kernel state that no namespace isolates (the clock, keyrings, kernel
modules, the running kernel), administer the node (mount, swap, quotas, reboot), or open
ways round the other walls (new user namespaces, file handles, other processes' memory).
Like Docker's and containerd's default profiles it follows capabilities: a group that some
capability unlocks stays open when the container holds it (a Pod that adds SYS_TIME may set
the clock); groups with no such capability stay closed whatever the container holds.

The profile is a deny list over an allowing default, where the runtimes ship an allow
list: it is short enough to read and test call by call, and a program that uses any
ordinary system call keeps working. The price: a system call added to the kernel after
this list was written is allowed until it is listed here.

Arguments are inspected for three calls: clone and unshare are refused only when they ask
for a new namespace, and personality only beyond Linux, 32-bit Linux and the query
(0xffffffff). libseccomp refuses two comparisons of one argument in one rule, so a value
set is written as several single-comparison rules (rules of one call are alternatives).
clone3 passes its flags in memory a filter cannot read: it fails with ENOSYS, which makes
the C library fall back to clone, whose flags the filter sees.

The filter covers the native architecture and its 32-bit companions (i386 and x32 on
x86_64, arm on aarch64): a 64-bit process can make 32-bit system calls, and a filter that
did not know them would let them by. Loading needs either no_new_privs or CAP_SYS_ADMIN in
the calling process; launch.py orders it so (libseccomp is told not to set no_new_privs on
its own, which would silently drop allowPrivilegeEscalation).

libseccomp's own Python bindings are used, not hand-written BPF. Debian installs them
(python3-seccomp) for its own python3; the venv's interpreter is another build of the same
CPython minor version, so when `import seccomp` fails the extension is loaded from
Debian's file, if its ABI tag is one this interpreter accepts. This happens at import time,
in the fork server, before any container changes its root.
"""

from __future__ import annotations

import dataclasses
import errno
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

RUNTIME_DEFAULT = "RuntimeDefault"
UNCONFINED = "Unconfined"
LOCALHOST_PREFIX = "localhost/"
DEBIAN_BINDINGS_DIR = Path("/usr/lib/python3/dist-packages")

# Namespace flags of clone(2) and unshare(2). CLONE_NEWTIME shares its bit with clone's
# exit-signal byte, so it is checked for unshare only.
CLONE_NAMESPACE_FLAGS = (
    0x00020000,  # CLONE_NEWNS
    0x02000000,  # CLONE_NEWCGROUP
    0x04000000,  # CLONE_NEWUTS
    0x08000000,  # CLONE_NEWIPC
    0x10000000,  # CLONE_NEWUSER
    0x20000000,  # CLONE_NEWPID
    0x40000000,  # CLONE_NEWNET
)
CLONE_NEWTIME = 0x00000080
# personality(2) values a container may set: PER_LINUX, PER_LINUX32, each with UNAME26.
PERSONALITY_ALLOWED_BITS = (1 << 3) | (1 << 17)
PERSONALITY_QUERY_BIT = 1 << 31  # set only in the query 0xffffffff among allowed values


@dataclasses.dataclass(frozen=True)
class ArgMatch:
    """Matches when (args[index] & mask) == value."""

    index: int
    mask: int
    value: int


@dataclasses.dataclass(frozen=True)
class Refusal:
    """One rule of the filter: `syscall` fails with `errno` (when `arg` matches, if set)."""

    syscall: str
    errno: int = errno.EPERM
    arg: ArgMatch | None = None


@dataclasses.dataclass(frozen=True)
class Group:
    """Refusals with one reason; any capability of `unlocked_by` held lifts them all."""

    reason: str
    unlocked_by: frozenset[str]
    refusals: tuple[Refusal, ...]


def _plain(*names: str) -> tuple[Refusal, ...]:
    return tuple(Refusal(name) for name in names)


def _clone_flags_index() -> int:
    # s390 passes clone's flags second; every other architecture first.
    return 1 if os.uname().machine.startswith("s390") else 0


def _namespace_refusals() -> tuple[Refusal, ...]:
    index = _clone_flags_index()
    clone = tuple(
        Refusal("clone", arg=ArgMatch(index, flag, flag)) for flag in CLONE_NAMESPACE_FLAGS
    )
    unshare = tuple(
        Refusal("unshare", arg=ArgMatch(0, flag, flag))
        for flag in (*CLONE_NAMESPACE_FLAGS, CLONE_NEWTIME)
    )
    return clone + unshare + (Refusal("clone3", errno=errno.ENOSYS), Refusal("setns"))


def _personality_refusals() -> tuple[Refusal, ...]:
    """Everything but 0, 8, 0x20000, 0x20008 and the query 0xffffffff, in single-comparison
    rules: a low bit outside the allowed ones set while bit 31 is clear, or bit 31 set while
    any low bit is clear (only the query has bit 31). The kernel reads an unsigned int, so the
    upper half of the register is masked off."""
    top = PERSONALITY_QUERY_BIT
    low_bits = [1 << b for b in range(31)]
    stray = [
        Refusal("personality", arg=ArgMatch(0, bit | top, bit))
        for bit in low_bits
        if not bit & PERSONALITY_ALLOWED_BITS
    ]
    not_query = [Refusal("personality", arg=ArgMatch(0, bit | top, top)) for bit in low_bits]
    return tuple(stray + not_query)


def _groups(kernel: tuple[int, int]) -> tuple[Group, ...]:
    ptrace = ("ptrace",) if kernel < (4, 8) else ()  # older kernels skip seccomp after ptrace
    never = frozenset[str]()
    return (
        Group(
            "the kernel's keyrings are not namespaced",
            never,
            _plain("keyctl", "add_key", "request_key"),
        ),
        Group(
            "a container must not replace the node's kernel",
            never,
            _plain("kexec_load", "kexec_file_load"),
        ),
        Group(
            "userfaultfd stalls the kernel mid-copy, an exploit aid", never, _plain("userfaultfd")
        ),
        Group(
            "obsolete interfaces nothing in a container needs",
            never,
            _plain(
                "create_module",
                "get_kernel_syms",
                "query_module",
                "nfsservctl",
                "uselib",
                "ustat",
                "sysfs",
                "_sysctl",
                "vm86",
                "vm86old",
            ),
        ),
        Group(
            "execution domains other than Linux are little tested", never, _personality_refusals()
        ),
        Group(
            "kernel modules are the node's",
            frozenset({"SYS_MODULE"}),
            _plain("init_module", "finit_module", "delete_module"),
        ),
        Group(
            "mounts, namespaces and node administration",
            frozenset({"SYS_ADMIN"}),
            _plain(
                "mount",
                "umount",
                "umount2",
                "pivot_root",
                "move_mount",
                "open_tree",
                "fsopen",
                "fsconfig",
                "fsmount",
                "fspick",
                "mount_setattr",
                "swapon",
                "swapoff",
                "quotactl",
                "quotactl_fd",
                "lookup_dcookie",
                "name_to_handle_at",
                "fanotify_init",
                "sethostname",
                "setdomainname",
            )
            + _namespace_refusals(),
        ),
        Group("BPF programs run in the kernel", frozenset({"SYS_ADMIN", "BPF"}), _plain("bpf")),
        Group(
            "performance counters see the whole node",
            frozenset({"SYS_ADMIN", "PERFMON"}),
            _plain("perf_event_open"),
        ),
        Group("the kernel log is the node's", frozenset({"SYS_ADMIN", "SYSLOG"}), _plain("syslog")),
        Group(
            "the clock is not namespaced",
            frozenset({"SYS_TIME"}),
            _plain("settimeofday", "stime", "clock_settime", "clock_adjtime", "adjtimex"),
        ),
        Group("rebooting is the node's", frozenset({"SYS_BOOT"}), _plain("reboot")),
        Group("process accounting is the node's", frozenset({"SYS_PACCT"}), _plain("acct")),
        Group("I/O ports reach the hardware", frozenset({"SYS_RAWIO"}), _plain("iopl", "ioperm")),
        Group(
            "reading or comparing other processes' memory and files",
            frozenset({"SYS_PTRACE"}),
            _plain(
                "kcmp",
                "process_vm_readv",
                "process_vm_writev",
                "pidfd_getfd",
                "process_madvise",
                *ptrace,
            ),
        ),
        Group(
            "file handles bypass path permissions (the classic escape to the host's root)",
            frozenset({"DAC_READ_SEARCH"}),
            _plain("open_by_handle_at"),
        ),
        Group(
            "NUMA memory policy is the node's",
            frozenset({"SYS_NICE"}),
            _plain(
                "get_mempolicy",
                "mbind",
                "set_mempolicy",
                "set_mempolicy_home_node",
                "move_pages",
                "migrate_pages",
            ),
        ),
        Group("hanging up terminals", frozenset({"SYS_TTY_CONFIG"}), _plain("vhangup")),
    )


def kernel_version() -> tuple[int, int]:
    major, minor, *_ = (os.uname().release.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def groups(kernel: tuple[int, int] | None = None) -> tuple[Group, ...]:
    """Every group of RuntimeDefault, for the running kernel unless `kernel` is given."""
    return _groups(kernel or kernel_version())


def refusals(
    capabilities: Iterable[str], *, kernel: tuple[int, int] | None = None
) -> tuple[Refusal, ...]:
    """The rules of RuntimeDefault for a container holding `capabilities` (names without
    CAP_, as in caps.py)."""
    held = frozenset(capabilities)
    out: list[Refusal] = []
    for group in groups(kernel):
        if not group.unlocked_by & held:
            out.extend(group.refusals)
    return tuple(out)


def check_profile(profile: str | None) -> str | None:
    """Why a container cannot run with `profile`, or None when it can."""
    if profile in (None, RUNTIME_DEFAULT, UNCONFINED):
        if profile != UNCONFINED and BINDINGS is None:
            return f"seccomp profile {RUNTIME_DEFAULT} cannot be loaded: {BINDINGS_PROBLEM}"
        return None
    if profile.startswith(LOCALHOST_PREFIX):
        return (
            f"seccomp profile {profile!r}: Localhost profiles are not supported by this "
            f"runtime (use {RUNTIME_DEFAULT} or {UNCONFINED})"
        )
    return (
        f"unknown seccomp profile {profile!r} (expected {RUNTIME_DEFAULT}, {UNCONFINED} "
        f"or {LOCALHOST_PREFIX}<file>)"
    )


def resolve(profile: str | None, *, privileged: bool) -> str:
    """The profile a container really gets: privileged ones and Unconfined get none."""
    if privileged or profile == UNCONFINED:
        return UNCONFINED
    return RUNTIME_DEFAULT


def load(capabilities: Iterable[str]) -> None:
    """Install RuntimeDefault in the calling process (and the children it will have).

    The caller has no_new_privs set or holds CAP_SYS_ADMIN. Raises OSError naming the cause.
    """
    lib = _require_bindings()
    try:
        flt = lib.SyscallFilter(lib.ALLOW)
        flt.set_attr(lib.Attr.CTL_NNP, 0)
        for arch in _companion_arches(lib):
            flt.add_arch(arch)
        for rule in refusals(capabilities):
            _add(lib, flt, rule)
        flt.load()
    except (RuntimeError, ValueError) as exc:
        raise OSError(f"failed to load seccomp profile {RUNTIME_DEFAULT}: {exc}") from exc


def oci_section(capabilities: Iterable[str]) -> dict[str, Any]:
    """RuntimeDefault as the `linux.seccomp` object of an OCI runtime config (for runc)."""
    entries: list[dict[str, Any]] = []
    for rule in refusals(capabilities):
        entry: dict[str, Any] = {
            "names": [rule.syscall],
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": rule.errno,
        }
        if rule.arg is not None:
            entry["args"] = [
                {
                    "index": rule.arg.index,
                    "value": rule.arg.mask,
                    "valueTwo": rule.arg.value,
                    "op": "SCMP_CMP_MASKED_EQ",
                }
            ]
        entries.append(entry)
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": _oci_arches(), "syscalls": entries}


def _add(lib: Any, flt: Any, rule: Refusal) -> None:
    try:
        lib.resolve_syscall(lib.Arch.NATIVE, rule.syscall)
    except ValueError:
        return  # a call this libseccomp does not know cannot be named in a filter
    args = (
        []
        if rule.arg is None
        else [lib.Arg(rule.arg.index, lib.MASKED_EQ, rule.arg.mask, rule.arg.value)]
    )
    flt.add_rule(lib.ERRNO(rule.errno), rule.syscall, *args)


def _companion_arches(lib: Any) -> list[Any]:
    # NB: system_arch() answers the audit token unsigned (0xc000003e), Arch.X86_64 holds it
    # as a signed int: compared as they come they never match, the companions were left out,
    # and every 32-bit call then met the filter's bad-architecture action (kill).
    native = _u32(lib.system_arch())
    if native == _u32(lib.Arch.X86_64):
        return [lib.Arch.X86, lib.Arch.X32]
    if native == _u32(lib.Arch.AARCH64):
        return [lib.Arch.ARM]
    return []


def _u32(token: int) -> int:
    return token & 0xFFFFFFFF


def _oci_arches() -> list[str]:
    machine = os.uname().machine
    if machine == "x86_64":
        return ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"]
    if machine == "aarch64":
        return ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"]
    return []  # runc then filters the native architecture only


def _require_bindings() -> Any:
    if BINDINGS is None:
        raise OSError(f"seccomp profile {RUNTIME_DEFAULT} cannot be loaded: {BINDINGS_PROBLEM}")
    return BINDINGS


def _load_bindings() -> tuple[Any | None, str]:
    try:
        import seccomp as lib  # libseccomp's bindings, where this interpreter has them

        return lib, ""
    except ImportError:
        pass
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        path = DEBIAN_BINDINGS_DIR / f"seccomp{suffix}"
        if path.is_file():
            return _load_extension(path)
    return None, (
        "libseccomp's Python bindings are not installed: install the Debian package "
        f"python3-seccomp (built for Python {sys.version_info.major}.{sys.version_info.minor})"
    )


def _load_extension(path: Path) -> tuple[Any | None, str]:
    loader = importlib.machinery.ExtensionFileLoader("seccomp", str(path))
    spec = importlib.util.spec_from_file_location("seccomp", str(path), loader=loader)
    if spec is None:
        return None, f"cannot load libseccomp's Python bindings from {path}"
    try:
        module = importlib.util.module_from_spec(spec)
        loader.exec_module(module)
    except ImportError as exc:
        return None, f"cannot load libseccomp's Python bindings from {path}: {exc}"
    return module, ""


BINDINGS, BINDINGS_PROBLEM = _load_bindings()
