"""The node's image store: blobs by digest, unpacked layers, image records.

Layout under the store root:
    blobs/sha256/<hex>     manifests and configs (verified before written)
    layers/<hex>           one unpacked layer in overlayfs form, keyed by its
                           diff id, shared by every image and container using it
    tmp/                   downloads in progress (emptied at start)
    images.json            the image records, rewritten atomically

Invariants:
- A path under blobs/ or layers/ is complete and verified, or absent: blobs
  are renamed into place after their digest is checked, layers after their
  diff id is (see unpack.py). Compressed layer blobs are deleted once their
  layer is unpacked: the unpacked tree is what containers use and what the
  diff id in the config vouches for.
- An image record exists only once all of its layers are unpacked.
- A layer is removed only when no record references it and no pull in
  progress has pinned it, so garbage collection never races a pull into
  deleting a layer that pull has just decided to reuse.
- Each layer is downloaded and unpacked at most once at a time: a per-layer
  lock makes a second puller wait and then find it present.
Thread-safe: the kubelet's pulls run on worker threads (see puller.py).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from machinery.clock import Clock, RealClock
from machinery.registry import ImageReference, verify_bytes

from .config import ImageConfig, parse_image_config
from .unpack import disk_usage, remove_tree, unpack_layer

_STATE_FILE = "images.json"
_STATE_VERSION = 1


class ImageNotFound(LookupError):
    """No image of that name or id in the store, or one with a layer gone missing."""


@dataclasses.dataclass(frozen=True)
class ImageRecord:
    """An image present on the node.

    id is the config digest (what Kubernetes calls the image id inside a
    runtime); names are `registry/repository:tag` references that point to
    it; repo_digests are `registry/repository@<manifest digest>`, the digest
    the tag resolved to at the registry (the index digest for a multi-platform
    image), which is what a container status reports as imageID.
    """

    id: str
    names: tuple[str, ...]
    repo_digests: tuple[str, ...]
    manifest_digest: str
    layers: tuple[str, ...]
    size: int
    created_at: float
    last_used: float

    @property
    def image_ref(self) -> str:
        """The imageID a container status shows: the first repo digest, else the id."""
        return self.repo_digests[0] if self.repo_digests else self.id

    def image_ref_for(self, reference: ImageReference) -> str:
        """The imageID for a container that asked for `reference`: its repository's digest."""
        prefix = reference.name + "@"
        for repo_digest in self.repo_digests:
            if repo_digest.startswith(prefix):
                return repo_digest
        return self.image_ref

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ImageRecord:
        return cls(
            id=data["id"],
            names=tuple(data["names"]),
            repo_digests=tuple(data["repo_digests"]),
            manifest_digest=data["manifest_digest"],
            layers=tuple(data["layers"]),
            size=int(data["size"]),
            created_at=float(data["created_at"]),
            last_used=float(data["last_used"]),
        )


@dataclasses.dataclass(frozen=True)
class DiskUsage:
    """The filesystem holding the store: total and available bytes."""

    capacity: int
    available: int

    @property
    def used_percent(self) -> int:
        """Used share as Kubernetes computes it for image GC: 100 - available*100/capacity."""
        if self.capacity <= 0:
            return 0
        return 100 - self.available * 100 // self.capacity


def _digest_file_name(digest: str) -> str:
    algorithm, _, encoded = digest.partition(":")
    return encoded if algorithm == "sha256" else f"{algorithm}-{encoded}"


