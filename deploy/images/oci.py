"""Build, push and lay out OCI images, reproducibly.

An image here is content in memory or in files: a config blob, layer blobs
and a manifest, each with its digest. Everything that goes into a digest is
fixed by the inputs: tar entries are sorted and carry a given mtime with
uid/gid 0 and no user or group names; gzip streams carry mtime 0 and a fixed
level; JSON is written with sorted keys and no spaces. The same inputs thus
give the same digests (on the same zlib: its output may differ between
zlib versions, and with it the layer digests, but never the diff ids).
"""

from __future__ import annotations

import dataclasses
import datetime
import gzip
import hashlib
import io
import json
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from machinery.registry import Descriptor, MediaType, Platform, RegistryClient, digest_bytes

GZIP_LEVEL = 9
# The OCI image layout version this code writes and reads.
LAYOUT_VERSION = "1.0.0"
REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name"


def canonical_json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def rfc3339(epoch: int) -> str:
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def source_date_epoch(default: int = 0) -> int:
    """SOURCE_DATE_EPOCH if set (the reproducible-builds convention), else `default`."""
    value = os.environ.get("SOURCE_DATE_EPOCH", "")
    if not value:
        return default
    if not value.isdigit():
        raise ValueError(f"SOURCE_DATE_EPOCH={value!r} must be a whole number of seconds")
    return int(value)


@dataclasses.dataclass(frozen=True)
class Blob:
    """Content with its digest: bytes in memory, or a file for large layers."""

    media_type: str
    digest: str
    size: int
    data: bytes | None = dataclasses.field(default=None, repr=False)
    path: Path | None = None

    @classmethod
    def of(cls, media_type: str, data: bytes) -> Blob:
        return cls(media_type, digest_bytes(data), len(data), data=data)

    def source(self) -> bytes | Path:
        if self.data is not None:
            return self.data
        if self.path is None:
            raise ValueError(f"blob {self.digest} has neither data nor a path")
        return self.path

    def read(self) -> bytes:
        source = self.source()
        return source if isinstance(source, bytes) else source.read_bytes()

    def descriptor(self, **extra: Any) -> Descriptor:
        return Descriptor(self.media_type, self.digest, self.size, **extra)


