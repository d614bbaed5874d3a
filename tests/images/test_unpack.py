"""Layer unpacking: overlayfs whiteouts under a real overlay mount, path safety, metadata."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.images.oci import Entry, gzip_bytes, layer_tar
from kubelet.images.unpack import OPAQUE_XATTR, LayerError, unpack_layer
from machinery.registry import digest_bytes

pytestmark = pytest.mark.root


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def _unpack(tmp_path: Path, name: str, tar: bytes, *, gzip: bool = False) -> Path:
    blob = _write(tmp_path, f"{name}.blob", gzip_bytes(tar) if gzip else tar)
    dest = tmp_path / "layers" / name
    dest.parent.mkdir(exist_ok=True)
    assert unpack_layer(blob, dest, diff_id=digest_bytes(tar)) == digest_bytes(tar)
    return dest


@contextlib.contextmanager
def _overlay(tmp_path: Path, lowers_bottom_first: list[Path]) -> Iterator[Path]:
    """Mount the layers with overlayfs (topmost first in lowerdir); unmount afterwards."""
    work = tmp_path / "overlay"
    for sub in ("upper", "work", "merged"):
        (work / sub).mkdir(parents=True)
    lowerdir = ":".join(str(p) for p in reversed(lowers_bottom_first))
    options = f"lowerdir={lowerdir},upperdir={work}/upper,workdir={work}/work"
    merged = work / "merged"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", options, str(merged)], check=True)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def _is_whiteout(path: Path) -> bool:
    st = os.lstat(path)
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(0, 0)


def _opaque(path: Path) -> bool:
    try:
        return os.getxattr(path, OPAQUE_XATTR, follow_symlinks=False) == b"y"
    except OSError:
        return False


LOWER = [
    Entry("etc", "dir", 0o755),
    Entry("etc/keep", data=b"keep"),
    Entry("etc/gone", data=b"gone"),
    Entry("d", "dir", 0o755),
    Entry("d/x", data=b"x"),
    Entry("d/sub", "dir", 0o755),
    Entry("d/sub/y", data=b"y"),
    Entry("other", "dir", 0o755),
    Entry("other/file", data=b"o"),
]
UPPER = [
    Entry("etc/gone", "whiteout"),
    Entry("d", "opaque"),
    Entry("d/new", data=b"new"),
    Entry("other", "whiteout"),
]


@pytest.mark.parametrize("gzip", [False, True], ids=["tar", "tar+gzip"])
def test_whiteouts_become_overlay_form_and_hide_lower_files(tmp_path: Path, gzip: bool) -> None:
    lower = _unpack(tmp_path, "lower", layer_tar(LOWER), gzip=gzip)
    upper = _unpack(tmp_path, "upper", layer_tar(UPPER), gzip=gzip)

    # On disk: overlayfs' own form, and no .wh. names left.
    assert _is_whiteout(upper / "etc/gone")
    assert _is_whiteout(upper / "other")
    assert _opaque(upper / "d") and not _opaque(lower / "d")
    assert not [p for p in upper.rglob(".wh.*")]

    with _overlay(tmp_path, [lower, upper]) as merged:
        assert sorted(os.listdir(merged)) == ["d", "etc"]
        assert sorted(os.listdir(merged / "etc")) == ["keep"]
        assert sorted(os.listdir(merged / "d")) == ["new"]
        assert (merged / "etc/keep").read_bytes() == b"keep"


def test_directory_whited_out_and_recreated_in_one_layer_is_opaque(tmp_path: Path) -> None:
    lower = _unpack(tmp_path, "lower", layer_tar(LOWER))
    # The tar lists d/ before .wh.d (sorted): the whiteout must make the new d opaque.
    upper = _unpack(
        tmp_path,
        "upper",
        layer_tar([Entry("d", "dir", 0o755), Entry("d", "whiteout"), Entry("d/f", data=b"f")]),
    )
    assert _opaque(upper / "d")
    with _overlay(tmp_path, [lower, upper]) as merged:
        assert os.listdir(merged / "d") == ["f"]


def _raw_tar(*members: tuple[tarfile.TarInfo, bytes | None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **fields: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o644
    for key, value in fields.items():
        setattr(info, key, value)
    return info


def _attacks(outside: Path) -> list[object]:
    return [
        pytest.param([(_info("../pwned"), b"x")], "'..'", id="dot-dot"),
        pytest.param([(_info("a/../../pwned"), b"x")], "'..'", id="inner-dot-dot"),
        pytest.param([(_info(f"{outside}/pwned"), b"x")], "absolute path", id="absolute"),
        pytest.param(
            [
                (_info("link", tarfile.SYMTYPE, linkname=str(outside)), None),
                (_info("link/pwned"), b"x"),
            ],
            "parent 'link' is a symlink",
            id="through-absolute-symlink",
        ),
        pytest.param(
            [
                (
                    _info("link", tarfile.SYMTYPE, linkname="../../../../../../" + str(outside)),
                    None,
                ),
                (_info("link/pwned"), b"x"),
            ],
            "parent 'link' is a symlink",
            id="through-relative-symlink",
        ),
        pytest.param(
            [
                (_info("a", tarfile.DIRTYPE, mode=0o755), None),
                (_info("a/link", tarfile.SYMTYPE, linkname=str(outside)), None),
                (_info("a/link/deeper/pwned"), b"x"),
            ],
            "parent 'link' is a symlink",
            id="through-nested-symlink",
        ),
        pytest.param(
            [(_info("h", tarfile.LNKTYPE, linkname=f"../../../../{outside}/secret"), None)],
            "'..'",
            id="hardlink-dot-dot",
        ),
        pytest.param(
            [(_info("h", tarfile.LNKTYPE, linkname=f"{outside}/secret"), None)],
            "absolute path",
            id="hardlink-absolute",
        ),
        pytest.param(
            [
                (_info("s", tarfile.SYMTYPE, linkname=str(outside)), None),
                (_info("h", tarfile.LNKTYPE, linkname="s/secret"), None),
            ],
            "parent 's' is a symlink",
            id="hardlink-through-symlink",
        ),
        pytest.param(
            [(_info("h", tarfile.LNKTYPE, linkname="not-there"), None)],
            "is not in the layer",
            id="hardlink-missing",
        ),
        pytest.param(
            [(_info("file"), b"x"), (_info("file/child"), b"y")],
            "parent 'file' is not a directory",
            id="under-a-file",
        ),
    ]


OUTSIDE = Path("/tmp/kubelite-unpack-outside-placeholder")


@pytest.mark.parametrize(("members", "why"), _attacks(OUTSIDE))
def test_unsafe_entries_are_refused(
    tmp_path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]], why: str
) -> None:
    # Point the attacks at a real directory of this test's own.
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_bytes(b"secret")
    for info, _ in members:
        info.name = info.name.replace(str(OUTSIDE), str(outside))
        info.linkname = info.linkname.replace(str(OUTSIDE), str(outside))
    blob = _write(tmp_path, "evil.tar", _raw_tar(*members))
    dest = tmp_path / "layers" / "evil"
    dest.parent.mkdir()

    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, dest, what="layer sha256:evil")
    assert why in str(caught.value)
    assert "layer sha256:evil: entry " in str(caught.value)

    # Nothing escaped, nothing was linked, nothing half-made is left.
    assert sorted(os.listdir(outside)) == ["secret"]
    assert os.stat(outside / "secret").st_nlink == 1
    assert list((tmp_path / "layers").iterdir()) == []
    assert not list(tmp_path.rglob("pwned"))


def test_metadata_is_preserved(tmp_path: Path) -> None:
    capability = b"\x01\x00\x00\x02\x00\x20\x00\x00" + b"\x00" * 12
    tar = _raw_tar(
        (_info("bin", tarfile.DIRTYPE, mode=0o750, uid=7, gid=8, mtime=1_000_000), None),
        (_info("bin/tool", mode=0o4755, uid=1000, gid=1001, mtime=1_234_567), b"#!tool"),
        (_info("bin/alias", tarfile.LNKTYPE, linkname="bin/tool"), None),
        (_info("bin/sh", tarfile.SYMTYPE, linkname="/bin/tool", uid=5, gid=6), None),
        (_info("dev", tarfile.DIRTYPE, mode=0o755), None),
        (_info("dev/null", tarfile.CHRTYPE, mode=0o666, devmajor=1, devminor=3), None),
        (_info("dev/loop9", tarfile.BLKTYPE, mode=0o660, devmajor=7, devminor=9), None),
        (_info("dev/pipe", tarfile.FIFOTYPE, mode=0o600), None),
        (_info("tmp", tarfile.DIRTYPE, mode=0o1777), None),
        (
            _info(
                "ping",
                mode=0o755,
                pax_headers={
                    "SCHILY.xattr.user.note": "hello",
                    "SCHILY.xattr.security.capability": capability.decode(
                        "utf-8", "surrogateescape"
                    ),
                    "SCHILY.xattr.trusted.overlay.redirect": "/etc",
                },
            ),
            b"ping",
        ),
    )
    layer = _unpack(tmp_path, "meta", tar)

    tool = os.lstat(layer / "bin/tool")
    assert stat.S_IMODE(tool.st_mode) == 0o4755
    assert (tool.st_uid, tool.st_gid, tool.st_mtime) == (1000, 1001, 1_234_567)
    assert tool.st_nlink == 2 and os.lstat(layer / "bin/alias").st_ino == tool.st_ino
    bindir = os.lstat(layer / "bin")
    assert (stat.S_IMODE(bindir.st_mode), bindir.st_uid, bindir.st_gid) == (0o750, 7, 8)
    assert bindir.st_mtime == 1_000_000
    sh = os.lstat(layer / "bin/sh")
    assert os.readlink(layer / "bin/sh") == "/bin/tool" and (sh.st_uid, sh.st_gid) == (5, 6)
    null = os.lstat(layer / "dev/null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_IMODE(null.st_mode) == 0o666
    assert stat.S_ISBLK(os.lstat(layer / "dev/loop9").st_mode)
    assert stat.S_ISFIFO(os.lstat(layer / "dev/pipe").st_mode)
    assert stat.S_IMODE(os.lstat(layer / "tmp").st_mode) == 0o1777
    assert os.getxattr(layer / "ping", "user.note") == b"hello"
    assert os.getxattr(layer / "ping", "security.capability") == capability
    # A layer may not steer overlayfs: its trusted.overlay.* attributes are dropped.
    assert "trusted.overlay.redirect" not in os.listxattr(layer / "ping")
    assert stat.S_IMODE(os.lstat(layer).st_mode) == 0o755


def test_diff_id_mismatch_is_refused_and_nothing_kept(tmp_path: Path) -> None:
    tar = layer_tar([Entry("f", data=b"content")])
    blob = _write(tmp_path, "blob", gzip_bytes(tar))
    dest = tmp_path / "layers" / "x"
    dest.parent.mkdir()
    wrong = "sha256:" + "1" * 64
    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, dest, diff_id=wrong, what="layer L")
    assert f"diff id mismatch: expected {wrong}, got {digest_bytes(tar)}" in str(caught.value)
    assert list(dest.parent.iterdir()) == []


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(b"\x28\xb5\x2f\xfd" + b"\0" * 100, "zstd", id="zstd"),
        pytest.param(b"\x1f\x8b" + b"garbage" * 10, "not a valid tar stream", id="bad-gzip"),
        pytest.param(b"plain garbage" * 100, "not a valid tar stream", id="not-tar"),
    ],
)
def test_unusable_blobs_are_refused(tmp_path: Path, data: bytes, why: str) -> None:
    blob = _write(tmp_path, "blob", data)
    dest = tmp_path / "layers" / "x"
    dest.parent.mkdir()
    with pytest.raises(LayerError) as caught:
        unpack_layer(blob, dest, what="layer L")
    assert why in str(caught.value)
    assert list(dest.parent.iterdir()) == []
