"""Resolving a path inside a root without leaving it, whatever symlinks and '..' say.

secure_join(root, path) walks path one component at a time below root: '..' stops at root,
a symlink is read and its target resolved again below root (an absolute target restarts at
root), so the result always names something under root as seen at resolution time. Callers
that mount onto the result open it with O_PATH and check the opened file's real path again
(open_beneath), which closes the window in which a running container could swap a
component for a symlink between resolution and use.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINKS = 255


def secure_join(root: str, unsafe: str) -> str:
    root = os.path.abspath(root)
    pending = [p for p in unsafe.split("/") if p not in ("", ".")]
    pending.reverse()
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop()
        if part in ("", "."):
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            info = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            resolved.append(part)  # nothing there (yet): no symlink to follow
            continue
        if not stat.S_ISLNK(info.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"too many symlinks resolving {unsafe!r} in {root}")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))
    return os.path.join(root, *resolved)


def is_beneath(root: str, path: str) -> bool:
    root = os.path.abspath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def open_beneath(root: str, path: str, *, flags: int = 0) -> int:
    """An O_PATH descriptor for path, refused unless it really lies under root."""
    fd = os.open(path, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC | flags)
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, f"{path} became a symlink while it was being resolved")
    real = os.readlink(f"/proc/self/fd/{fd}")
    if not is_beneath(root, real):
        os.close(fd)
        raise OSError(errno.EXDEV, f"{path} resolves to {real}, outside {root}")
    return fd


def make_dirs_beneath(root: str, path: str, mode: int = 0o755) -> None:
    """mkdir -p for a path already resolved by secure_join (no symlinks in it)."""
    relative = os.path.relpath(path, root)
    if relative == ".":
        return
    current = root
    for part in relative.split("/"):
        current = os.path.join(current, part)
        try:
            os.mkdir(current, mode)
        except FileExistsError:
            if os.path.islink(current) or not os.path.isdir(current):
                raise OSError(errno.ENOTDIR, f"{current} exists and is not a directory") from None


def ensure_beneath(root: str, unsafe: str, *, directory: bool) -> str:
    """Resolve unsafe under root and create it (a directory, or an empty file) if missing."""
    path = secure_join(root, unsafe)
    if directory:
        make_dirs_beneath(root, path)
        return path
    make_dirs_beneath(root, os.path.dirname(path))
    if not os.path.lexists(path):
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        os.close(fd)
    return path


def check_sub_path(sub_path: str, *, where: str) -> str | None:
    """Why sub_path is refused (absolute or with '..'), or None when it is acceptable."""
    if sub_path.startswith("/"):
        return f"{where}: subPath {sub_path!r} must be a relative path"
    if ".." in sub_path.split("/"):
        return f"{where}: subPath {sub_path!r} must not contain '..'"
    return None
