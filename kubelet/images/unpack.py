"""Unpack one image layer tar into a directory in overlayfs form, safely.

The layer directory is what the runtime stacks as an overlayfs lower dir, so
OCI whiteouts become overlayfs whiteouts as they are written:
- `.wh.<name>` becomes a character device 0/0 called `<name>`;
- `.wh..wh..opq` becomes the xattr `trusted.overlay.opaque=y` on its directory;
- a directory that an entry of the same layer also whites out becomes opaque,
  since in overlayfs a directory merges with the one below unless it is.
Other `.wh..wh.*` names (aufs bookkeeping) are dropped.

Safety (this runs as root on content from the network):
- entry names with `..` or a leading `/` are refused;
- every path is resolved from the layer root one component at a time with
  O_NOFOLLOW, so no symlink is ever followed while writing: an entry under a
  symlink is refused, whatever the symlink points at;
- a hardlink's target must be an earlier non-directory entry of the same
  layer, resolved the same way;
- xattrs in the `trusted.overlay.` namespace are never taken from a tar,
  since they would steer overlayfs (redirects, metacopy) from inside an image.
Symlinks themselves are written as they are (absolute targets are normal in
images and mean the container's root); they are only dangerous if followed.

Everything else is preserved: modes including setuid/setgid/sticky,
ownership, mtimes, device nodes, fifos, hardlinks, xattrs (SCHILY.xattr and
LIBARCHIVE.xattr PAX records). The sha256 of the uncompressed stream is
computed while unpacking and must equal the diff id the image config names.
Unpacking goes to a temporary sibling directory that is renamed into place
only when complete, so the destination either does not exist or is whole.
"""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import os
import shutil
import stat
import tarfile
import threading
import urllib.parse
import zlib
from pathlib import Path
from typing import IO, Any

WHITEOUT_PREFIX = ".wh."
OPAQUE_MARKER = ".wh..wh..opq"
OPAQUE_XATTR = "trusted.overlay.opaque"
_GZIP_MAGIC = b"\x1f\x8b"
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_CHUNK = 1 << 20


class LayerError(Exception):
    """A layer that cannot be unpacked; the message names the layer and the entry."""


def unpack_layer(blob: Path, dest: Path, *, diff_id: str = "", what: str = "layer") -> str:
    """Unpack the (gzip or plain) tar at `blob` into the new directory `dest`.

    Returns the diff id (sha256 of the uncompressed tar); raises LayerError if
    it differs from `diff_id` when one is given, or for any unsafe entry. If
    `dest` appears meanwhile (another unpack won), this result is discarded.
    """
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.unpacking")
    shutil.rmtree(temp, ignore_errors=True)
    temp.mkdir(mode=0o755)
    os.chmod(temp, 0o755)
    try:
        actual = _extract(blob, temp, what)
        if diff_id and actual != diff_id:
            raise LayerError(f"{what}: diff id mismatch: expected {diff_id}, got {actual}")
        try:
            os.rename(temp, dest)
        except OSError as exc:
            if exc.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                raise
        return actual
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def _extract(blob: Path, root: Path, what: str) -> str:
    with open(blob, "rb") as raw:
        magic = raw.read(4)
        raw.seek(0)
        if magic.startswith(_ZSTD_MAGIC):
            raise LayerError(f"{what}: zstd-compressed layers are not supported")
        stream: Any = gzip.GzipFile(fileobj=raw) if magic.startswith(_GZIP_MAGIC) else raw
        reader = _HashingReader(stream)
        try:
            with tarfile.open(fileobj=reader, mode="r|") as archive:  # type: ignore[call-overload]
                _Extractor(root, what).run(archive)
            reader.drain()
        except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise LayerError(f"{what}: not a valid tar stream: {exc}") from None
    return "sha256:" + reader.hasher.hexdigest()


class _HashingReader:
    """A read-only stream that hashes everything read through it."""

    def __init__(self, inner: IO[bytes]) -> None:
        self._inner = inner
        self.hasher = hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._inner.read(size)
        self.hasher.update(data)
        return data

    def drain(self) -> None:
        # A tar may carry padding after its end-of-archive blocks; it is part of the diff id.
        while self.read(_CHUNK):
            pass


def _entry_parts(name: str) -> tuple[str, ...] | str:
    """The path components of a tar entry name, or why the name is refused."""
    if name.startswith("/"):
        return "absolute path"
    parts = tuple(p for p in name.split("/") if p not in ("", "."))
    if ".." in parts:
        return "path contains '..'"
    return parts


