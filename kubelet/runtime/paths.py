"""Resolving a path inside a root without leaving it, whatever symlinks and '..' say.

secure_join(root, path) walks path one component at a time below root: '..' stops at root,
a symlink is read and its target resolved again below root (an absolute target restarts at
root), so the result always names something under root as seen at resolution time. Callers
that mount onto the result open it with O_PATH and check the opened file's real path again
(open_beneath), which closes the window in which a running container could swap a
component for a symlink between resolution and use. Directories and files that are missing
are made the same way (ensure_beneath): one component at a time from the descriptor of the
directory above, never by path name, so a component swapped for a symlink meanwhile is
refused rather than followed out to the node.
"""

from __future__ import annotations

import errno
import os
import stat

MAX_SYMLINKS = 255
_DIR_BENEATH = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


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
    """mkdir -p for a path already resolved by secure_join, never leaving root."""
    os.close(_open_dirs_beneath(root, path, mode))


def _open_dirs_beneath(root: str, path: str, mode: int) -> int:
    """Make every directory from root down to path and return an O_PATH descriptor of the last.

    NB: path was resolved by secure_join, but a running container may since have swapped one
    of its components for a symlink (it owns the volume). Each step is therefore taken from
    the descriptor of the directory above, and opened with O_NOFOLLOW: a component that is
    now a symlink is refused, where a walk by path name would follow it and create
    directories wherever it points on the node.
    """
    relative = os.path.relpath(path, root)
    if relative == ".." or relative.startswith("../"):
        raise OSError(errno.EXDEV, f"{path} is not below {root}")
    fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    if relative == ".":
        return fd
    current = root
    try:
        for part in relative.split("/"):
            current = os.path.join(current, part)
            try:
                os.mkdir(part, mode, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                below = os.open(part, _DIR_BENEATH, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                raise OSError(errno.ENOTDIR, f"{current} exists and is not a directory") from None
            os.close(fd)
            fd = below
    except BaseException:
        os.close(fd)
        raise
    return fd


def ensure_beneath(root: str, unsafe: str, *, directory: bool, mode: int = 0o755) -> str:
    """Resolve unsafe under root and create it (directories of `mode`, or an empty file) if
    missing. What exists already is left as it is, whatever its type."""
    path = secure_join(root, unsafe)
    if os.path.lexists(path):
        return path
    if directory:
        make_dirs_beneath(root, path, mode)
        return path
    parent = _open_dirs_beneath(root, os.path.dirname(path), mode)
    try:
        flags = os.O_CREAT | os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(os.path.basename(path), flags, 0o644, dir_fd=parent))
    finally:
        os.close(parent)
    return path


def check_sub_path(sub_path: str, *, where: str) -> str | None:
    """Why sub_path is refused (absolute or with '..'), or None when it is acceptable."""
    if sub_path.startswith("/"):
        return f"{where}: subPath {sub_path!r} must be a relative path"
    if ".." in sub_path.split("/"):
        return f"{where}: subPath {sub_path!r} must not contain '..'"
    return None