class _KeyedLocks:
    """One lock per key, dropped when nobody holds or waits for it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._locks: dict[str, tuple[threading.Lock, int]] = {}

    @contextlib.contextmanager
    def hold(self, key: str) -> Iterator[None]:
        with self._lock:
            lock, users = self._locks.get(key, (threading.Lock(), 0))
            self._locks[key] = (lock, users + 1)
        try:
            with lock:
                yield
        finally:
            with self._lock:
                lock, users = self._locks[key]
                if users == 1:
                    del self._locks[key]
                else:
                    self._locks[key] = (lock, users - 1)


class ImageStore:
    """Images on this node, under `root`; see the module docstring for the layout."""

    def __init__(self, root: Path, *, clock: Clock | None = None) -> None:
        self.root = Path(root)
        self._clock = clock or RealClock()
        self._lock = threading.RLock()
        self._layer_locks = _KeyedLocks()
        self._pins: collections.Counter[str] = collections.Counter()
        self._images: dict[str, ImageRecord] = {}
        self._layer_sizes: dict[str, int] = {}
        self._configs: dict[str, ImageConfig] = {}
        for sub in ("blobs/sha256", "layers", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._load()

    # ---- lookups

    def get(self, key: str) -> ImageRecord | None:
        """An image by id (config digest), by name (`reg/repo:tag`) or by repo digest."""
        with self._lock:
            record = self._images.get(key)
            if record is not None:
                return record
            for record in self._images.values():
                if key in record.names or key in record.repo_digests:
                    return record
        return None

    def find(self, reference: ImageReference) -> ImageRecord | None:
        """The image a reference names on this node: by repo digest, else by name:tag."""
        return self.get(reference.key)

    def images(self) -> list[ImageRecord]:
        with self._lock:
            return sorted(self._images.values(), key=lambda r: r.id)

    def _resolve(self, image: ImageRecord | str) -> ImageRecord:
        key = image.id if isinstance(image, ImageRecord) else image
        record = self.get(key)
        if record is None:
            raise ImageNotFound(f"image {key} is not in the image store")
        return record

    def config(self, image: ImageRecord | str) -> ImageConfig:
        """The parsed image config of an image (cached)."""
        record = self._resolve(image)
        with self._lock:
            cached = self._configs.get(record.id)
        if cached is not None:
            return cached
        body = self.blob_path(record.id).read_bytes()
        config = parse_image_config(body, where=f"image config {record.id}")
        with self._lock:
            self._configs[record.id] = config
        return config

    def layers(self, image: ImageRecord | str) -> list[Path]:
        """The unpacked layer directories of an image, bottom first, for overlayfs.

        overlayfs wants its lowerdir list top first: reverse this list.
        """
        record = self._resolve(image)
        paths = [self.layer_path(diff_id) for diff_id in record.layers]
        for diff_id, path in zip(record.layers, paths, strict=True):
            if not path.is_dir():
                raise ImageNotFound(f"image {record.id} is missing layer {diff_id}: pull it again")
        return paths

    def layer_path(self, diff_id: str) -> Path:
        return self.root / "layers" / _digest_file_name(diff_id)

    def blob_path(self, digest: str) -> Path:
        algorithm = digest.partition(":")[0]
        return self.root / "blobs" / algorithm / _digest_file_name(digest)

    def has_layer(self, diff_id: str) -> bool:
        return self.layer_path(diff_id).is_dir()

    def disk_usage(self) -> DiskUsage:
        stats = os.statvfs(self.root)
        return DiskUsage(stats.f_blocks * stats.f_frsize, stats.f_bavail * stats.f_frsize)

    # ---- writing content

    def put_blob(self, digest: str, data: bytes) -> Path:
        """Store a small blob (manifest, config) after checking its digest."""
        verify_bytes(data, digest, what=f"blob {digest}")
        path = self.blob_path(digest)
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            temp = self.root / "tmp" / f"{_digest_file_name(digest)}.{threading.get_ident()}"
            temp.write_bytes(data)
            os.replace(temp, path)
        return path

    def ensure_layer(self, diff_id: str, *, download: Callable[[Path], int], what: str) -> int:
        """Make layer `diff_id` present; returns the bytes downloaded (0 if it was there).

        `download(path)` must write the verified compressed blob to `path`
        (RegistryClient.fetch_blob does). Concurrent callers for one layer
        wait for the first, which downloads it once.
        """
        with self._layer_locks.hold(diff_id):
            if self.has_layer(diff_id):
                return 0
            blob = self.root / "tmp" / f"{_digest_file_name(diff_id)}.layer"
            try:
                downloaded = download(blob)
                unpack_layer(blob, self.layer_path(diff_id), diff_id=diff_id, what=what)
            finally:
                blob.unlink(missing_ok=True)
            size = disk_usage(self.layer_path(diff_id))
            with self._lock:
                self._layer_sizes[diff_id] = size
            return downloaded

    @contextlib.contextmanager
    def pinned(self, diff_ids: Iterable[str]) -> Iterator[None]:
        """Keep these layers from garbage collection while a pull assembles an image."""
        keys = list(diff_ids)
        with self._lock:
            self._pins.update(keys)
        try:
            yield
        finally:
            with self._lock:
                self._pins.subtract(keys)
                self._pins += collections.Counter()  # drop zero counts

    def commit(
        self,
        *,
        reference: ImageReference,
        config_digest: str,
        manifest_digest: str,
        repo_digest: str,
        diff_ids: tuple[str, ...],
    ) -> ImageRecord:
        """Record a pulled image whose blobs and layers are all present.

        A tag moves: if another image held this name, it loses it (and is
        left for garbage collection once nothing uses it).
        """
        missing = [d for d in diff_ids if not self.has_layer(d)]
        if missing:
            raise ImageNotFound(
                f"image {config_digest} cannot be recorded: layers {missing} absent"
            )
        name = "" if reference.digest else reference.key
        with self._lock:
            self._drop_name(name, keep=config_digest)
            now = self._clock.now()
            old = self._images.get(config_digest)
            record = ImageRecord(
                id=config_digest,
                names=_merged(old.names if old else (), name),
                repo_digests=_merged(old.repo_digests if old else (), repo_digest),
                manifest_digest=manifest_digest,
                layers=diff_ids,
                size=self._image_size(config_digest, diff_ids),
                created_at=old.created_at if old else now,
                last_used=now,
            )
            self._images[config_digest] = record
            self._save()
        return record

    def _drop_name(self, name: str, *, keep: str) -> None:
        if not name:
            return
        for image_id, record in list(self._images.items()):
            if image_id != keep and name in record.names:
                names = tuple(n for n in record.names if n != name)
                self._images[image_id] = dataclasses.replace(record, names=names)

    def _image_size(self, config_digest: str, diff_ids: tuple[str, ...]) -> int:
        blob = self.blob_path(config_digest)
        config_size = blob.stat().st_size if blob.exists() else 0
        return config_size + sum(self._layer_sizes.get(d, 0) for d in diff_ids)

    def touch(self, image: ImageRecord | str) -> ImageRecord:
        """Mark an image used now (it orders garbage collection, oldest use first)."""
        with self._lock:
            record = dataclasses.replace(self._resolve(image), last_used=self._clock.now())
            self._images[record.id] = record
            self._save()
        return record

    # ---- removal

    def remove(self, image: ImageRecord | str) -> int:
        """Delete an image and whatever only it used; returns the bytes freed.

        The caller (garbage collection, an operator) checks that no container
        uses the image; layers shared with other images, or pinned by a pull
        in progress, stay.
        """
        with self._lock:
            record = self._resolve(image)
            del self._images[record.id]
            self._configs.pop(record.id, None)
            self._save()
            still_used = {d for r in self._images.values() for d in r.layers}
            doomed = [d for d in record.layers if d not in still_used and self._pins[d] == 0]
            freed = sum(self._layer_sizes.pop(d, 0) for d in doomed)
            for diff_id in doomed:
                remove_tree(self.layer_path(diff_id))
            freed += self._remove_blobs(record)
        return freed

    def _remove_blobs(self, record: ImageRecord) -> int:
        kept: set[str] = set()
        for other in self._images.values():
            kept.add(other.id)
            kept.add(other.manifest_digest)
            kept.update(r.partition("@")[2] for r in other.repo_digests)
        doomed = {record.id, record.manifest_digest}
        doomed.update(r.partition("@")[2] for r in record.repo_digests)
        freed = 0
        for digest in doomed - kept:
            path = self.blob_path(digest)
            with contextlib.suppress(FileNotFoundError):
                freed += path.stat().st_blocks * 512
                path.unlink()
        return freed

    # ---- persistence

    def _load(self) -> None:
        shutil.rmtree(self.root / "tmp", ignore_errors=True)
        (self.root / "tmp").mkdir()
        path = self.root / _STATE_FILE
        if not path.exists():
            self._remove_orphan_layers(set())
            return
        try:
            state = json.loads(path.read_text())
            images = [ImageRecord.from_json(item) for item in state["images"]]
            sizes = {str(k): int(v) for k, v in state["layer_sizes"].items()}
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"image store state {path} is unreadable: {exc}") from None
        for record in images:
            # A record whose layer vanished (deleted by hand) is forgotten, not trusted.
            if all(self.has_layer(d) for d in record.layers):
                self._images[record.id] = record
        used = {d for r in self._images.values() for d in r.layers}
        self._layer_sizes = {d: size for d, size in sizes.items() if d in used}
        self._remove_orphan_layers(used)

    def _remove_orphan_layers(self, used: set[str]) -> None:
        # A layer unpacked by a pull that never committed (the kubelet died) is
        # referenced by nothing; the next pull of that image unpacks it again.
        keep = {self.layer_path(d).name for d in used}
        for path in (self.root / "layers").iterdir():
            if path.name not in keep:
                remove_tree(path)

    def _save(self) -> None:
        state = {
            "version": _STATE_VERSION,
            "images": [r.to_json() for r in sorted(self._images.values(), key=lambda r: r.id)],
            "layer_sizes": dict(sorted(self._layer_sizes.items())),
        }
        temp = self.root / "tmp" / f"{_STATE_FILE}.{threading.get_ident()}"
        temp.write_text(json.dumps(state, indent=1))
        os.replace(temp, self.root / _STATE_FILE)


def _merged(existing: tuple[str, ...], new: str) -> tuple[str, ...]:
    if not new or new in existing:
        return existing
    return (*existing, new)
