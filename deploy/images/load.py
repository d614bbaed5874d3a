"""`kctl image load FILE` and `kctl image ls`: archives into the registry, and back out.

load_image_archive pushes every image of an archive to the cluster registry:
- an OCI image layout, as a directory or a tar of one (`skopeo copy ...
  oci:DIR`, `docker buildx --output type=oci`, deploy.images.build
  --oci-layout); images are named by their `org.opencontainers.image.ref.name`
  (or `io.containerd.image.name`) annotation;
- a `docker save` archive (manifest.json with Config, RepoTags, Layers),
  plain or gzip-compressed; Docker 25 and later write one that is also an
  OCI layout, and its manifest.json is preferred for the RepoTags.
Every blob is checked on the way: OCI blobs against their digests, docker
save layers against the diff ids of their config. Uncompressed layers are
gzip-compressed for the registry, as `docker push` does.

Names: an image keeps its repository and tag but moves to the cluster
registry, so `busybox:latest` (or `docker.io/library/busybox:latest`) in an
archive is pushed as `<cluster registry>/library/busybox:latest`, which is
what a Pod's `image: busybox` resolves to.

list_registry_images is what `kctl image ls` prints: repositories, tags and
the digest each tag points to.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any, Protocol

from machinery.registry import (
    INDEX_TYPES,
    ImageReference,
    InvalidReference,
    MediaType,
    RegistryClient,
    digest_file,
    parse_reference,
    verify_bytes,
)

from .oci import Blob, gzip_layer_file

_CONTAINERD_NAME = "io.containerd.image.name"
_REF_NAME = "org.opencontainers.image.ref.name"
_MAX_JSON = 16 << 20


class LoadError(Exception):
    """An archive that cannot be loaded; the message names the file and what is wrong."""


@dataclasses.dataclass(frozen=True)
class LoadedImage:
    """One image pushed from an archive: where to, its manifest digest, blobs moved."""

    reference: str
    digest: str
    uploaded_blobs: int
    skipped_blobs: int


@dataclasses.dataclass(frozen=True)
class RegistryImage:
    """One tag in the registry, for `kctl image ls`."""

    repository: str
    tag: str
    digest: str


# --------------------------------------------------------------------------------------
# Archive access


class _Archive(Protocol):
    label: str

    def exists(self, name: str) -> bool: ...

    def open(self, name: str) -> IO[bytes]: ...


def _clean(name: str, archive: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or ".." in parts or not parts:
        raise LoadError(f"{archive}: entry name {name!r} leaves the archive")
    return "/".join(parts)


class _DirArchive:
    def __init__(self, root: Path) -> None:
        self._root = root
        self.label = str(root)

    def exists(self, name: str) -> bool:
        return (self._root / _clean(name, self.label)).is_file()

    def open(self, name: str) -> IO[bytes]:
        path = self._root / _clean(name, self.label)
        # A layout is ours to read, but a symlink must not lead the load elsewhere.
        if not path.resolve().is_relative_to(self._root.resolve()):
            raise LoadError(f"{self.label}: {name!r} points outside the layout")
        try:
            return open(path, "rb")
        except OSError as exc:
            raise LoadError(f"{self.label}: cannot read {name}: {exc.strerror}") from None


class _TarArchive:
    def __init__(self, path: Path) -> None:
        self.label = str(path)
        try:
            # Kept open for random access while loading; close() ends it.
            self._tar = tarfile.open(path, "r:*")  # noqa: SIM115
            members = self._tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise LoadError(f"{path} is not a tar archive or an OCI layout: {exc}") from None
        # Only names that stay inside the archive are indexed; "./" and the like are skipped.
        self._members = {}
        for member in members:
            parts = [p for p in member.name.split("/") if p not in ("", ".")]
            if parts and ".." not in parts and not member.name.startswith("/"):
                self._members["/".join(parts)] = member

    def exists(self, name: str) -> bool:
        member = self._members.get(_clean(name, self.label))
        return member is not None and not member.isdir()

    def open(self, name: str) -> IO[bytes]:
        member = self._members.get(_clean(name, self.label))
        if member is None:
            raise LoadError(f"{self.label}: {name} is missing")
        try:
            # extractfile follows links inside the archive (docker save links repeated layers).
            handle = self._tar.extractfile(member)
        except (KeyError, tarfile.TarError) as exc:
            raise LoadError(f"{self.label}: {name} is a link to nothing: {exc}") from None
        if handle is None:
            raise LoadError(f"{self.label}: {name} is not a file")
        return handle

    def close(self) -> None:
        self._tar.close()


def _read_json(archive: _Archive, name: str) -> Any:
    with archive.open(name) as handle:
        data = handle.read(_MAX_JSON + 1)
    if len(data) > _MAX_JSON:
        raise LoadError(f"{archive.label}: {name} is larger than {_MAX_JSON} bytes")
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError(f"{archive.label}: {name} is not JSON: {exc}") from None


def _copy_out(archive: _Archive, name: str, dest: Path) -> None:
    with archive.open(name) as source, open(dest, "wb") as out:
        while block := source.read(1 << 20):
            out.write(block)


# --------------------------------------------------------------------------------------
# Loading


def load_image_archive(
    path: Path,
    client: RegistryClient,
    *,
    name: str | None = None,
    workdir: Path | None = None,
) -> list[LoadedImage]:
    """Push every image in the OCI layout or docker save archive at `path` to `client`'s registry.

    `name` (`repo[:tag]`) names the image of a single-image archive whose
    own name is missing or unwanted. Temporary files go under `workdir`.
    """
    archive: _Archive = _DirArchive(path) if path.is_dir() else _TarArchive(path)
    try:
        with tempfile.TemporaryDirectory(dir=workdir, prefix="kubelite-load-") as temp:
            loader = _Loader(archive, client, Path(temp), name)
            if archive.exists("manifest.json"):
                return loader.docker_archive()
            if archive.exists("index.json"):
                return loader.oci_layout()
            raise LoadError(
                f"{path} is neither an OCI image layout (index.json) nor a docker save "
                "archive (manifest.json)"
            )
    finally:
        if isinstance(archive, _TarArchive):
            archive.close()


class _Loader:
    def __init__(self, archive: _Archive, client: RegistryClient, temp: Path, name: str | None):
        self._archive = archive
        self._client = client
        self._temp = temp
        self._name = name
        self._uploaded = self._skipped = 0

    def _target(self, given: str, position: int, count: int) -> ImageReference:
        text = self._name or given
        if self._name and count > 1:
            raise LoadError(
                f"{self._archive.label} holds {count} images: a name applies to one only"
            )
        if not text:
            raise LoadError(
                f"image {position + 1} of {self._archive.label} has no name: give it one"
            )
        try:
            parsed = parse_reference(text, default_registry=self._client.registry)
        except InvalidReference as exc:
            raise LoadError(f"{self._archive.label}: image {position + 1}: {exc}") from None
        return ImageReference(self._client.registry, parsed.repository, parsed.tag, "")

    def _done(self, target: ImageReference, digest: str) -> LoadedImage:
        result = LoadedImage(str(target), digest, self._uploaded, self._skipped)
        self._uploaded = self._skipped = 0
        return result

    def _push_blob(self, repository: str, blob: Blob) -> None:
        if self._client.push_blob(repository, blob.digest, blob.source()):
            self._uploaded += 1
        else:
            self._skipped += 1

    # ---- OCI layout

    def oci_layout(self) -> list[LoadedImage]:
        layout = (
            _read_json(self._archive, "oci-layout") if self._archive.exists("oci-layout") else {}
        )
        version = layout.get("imageLayoutVersion", "") if isinstance(layout, dict) else ""
        if version and not version.startswith("1."):
            raise LoadError(f"{self._archive.label}: OCI layout version {version} is not 1.x")
        index = _read_json(self._archive, "index.json")
        entries = index.get("manifests") if isinstance(index, dict) else None
        if not isinstance(entries, list) or not entries:
            raise LoadError(f"{self._archive.label}: index.json lists no manifests")
        results = []
        for position, entry in enumerate(entries):
            annotations = entry.get("annotations") or {}
            given = _layout_name(annotations.get(_CONTAINERD_NAME) or annotations.get(_REF_NAME))
            target = self._target(given, position, len(entries))
            digest = self._push_tree(target.repository, entry, tag=target.tag)
            results.append(self._done(target, digest))
        return results

    def _push_tree(self, repository: str, descriptor: dict[str, Any], *, tag: str) -> str:
        """Push a manifest or index with everything below it; returns its digest."""
        digest, media_type = str(descriptor.get("digest", "")), str(descriptor.get("mediaType", ""))
        body = self._layout_blob_bytes(digest)
        content = json.loads(body)
        media_type = content.get("mediaType") or media_type
        if media_type in INDEX_TYPES or "manifests" in content:
            for child in content.get("manifests") or []:
                self._push_tree(repository, child, tag="")
        else:
            for blob in [content.get("config"), *(content.get("layers") or [])]:
                self._push_layout_blob(repository, blob)
        for version in (tag,) if tag else (digest,):
            self._client.push_manifest(repository, version, body, media_type)
        return digest

    def _layout_path(self, digest: str) -> str:
        algorithm, _, encoded = digest.partition(":")
        if not algorithm or not encoded or "/" in encoded:
            raise LoadError(f"{self._archive.label}: {digest!r} is not a digest")
        return f"blobs/{algorithm}/{encoded}"

    def _layout_blob_bytes(self, digest: str) -> bytes:
        with self._archive.open(self._layout_path(digest)) as handle:
            body = handle.read(_MAX_JSON)
        verify_bytes(body, digest, what=f"{self._archive.label}: blob {digest}")
        return body

    def _push_layout_blob(self, repository: str, descriptor: Any) -> None:
        if not isinstance(descriptor, dict) or "digest" not in descriptor:
            raise LoadError(f"{self._archive.label}: a manifest has a malformed descriptor")
        digest = str(descriptor["digest"])
        if self._client.blob_exists(repository, digest):
            self._skipped += 1
            return
        temp = self._temp / digest.replace(":", "-")
        _copy_out(self._archive, self._layout_path(digest), temp)
        actual = digest_file(temp, digest.partition(":")[0])
        if actual != digest:
            raise LoadError(
                f"{self._archive.label}: blob {digest} is corrupt: its content is {actual}"
            )
        media_type = str(descriptor.get("mediaType", ""))
        self._push_blob(repository, Blob(media_type, digest, temp.stat().st_size, path=temp))
        temp.unlink()

    # ---- docker save

    def docker_archive(self) -> list[LoadedImage]:
        items = _read_json(self._archive, "manifest.json")
        if not isinstance(items, list) or not items:
            raise LoadError(f"{self._archive.label}: manifest.json lists no images")
        results = []
        for position, item in enumerate(items):
            if not isinstance(item, dict) or "Config" not in item or "Layers" not in item:
                raise LoadError(
                    f"{self._archive.label}: manifest.json entry {position} lacks Config or Layers"
                )
            tags = [str(t) for t in item.get("RepoTags") or []]
            targets = [self._target(t, position, len(items)) for t in tags or [""]]
            blobs, body = self._docker_image(item)
            digest = "sha256:" + hashlib.sha256(body).hexdigest()
            for target in targets:
                for blob in blobs:
                    self._push_blob(target.repository, blob)
                self._client.push_manifest(
                    target.repository, target.tag, body, MediaType.DOCKER_MANIFEST
                )
                results.append(self._done(target, digest))
        return results

    def _docker_image(self, item: dict[str, Any]) -> tuple[list[Blob], bytes]:
        """The blobs (layers, config) and Docker manifest for one docker save entry."""
        label = self._archive.label
        config_name = str(item["Config"])
        with self._archive.open(config_name) as handle:
            config_body = handle.read(_MAX_JSON)
        diff_ids = _config_diff_ids(config_body, f"{label}: {config_name}")
        layer_names = [str(name) for name in item["Layers"]]
        if len(layer_names) != len(diff_ids):
            raise LoadError(
                f"{label}: {config_name} lists {len(diff_ids)} diff ids for "
                f"{len(layer_names)} layers"
            )
        layers = [
            self._docker_layer(name, diff_id, index)
            for index, (name, diff_id) in enumerate(zip(layer_names, diff_ids, strict=True))
        ]
        config = Blob.of(MediaType.DOCKER_CONFIG, config_body)
        manifest = {
            "schemaVersion": 2,
            "mediaType": MediaType.DOCKER_MANIFEST,
            "config": config.descriptor().to_json(),
            "layers": [layer.descriptor().to_json() for layer in layers],
        }
        body = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        return [*layers, config], body

    def _docker_layer(self, name: str, diff_id: str, index: int) -> Blob:
        """A registry blob (gzip) for one docker save layer, checked against its diff id."""
        raw = self._temp / f"layer-{index}"
        _copy_out(self._archive, name, raw)
        with open(raw, "rb") as handle:
            compressed = handle.read(2) == b"\x1f\x8b"
        if compressed:
            actual = _gunzip_digest(raw)
            blob = Blob(MediaType.DOCKER_LAYER_GZIP, digest_file(raw), raw.stat().st_size, path=raw)
        else:
            packed, actual = gzip_layer_file(raw, self._temp / f"layer-{index}.gz")
            raw.unlink()
            blob = dataclasses.replace(packed, media_type=MediaType.DOCKER_LAYER_GZIP)
        if actual != diff_id:
            raise LoadError(
                f"{self._archive.label}: layer {name} does not match its image config: "
                f"diff id {actual}, the config says {diff_id}"
            )
        return blob


def _layout_name(value: Any) -> str:
    """A ref.name annotation as a reference: a bare tag has no repository, so none."""
    text = str(value or "")
    return text if (":" in text or "/" in text) else ""


def _config_diff_ids(body: bytes, where: str) -> list[str]:
    try:
        config = json.loads(body)
        diff_ids = config["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise LoadError(f"{where} is not an image config with rootfs.diff_ids") from None
    if not isinstance(diff_ids, list):
        raise LoadError(f"{where}: rootfs.diff_ids is not a list")
    return [str(d) for d in diff_ids]


def _gunzip_digest(path: Path) -> str:
    hasher = hashlib.sha256()
    try:
        with gzip.open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                hasher.update(block)
    except (OSError, EOFError) as exc:
        raise LoadError(f"layer {path.name} is not valid gzip: {exc}") from None
    return f"sha256:{hasher.hexdigest()}"


# --------------------------------------------------------------------------------------
# Listing


def list_registry_images(client: RegistryClient) -> list[RegistryImage]:
    """Every tag of every repository in the registry, with the digest it points to."""
    images = []
    for repository in sorted(client.catalog()):
        for tag in sorted(client.tags(repository)):
            images.append(RegistryImage(repository, tag, client.manifest_digest(repository, tag)))
    return images
