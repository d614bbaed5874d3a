"""The few mount operations the kubelet itself does on the node: tmpfs for emptyDir
medium Memory, and unmounting what is left under a Pod's directory before removing it.

Bind mounts of volumes into containers are the runtime's (inside each container's mount
namespace); the kubelet mounts nothing else on the host, so a Pod directory with no tmpfs
under it has no mounts to undo.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

MS_NOSUID = 0x2
MS_NODEV = 0x4
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_tmpfs(target: Path, *, size_bytes: int | None, mode: int = 0o777) -> None:
    options = f"mode={mode:o}"
    if size_bytes:
        options += f",size={size_bytes}"
    result = _libc.mount(
        b"tmpfs", os.fsencode(target), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()
    )
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def unmount(target: str | Path) -> None:
    if _libc.umount2(os.fsencode(str(target)), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040)."""
    out, i = [], 0
    while i < len(field):
        digits = field[i + 1 : i + 4]
        if field[i] == "\\" and len(digits) == 3 and digits.isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mountpoints_under(directory: str | Path) -> list[str]:
    """Mount points at or below directory in this mount namespace, deepest first."""
    base = os.path.realpath(directory)
    prefix = base.rstrip("/") + "/"
    points = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = _unescape(line.split()[4])
            if point == base or point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def is_mountpoint(path: str | Path) -> bool:
    return os.path.realpath(path) in mountpoints_under(path)


def unmount_all_under(directory: str | Path) -> None:
    for point in mountpoints_under(directory):
        try:
            unmount(point)
        except OSError:
            if os.path.exists(point) and point in mountpoints_under(point):
                raise
