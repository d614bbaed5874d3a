"""Thin ctypes bindings for the Linux system calls the runtime needs and Python 3.11 lacks.

Every wrapper raises OSError with errno and a message naming the call and its arguments, so
that a failure deep inside a container's set-up reaches the user as "mount overlay on
/var/lib/.../rootfs: Invalid argument" rather than a bare errno. Only x86_64 and aarch64
system call numbers are listed; the module refuses to load on other machines rather than
calling the wrong system call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)

# Namespace flags (linux/sched.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

# Mount flags (linux/mount.h).
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_SHARED = 1 << 20
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2
UMOUNT_NOFOLLOW = 8

# prctl options (linux/prctl.h).
PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NAME = 15
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SYSCALLS = {
    "x86_64": {"pivot_root": 155, "setns": 308, "unshare": 272, "capget": 125, "capset": 126},
    "aarch64": {"pivot_root": 41, "setns": 268, "unshare": 97, "capget": 90, "capset": 91},
}
try:
    _NR = _SYSCALLS[platform.machine()]
except KeyError as exc:  # pragma: no cover - other machines are not supported
    raise ImportError(f"kubelet.runtime supports x86_64 and aarch64, not {exc}") from None


def _check(result: int, what: str) -> int:
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def _b(value: str | bytes | None) -> bytes | None:
    if value is None or isinstance(value, bytes):
        return value
    return os.fsencode(value)


def unshare(flags: int) -> None:
    _check(_libc.syscall(_NR["unshare"], ctypes.c_int(flags)), f"unshare(0x{flags:x})")


def setns(fd: int, nstype: int = 0) -> None:
    _check(_libc.syscall(_NR["setns"], ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(
    source: str | bytes | None,
    target: str | bytes,
    fstype: str | bytes | None,
    flags: int = 0,
    data: str | bytes | None = None,
) -> None:
    result = _libc.mount(_b(source), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    if result < 0:
        err = ctypes.get_errno()
        name = fstype or source or "mount"
        if isinstance(name, bytes):
            name = name.decode(errors="replace")
        tgt = target.decode(errors="replace") if isinstance(target, bytes) else target
        raise OSError(err, f"mount {name} on {tgt} (flags 0x{flags:x}): {os.strerror(err)}")


def umount2(target: str | bytes, flags: int = 0) -> None:
    result = _libc.umount2(_b(target), ctypes.c_int(flags))
    if result < 0:
        err = ctypes.get_errno()
        tgt = target.decode(errors="replace") if isinstance(target, bytes) else target
        raise OSError(err, f"umount {tgt}: {os.strerror(err)}")


def pivot_root(new_root: str, put_old: str) -> None:
    result = _libc.syscall(_NR["pivot_root"], _b(new_root), _b(put_old))
    _check(result, f"pivot_root({new_root}, {put_old})")


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    args = [ctypes.c_ulong(a) for a in (arg2, arg3, arg4, arg5)]
    return _check(_libc.prctl(ctypes.c_int(option), *args), f"prctl({option}, {arg2})")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(_libc.sethostname(raw, ctypes.c_size_t(len(raw))), f"sethostname({name})")


def setdomainname(name: str) -> None:
    raw = name.encode()
    _check(_libc.setdomainname(raw, ctypes.c_size_t(len(raw))), f"setdomainname({name})")


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAP_V3 = 0x20080522


def capget() -> tuple[int, int, int]:
    """(effective, permitted, inheritable) of the calling thread as 64-bit masks."""
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    _check(_libc.syscall(_NR["capget"], ctypes.byref(header), data), "capget")
    return tuple(  # type: ignore[return-value]
        getattr(data[0], f) | (getattr(data[1], f) << 32)
        for f in ("effective", "permitted", "inheritable")
    )


def capset(effective: int, permitted: int, inheritable: int) -> None:
    header = _CapHeader(_CAP_V3, 0)
    data = (_CapData * 2)()
    for i in (0, 1):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_libc.syscall(_NR["capset"], ctypes.byref(header), data), "capset")


# The new mount API (Linux 5.2+); these numbers are the same on every architecture.
_NR_MOVE_MOUNT, _NR_FSOPEN, _NR_FSCONFIG, _NR_FSMOUNT = 429, 430, 431, 432
FSOPEN_CLOEXEC = 1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 1
MOVE_MOUNT_F_EMPTY_PATH = 4
AT_FDCWD = -100


def fsopen(fstype: str) -> int:
    return _check(_libc.syscall(_NR_FSOPEN, _b(fstype), FSOPEN_CLOEXEC), f"fsopen({fstype})")


def fsconfig_string(fd: int, key: str, value: str) -> None:
    result = _libc.syscall(_NR_FSCONFIG, fd, FSCONFIG_SET_STRING, _b(key), _b(value), 0)
    _check(result, f"fsconfig {key}={value}")


def fsconfig_create(fd: int) -> None:
    _check(_libc.syscall(_NR_FSCONFIG, fd, FSCONFIG_CMD_CREATE, None, None, 0), "fsconfig create")


def fsmount(fd: int) -> int:
    return _check(_libc.syscall(_NR_FSMOUNT, fd, FSMOUNT_CLOEXEC, 0), "fsmount")


def move_mount(mount_fd: int, target: str) -> None:
    result = _libc.syscall(
        _NR_MOVE_MOUNT, mount_fd, b"", AT_FDCWD, _b(target), MOVE_MOUNT_F_EMPTY_PATH
    )
    _check(result, f"move_mount to {target}")


def set_process_name(name: str) -> None:
    """The name ps shows in its COMM column (15 bytes at most)."""
    buf = ctypes.create_string_buffer(name.encode()[:15])
    _libc.prctl(ctypes.c_int(PR_SET_NAME), buf, 0, 0, 0)