class _Extractor:
    def __init__(self, root: Path, what: str) -> None:
        self._root = root
        self._what = what
        self._as_root = os.geteuid() == 0
        # Entries of this layer that are whiteouts, and directories created by it.
        self._whiteouts: set[tuple[str, ...]] = set()
        self._dir_times: list[tuple[tuple[str, ...], float]] = []

    def run(self, archive: tarfile.TarFile) -> None:
        for member in archive:
            self._entry(member, archive)
        self._apply_dir_times()

    def _fail(self, member: tarfile.TarInfo | str, why: str) -> LayerError:
        name = member if isinstance(member, str) else member.name
        return LayerError(f"{self._what}: entry {name!r}: {why}")

    def _entry(self, member: tarfile.TarInfo, archive: tarfile.TarFile) -> None:
        parts = _entry_parts(member.name)
        if isinstance(parts, str):
            raise self._fail(member, parts)
        if not parts:
            self._root_entry(member)
            return
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(member, parts)
            return
        parent = self._open_parent(member, parts)
        try:
            self._write(member, archive, parent, base, parts)
        except OSError as exc:
            raise self._fail(member, f"cannot write it: {exc.strerror or exc}") from None
        finally:
            os.close(parent)

    def _write(
        self,
        member: tarfile.TarInfo,
        archive: tarfile.TarFile,
        parent: int,
        base: str,
        parts: tuple[str, ...],
    ) -> None:
        if member.isdir():
            self._directory(member, parent, base, parts)
        elif member.isreg():
            self._regular(member, archive, parent, base)
        elif member.issym():
            self._symlink(member, parent, base)
        elif member.islnk():
            self._hardlink(member, parent, base)
        elif member.ischr() or member.isblk() or member.isfifo():
            self._special(member, parent, base)
        else:
            raise self._fail(member, f"unsupported tar entry type {member.type!r}")

    # ---- path resolution

    def _open_parent(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> int:
        """An fd of the entry's parent directory, creating missing ones, following nothing."""
        fd = os.open(self._root, _DIR_FLAGS)
        try:
            for component in parts[:-1]:
                fd = self._descend(member, fd, component, create=True)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _descend(
        self, member: tarfile.TarInfo | str, fd: int, component: str, *, create: bool
    ) -> int:
        try:
            child = os.open(component, _DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise self._fail(member, f"{component!r} does not exist in the layer") from None
            os.mkdir(component, 0o755, dir_fd=fd)
            child = os.open(component, _DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                raise
            kind = "a symlink" if _is_symlink(fd, component) else "not a directory"
            raise self._fail(member, f"parent {component!r} is {kind}") from None
        os.close(fd)
        return child

    def _clear(self, parent: int, base: str, *, keep_dir: bool = False) -> os.stat_result | None:
        """Remove what an earlier entry left at `base`; keep a directory if asked."""
        try:
            st = os.stat(base, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            return None
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return st
            shutil.rmtree(base, dir_fd=parent)
        else:
            os.unlink(base, dir_fd=parent)
        return None

    # ---- entry kinds

    def _root_entry(self, member: tarfile.TarInfo) -> None:
        if not member.isdir():
            raise self._fail(member, "the layer root must be a directory")
        fd = os.open(self._root, _DIR_FLAGS)
        try:
            self._metadata(member, fd)
        finally:
            os.close(fd)
        self._dir_times.append(((), member.mtime))

    def _directory(
        self, member: tarfile.TarInfo, parent: int, base: str, parts: tuple[str, ...]
    ) -> None:
        if self._clear(parent, base, keep_dir=True) is None:
            os.mkdir(base, 0o700, dir_fd=parent)
        fd = os.open(base, _DIR_FLAGS, dir_fd=parent)
        try:
            self._metadata(member, fd)
            if parts in self._whiteouts:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
        finally:
            os.close(fd)
        self._dir_times.append((parts, member.mtime))

    def _regular(
        self, member: tarfile.TarInfo, archive: tarfile.TarFile, parent: int, base: str
    ) -> None:
        self._clear(parent, base)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(base, flags, 0o600, dir_fd=parent)
        try:
            source = archive.extractfile(member)
            if source is not None:
                with open(fd, "wb", closefd=False) as out:
                    shutil.copyfileobj(source, out, _CHUNK)
            self._metadata(member, fd)
            _set_times(fd, member.mtime)
        finally:
            os.close(fd)

    def _symlink(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        self._clear(parent, base)
        os.symlink(member.linkname, base, dir_fd=parent)
        if self._as_root:
            os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
        for name, value in self._xattrs(member):
            # Linux allows only trusted.* and security.* xattrs on a symlink.
            if name.startswith(("trusted.", "security.")):
                os.setxattr(f"/proc/self/fd/{parent}/{base}", name, value, follow_symlinks=False)
        _set_times(base, member.mtime, dir_fd=parent)

    def _hardlink(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        target = _entry_parts(member.linkname)
        if isinstance(target, str) or not target:
            why = target if isinstance(target, str) else "empty target"
            raise self._fail(member, f"hardlink target {member.linkname!r}: {why}")
        target_parent = os.open(self._root, _DIR_FLAGS)
        try:
            for component in target[:-1]:
                target_parent = self._descend(member, target_parent, component, create=False)
            st = os.stat(target[-1], dir_fd=target_parent, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise self._fail(member, f"hardlink target {member.linkname!r} is a directory")
            self._clear(parent, base)
            os.link(
                target[-1],
                base,
                src_dir_fd=target_parent,
                dst_dir_fd=parent,
                follow_symlinks=False,
            )
        except FileNotFoundError:
            raise self._fail(
                member, f"hardlink target {member.linkname!r} is not in the layer"
            ) from None
        finally:
            os.close(target_parent)

    def _special(self, member: tarfile.TarInfo, parent: int, base: str) -> None:
        self._clear(parent, base)
        if member.isfifo():
            os.mkfifo(base, 0o600, dir_fd=parent)
        else:
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK
            device = os.makedev(member.devmajor, member.devminor)
            os.mknod(base, kind | 0o600, device, dir_fd=parent)
        fd = os.open(base, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
        try:
            # fchmod and fchown refuse an O_PATH fd; its /proc link names the node itself.
            path = f"/proc/self/fd/{fd}"
            if self._as_root:
                os.chown(path, member.uid, member.gid)
            os.chmod(path, member.mode & 0o7777)
            for name, value in self._xattrs(member):
                os.setxattr(path, name, value)
            _set_times(path, member.mtime)
        finally:
            os.close(fd)

    def _whiteout(self, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        base = parts[-1]
        if base.startswith(WHITEOUT_PREFIX + WHITEOUT_PREFIX) and base != OPAQUE_MARKER:
            return
        parent = self._open_parent(member, parts)
        try:
            if base == OPAQUE_MARKER:
                os.setxattr(parent, OPAQUE_XATTR, b"y")
                return
            hidden = base[len(WHITEOUT_PREFIX) :]
            if hidden in ("", ".", ".."):
                raise self._fail(member, "whiteout of nothing")
            self._whiteouts.add((*parts[:-1], hidden))
            self._whiteout_node(parent, hidden, member)
        except OSError as exc:
            raise self._fail(member, f"cannot write the whiteout: {exc.strerror or exc}") from None
        finally:
            os.close(parent)

    def _whiteout_node(self, parent: int, hidden: str, member: tarfile.TarInfo) -> None:
        try:
            st = os.stat(hidden, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            os.mknod(hidden, stat.S_IFCHR, os.makedev(0, 0), dir_fd=parent)
            if self._as_root:
                os.chown(hidden, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            return
        # The same layer also has an entry of that name: it already hides what is
        # below, except that a directory must be made opaque to stop the merge.
        if stat.S_ISDIR(st.st_mode):
            fd = os.open(hidden, _DIR_FLAGS, dir_fd=parent)
            try:
                os.setxattr(fd, OPAQUE_XATTR, b"y")
            finally:
                os.close(fd)

    # ---- metadata

    def _metadata(self, member: tarfile.TarInfo, fd: int) -> None:
        # chown before chmod: changing the owner clears setuid and setgid bits.
        if self._as_root:
            os.fchown(fd, member.uid, member.gid)
        os.fchmod(fd, member.mode & 0o7777)
        for name, value in self._xattrs(member):
            os.setxattr(fd, name, value)

    def _xattrs(self, member: tarfile.TarInfo) -> list[tuple[str, bytes]]:
        result = []
        for key, value in member.pax_headers.items():
            decoded = _pax_xattr(key, value)
            if decoded is None or decoded[0].startswith("trusted.overlay."):
                continue
            result.append(decoded)
        return result

    def _apply_dir_times(self) -> None:
        # Deepest first: setting a directory's time must come after its children are done.
        for parts, mtime in sorted(self._dir_times, key=lambda item: -len(item[0])):
            try:
                fd = os.open(self._root, _DIR_FLAGS)
                for component in parts:
                    child = os.open(component, _DIR_FLAGS, dir_fd=fd)
                    os.close(fd)
                    fd = child
            except OSError:
                continue  # replaced by a later entry: its own time stands
            try:
                _set_times(fd, mtime)
            finally:
                os.close(fd)


def _pax_xattr(key: str, value: str) -> tuple[str, bytes] | None:
    if key.startswith("SCHILY.xattr."):
        # tarfile decodes PAX values as UTF-8 with surrogateescape; this undoes it.
        return key.removeprefix("SCHILY.xattr."), value.encode("utf-8", "surrogateescape")
    if key.startswith("LIBARCHIVE.xattr."):
        name = urllib.parse.unquote(key.removeprefix("LIBARCHIVE.xattr."))
        padded = value + "=" * (-len(value) % 4)
        return name, base64.b64decode(padded)
    return None


def _set_times(target: int | str, mtime: float, *, dir_fd: int | None = None) -> None:
    ns = int(mtime * 1_000_000_000)
    try:
        if isinstance(target, int):
            os.utime(target, ns=(ns, ns))
        else:
            os.utime(target, ns=(ns, ns), dir_fd=dir_fd, follow_symlinks=dir_fd is None)
    except (OverflowError, ValueError):
        pass  # a time the filesystem cannot hold: the file keeps the unpack time


def _is_symlink(fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def disk_usage(path: Path) -> int:
    """Bytes a tree occupies on disk (allocated blocks), counting each inode once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [str(path)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                st = entry.stat(follow_symlinks=False)
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total + os.lstat(path).st_blocks * 512


def remove_tree(path: Path) -> None:
    """Remove a layer directory (whiteout devices and all); a missing one is fine."""
    shutil.rmtree(path, ignore_errors=False, onerror=_ignore_missing)


def _ignore_missing(func: Any, path: str, exc_info: Any) -> None:
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]