@dataclasses.dataclass(frozen=True)
class Image:
    """One platform's image: manifest, config and layers (bottom first)."""

    manifest: Blob
    config: Blob
    layers: tuple[Blob, ...]
    diff_ids: tuple[str, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest

    def blobs(self) -> tuple[Blob, ...]:
        return (*self.layers, self.config)


@dataclasses.dataclass(frozen=True)
class Index:
    """A multi-platform image: an index over per-platform images."""

    manifest: Blob
    images: tuple[Image, ...]

    @property
    def digest(self) -> str:
        return self.manifest.digest


# --------------------------------------------------------------------------------------
# Layers


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of a layer: a directory, a regular file, a symlink or a hardlink."""

    path: str
    kind: str = "file"  # dir | file | symlink | hardlink | chardev | whiteout | opaque
    mode: int = 0o644
    data: bytes = b""
    target: str = ""
    uid: int = 0
    gid: int = 0
    xattrs: tuple[tuple[str, bytes], ...] = ()
    device: tuple[int, int] = (0, 0)


_KINDS = {
    "dir": tarfile.DIRTYPE,
    "file": tarfile.REGTYPE,
    "symlink": tarfile.SYMTYPE,
    "hardlink": tarfile.LNKTYPE,
    "chardev": tarfile.CHRTYPE,
}


def layer_tar(entries: Iterable[Entry], *, mtime: int = 0) -> bytes:
    """An uncompressed layer tar of `entries`, sorted by path, in PAX format.

    `whiteout` entries become `.wh.<name>`, an `opaque` entry at DIR becomes
    `DIR/.wh..wh..opq`, as the OCI layer format writes deletions.
    """
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for entry in sorted(entries, key=lambda e: _tar_name(e)):
            info, data = _tar_info(entry, mtime)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _tar_name(entry: Entry) -> str:
    path = entry.path.strip("/")
    head, _, base = path.rpartition("/")
    if entry.kind == "whiteout":
        return f"{head}/.wh.{base}".lstrip("/")
    if entry.kind == "opaque":
        return f"{path}/.wh..wh..opq"
    return path


def _tar_info(entry: Entry, mtime: int) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(_tar_name(entry))
    info.mtime, info.uid, info.gid, info.uname, info.gname = mtime, entry.uid, entry.gid, "", ""
    info.mode = entry.mode
    if entry.kind in ("whiteout", "opaque"):
        info.type, info.mode = tarfile.REGTYPE, 0o644
        return info, b""
    if entry.kind not in _KINDS:
        raise ValueError(f"layer entry {entry.path!r}: unknown kind {entry.kind!r}")
    info.type = _KINDS[entry.kind]
    if entry.kind in ("symlink", "hardlink"):
        info.linkname = entry.target
    if entry.kind == "chardev":
        info.devmajor, info.devminor = entry.device
    if entry.xattrs:
        info.pax_headers = {
            f"SCHILY.xattr.{name}": value.decode("utf-8", "surrogateescape")
            for name, value in entry.xattrs
        }
    if entry.kind == "file":
        info.size = len(entry.data)
        return info, entry.data
    return info, None


def gzip_bytes(data: bytes, *, level: int = GZIP_LEVEL) -> bytes:
    """gzip with no timestamp and no file name, so equal input gives equal output."""
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=level, mtime=0, filename="") as z:
        z.write(data)
    return buffer.getvalue()


def gzip_layer(tar: bytes) -> tuple[Blob, str]:
    """A tar+gzip layer blob and its diff id (the digest of the uncompressed tar)."""
    return Blob.of(MediaType.OCI_LAYER_GZIP, gzip_bytes(tar)), digest_bytes(tar)


def gzip_layer_file(source: Path, dest: Path, *, level: int = 6) -> tuple[Blob, str]:
    """Compress a (large) layer tar file to `dest`, streaming; returns blob and diff id."""
    diff_hasher, blob_hasher = hashlib.sha256(), hashlib.sha256()
    with open(dest, "wb") as raw:
        hashing = _HashingWriter(raw, blob_hasher)
        with (
            gzip.GzipFile(
                fileobj=hashing, mode="wb", compresslevel=level, mtime=0, filename=""
            ) as z,
            open(source, "rb") as handle,
        ):
            for block in iter(lambda: handle.read(1 << 20), b""):
                diff_hasher.update(block)
                z.write(block)
    blob = Blob(
        MediaType.OCI_LAYER_GZIP,
        f"sha256:{blob_hasher.hexdigest()}",
        dest.stat().st_size,
        path=dest,
    )
    return blob, f"sha256:{diff_hasher.hexdigest()}"


class _HashingWriter(io.RawIOBase):
    def __init__(self, inner: Any, hasher: Any) -> None:
        self._inner, self._hasher = inner, hasher

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self._hasher.update(data)
        return self._inner.write(data)


# --------------------------------------------------------------------------------------
# Images


def image_config(
    *,
    platform: Platform,
    diff_ids: Iterable[str],
    runtime: dict[str, Any],
    created: str,
    history: Iterable[str] = (),
) -> bytes:
    """An OCI image config: platform, runtime defaults (Cmd, Env, ...), rootfs, history."""
    data: dict[str, Any] = {
        "architecture": platform.architecture,
        "os": platform.os,
        "created": created,
        "config": runtime,
        "rootfs": {"type": "layers", "diff_ids": list(diff_ids)},
        "history": [{"created": created, "created_by": line} for line in history],
    }
    if platform.variant:
        data["variant"] = platform.variant
    return canonical_json(data)


def build_image(
    layers: Iterable[tuple[Blob, str]],
    *,
    platform: Platform,
    runtime: dict[str, Any],
    created: str,
    history: Iterable[str] = (),
    annotations: dict[str, str] | None = None,
) -> Image:
    """An OCI image manifest over layer blobs (with their diff ids) and a new config."""
    pairs = list(layers)
    diff_ids = tuple(diff_id for _, diff_id in pairs)
    config = Blob.of(
        MediaType.OCI_CONFIG,
        image_config(
            platform=platform, diff_ids=diff_ids, runtime=runtime, created=created, history=history
        ),
    )
    return image_from_parts(config, [blob for blob, _ in pairs], diff_ids, annotations)


def image_from_parts(
    config: Blob,
    layers: list[Blob],
    diff_ids: tuple[str, ...],
    annotations: dict[str, str] | None = None,
) -> Image:
    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MediaType.OCI_MANIFEST,
        "config": config.descriptor().to_json(),
        "layers": [layer.descriptor().to_json() for layer in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    body = canonical_json(manifest)
    return Image(Blob.of(MediaType.OCI_MANIFEST, body), config, tuple(layers), diff_ids)


def as_docker(image: Image) -> Image:
    """The same image as a Docker v2 schema 2 manifest (Docker media types, same blobs)."""
    config = dataclasses.replace(image.config, media_type=MediaType.DOCKER_CONFIG)
    layers = [
        dataclasses.replace(layer, media_type=MediaType.DOCKER_LAYER_GZIP) for layer in image.layers
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": MediaType.DOCKER_MANIFEST,
        "config": config.descriptor().to_json(),
        "layers": [layer.descriptor().to_json() for layer in layers],
    }
    body = canonical_json(manifest)
    return Image(Blob.of(MediaType.DOCKER_MANIFEST, body), config, tuple(layers), image.diff_ids)


def build_index(
    images: Iterable[tuple[Image, Platform]], *, media_type: str = MediaType.OCI_INDEX
) -> Index:
    """An image index (or, with the Docker media type, a manifest list) over images."""
    pairs = list(images)
    entries = [image.manifest.descriptor(platform=p).to_json() for image, p in pairs]
    body = canonical_json({"schemaVersion": 2, "mediaType": media_type, "manifests": entries})
    return Index(Blob.of(media_type, body), tuple(image for image, _ in pairs))


# --------------------------------------------------------------------------------------
# Registry and layout


@dataclasses.dataclass(frozen=True)
class PushResult:
    repository: str
    tags: tuple[str, ...]
    digest: str
    uploaded_blobs: int
    skipped_blobs: int


def push_image(
    client: RegistryClient,
    image: Image | Index,
    *,
    repository: str,
    tags: Iterable[str],
    chunk_size: int | None = None,
) -> PushResult:
    """Push blobs (skipping those the registry has), then the manifest under each tag."""
    uploaded = skipped = 0
    children = image.images if isinstance(image, Index) else (image,)
    for child in children:
        for blob in child.blobs():
            if client.push_blob(repository, blob.digest, blob.source(), chunk_size=chunk_size):
                uploaded += 1
            else:
                skipped += 1
        if isinstance(image, Index):
            client.push_manifest(
                repository, child.digest, child.manifest.read(), child.manifest.media_type
            )
    tag_list = tuple(tags)
    manifest = image.manifest
    for version in tag_list or (manifest.digest,):
        client.push_manifest(repository, version, manifest.read(), manifest.media_type)
    return PushResult(repository, tag_list, manifest.digest, uploaded, skipped)


def write_oci_layout(directory: Path, images: Iterable[tuple[str, Image | Index]]) -> Path:
    """Write images into an OCI image layout directory, each named by a ref.name annotation.

    `kctl image load` reads such a directory back (or a tar of it).
    """
    blob_dir = directory / "blobs" / "sha256"
    blob_dir.mkdir(parents=True, exist_ok=True)
    manifests = []
    for name, image in images:
        for blob in _all_blobs(image):
            target = blob_dir / blob.digest.partition(":")[2]
            if not target.exists():
                target.write_bytes(blob.read())
        descriptor = image.manifest.descriptor(annotations={REF_NAME_ANNOTATION: name})
        manifests.append(descriptor.to_json())
    (directory / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": LAYOUT_VERSION}))
    index = {"schemaVersion": 2, "mediaType": MediaType.OCI_INDEX, "manifests": manifests}
    (directory / "index.json").write_bytes(canonical_json(index))
    return directory


def _all_blobs(image: Image | Index) -> list[Blob]:
    if isinstance(image, Index):
        blobs = [image.manifest]
        for child in image.images:
            blobs.extend(_all_blobs(child))
        return blobs
    return [image.manifest, *image.blobs()]
