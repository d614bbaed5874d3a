"""Pulling images for the kubelet: pull policy, de-duplication, verification.

`ensure_image` is what the kubelet calls before creating a container. It
decides by imagePullPolicy (Always, IfNotPresent, Never) and returns a
PullResult value: the image record, or a Kubernetes waiting reason
(ErrImagePull, ErrImageNeverPull, InvalidImageName) with a message for the
container status and the Event. Back-off (ImagePullBackOff) is the kubelet's.

Concurrency uses threads: pulls are blocking HTTP and tar work, so they run
on a small pool of worker threads (`max_parallel_pulls`, as the kubelet's
maxParallelImagePulls). Concurrent requests for one reference (after
normalization: `httpd` and `<registry>/library/httpd:latest` are one)
share one in-flight concurrent.futures.Future: one download, every waiter
gets its result. Asyncio callers await it through asyncio.wrap_future,
shielded so that one cancelled waiter does not cancel the pull for the
others. Different images that share a layer download it once too, through
the store's per-layer lock.

What a pull checks: the manifest's digest (when the tag resolves to a
digest the registry names, and always for a pull by digest), the platform
(an index entry for this node's os/architecture/variant; a single-platform
image whose config names another architecture is refused rather than left
to fail with "exec format error"), every blob's digest, and every layer's
diff id against the config.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import enum
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from machinery.clock import Clock, RealClock
from machinery.registry import (
    INDEX_TYPES,
    FetchedManifest,
    ImageIndex,
    ImageManifest,
    ImageReference,
    InvalidReference,
    MediaType,
    Platform,
    RegistryClient,
    RegistryError,
    default_pull_policy,
    digest_bytes,
    parse_manifest,
    parse_reference,
    select_platform,
)

from .config import ImageConfig, ImageConfigError, parse_image_config
from .metrics import ImageMetrics, NoImageMetrics
from .store import ImageRecord, ImageStore

_CONFIG_TYPES = frozenset({MediaType.OCI_CONFIG, MediaType.DOCKER_CONFIG})
_LAYER_TYPES = frozenset(
    {
        MediaType.OCI_LAYER,
        MediaType.OCI_LAYER_GZIP,
        MediaType.OCI_LAYER_NONDIST_GZIP,
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        MediaType.DOCKER_LAYER_GZIP,
        MediaType.DOCKER_FOREIGN_LAYER_GZIP,
        "application/vnd.docker.image.rootfs.diff.tar",
    }
)


class PullPolicy(enum.StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class RegistrySource(Protocol):
    """Where clients come from: machinery.registry.RegistryHosts."""

    def client(self, registry: str) -> RegistryClient: ...


@dataclasses.dataclass(frozen=True)
class PullResult:
    """The outcome of ensure_image, for the container status and the Events.

    reason is "" on success, else ErrImagePull, ErrImageNeverPull or
    InvalidImageName; pulled says whether a pull ran for this call (the
    "Pulling"/"Pulled" Events) as opposed to the image being present.
    image_ref is what the container status reports as imageID.
    """

    image: ImageRecord | None
    reference: str
    image_ref: str = ""
    reason: str = ""
    message: str = ""
    pulled: bool = False
    duration_s: float = 0.0
    retryable: bool = False

    @property
    def ok(self) -> bool:
        return not self.reason


@dataclasses.dataclass(frozen=True)
class _Pulled:
    record: ImageRecord
    downloaded_bytes: int


class ImagePuller:
    """Pulls images into an ImageStore; one per kubelet."""

    def __init__(
        self,
        store: ImageStore,
        hosts: RegistrySource,
        *,
        default_registry: str,
        platform: Platform | None = None,
        clock: Clock | None = None,
        metrics: ImageMetrics | None = None,
        max_parallel_pulls: int = 2,
    ) -> None:
        self._store = store
        self._hosts = hosts
        self.default_registry = default_registry
        self.platform = platform or Platform.host()
        self._clock = clock or RealClock()
        self._metrics = metrics or NoImageMetrics()
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_parallel_pulls, thread_name_prefix="image-pull"
        )
        self._inflight: dict[str, concurrent.futures.Future[_Pulled]] = {}
        self._lock = threading.RLock()

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    def parse(self, image: str) -> ImageReference:
        """A container's image field as a reference; short names go to the default registry."""
        return parse_reference(image, default_registry=self.default_registry)

    # ---- the kubelet's entry point

    async def ensure_image(
        self,
        image: str,
        *,
        policy: PullPolicy | str,
        on_pulling: Callable[[], None] | None = None,
    ) -> PullResult:
        """Make `image` present as `policy` says; never raises for a failed pull.

        `on_pulling` is called just before this call waits on a pull, so the
        kubelet can write the "Pulling" Event only when one happens.
        """
        started = self._clock.monotonic()
        try:
            reference = self.parse(image)
        except InvalidReference as exc:
            return PullResult(None, "", reason="InvalidImageName", message=str(exc))
        present = self._store.find(reference)
        action = _decide(_policy(policy, image), present is not None)
        if action == "use" and present is not None:
            record = self._store.touch(present)
            return PullResult(record, str(reference), record.image_ref_for(reference))
        if action == "never":
            message = f'Container image "{image}" is not present with pull policy of Never'
            return PullResult(None, str(reference), reason="ErrImageNeverPull", message=message)
        if on_pulling is not None:
            on_pulling()
        future = self.submit(reference)
        try:
            pulled = await asyncio.shield(asyncio.wrap_future(future))
        except Exception as exc:  # every failure of the pull becomes ErrImagePull
            return self._failure(image, reference, exc, started)
        return PullResult(
            pulled.record,
            str(reference),
            pulled.record.image_ref_for(reference),
            pulled=True,
            duration_s=self._clock.monotonic() - started,
        )

    def _failure(
        self, image: str, reference: ImageReference, exc: Exception, started: float
    ) -> PullResult:
        retryable = isinstance(exc, OSError) or getattr(exc, "retryable", False)
        return PullResult(
            None,
            str(reference),
            reason="ErrImagePull",
            message=f"failed to pull image {image}: {exc}",
            duration_s=self._clock.monotonic() - started,
            retryable=bool(retryable),
        )

    # ---- de-duplicated pulls (threads)

    def submit(self, reference: ImageReference) -> concurrent.futures.Future[_Pulled]:
        """The pull of `reference`: the one in flight, or a new one started now."""
        key = reference.key
        with self._lock:
            future = self._inflight.get(key)
            if future is None:
                future = self._executor.submit(self._run, reference)
                self._inflight[key] = future
                future.add_done_callback(lambda done: self._forget(key, done))
            return future

    def pull(self, reference: ImageReference) -> ImageRecord:
        """Pull now (blocking), sharing a pull already in flight; raises on failure."""
        return self.submit(reference).result().record

    def inflight(self) -> int:
        with self._lock:
            return len(self._inflight)

    def _forget(self, key: str, done: concurrent.futures.Future[_Pulled]) -> None:
        with self._lock:
            if self._inflight.get(key) is done:
                del self._inflight[key]

    def _run(self, reference: ImageReference) -> _Pulled:
        started = self._clock.monotonic()
        progress = [0]
        try:
            record = self._pull(reference, progress)
        except BaseException:
            self._metrics.pull_finished(
                result="failure",
                duration_s=self._clock.monotonic() - started,
                downloaded_bytes=progress[0],
            )
            raise
        self._metrics.pull_finished(
            result="success",
            duration_s=self._clock.monotonic() - started,
            downloaded_bytes=progress[0],
        )
        return _Pulled(record, progress[0])

    # ---- one pull, step by step

    def _pull(self, reference: ImageReference, progress: list[int]) -> ImageRecord:
        client = self._hosts.client(reference.registry)
        repository = reference.repository

        # Resolve the reference to this node's manifest and keep both verified bodies.
        top = client.get_manifest(repository, reference.version)
        chosen = self._platform_manifest(client, reference, top)
        manifest = chosen.content
        assert isinstance(manifest, ImageManifest)
        _check_media_types(manifest, chosen.digest)

        # The config: verified, checked against this node, and kept.
        config_body = self._local_blob(manifest.config.digest)
        if config_body is None:
            config_body = client.read_blob(repository, manifest.config.digest)
        config = parse_image_config(config_body, where=f"image config {manifest.config.digest}")
        self._check_config(config, manifest, chosen.digest)

        # Layers, bottom first, each downloaded and unpacked once; then the record.
        with self._store.pinned(config.diff_ids):
            for layer, diff_id in zip(manifest.layers, config.diff_ids, strict=True):
                progress[0] += self._store.ensure_layer(
                    diff_id,
                    download=_Download(client, repository, layer.digest, layer.size),
                    what=f"layer {layer.digest} of {reference.name}",
                )
            for fetched in {top.digest: top, chosen.digest: chosen}.values():
                self._store.put_blob(fetched.digest, fetched.body)
            self._store.put_blob(manifest.config.digest, config_body)
            return self._store.commit(
                reference=reference,
                config_digest=manifest.config.digest,
                manifest_digest=chosen.digest,
                repo_digest=f"{reference.name}@{top.digest}",
                diff_ids=config.diff_ids,
            )

    def _platform_manifest(
        self, client: RegistryClient, reference: ImageReference, top: FetchedManifest
    ) -> FetchedManifest:
        if top.media_type not in INDEX_TYPES:
            return top
        index = top.content
        assert isinstance(index, ImageIndex)
        entry = select_platform(index, self.platform)
        if entry is None:
            offered = ", ".join(sorted({str(m.platform) for m in index.manifests if m.platform}))
            raise RegistryError(
                f"no manifest for platform {self.platform} (the image has: {offered or 'none'})",
                code="PLATFORM_MISMATCH",
            )
        local = self._local_blob(entry.digest)
        if local is not None:
            content = parse_manifest(local, entry.media_type, where=f"manifest {entry.digest}")
            chosen = FetchedManifest(entry.digest, content.media_type, local, content)
        else:
            chosen = client.get_manifest(reference.repository, entry.digest)
        if not isinstance(chosen.content, ImageManifest):
            raise RegistryError(
                f"manifest {entry.digest} for {self.platform} is an index, not an image",
                code="MANIFEST_INVALID",
            )
        return chosen

    def _local_blob(self, digest: str) -> bytes | None:
        """A manifest or config this store already holds (content-addressed: no need to ask)."""
        path = self._store.blob_path(digest)
        try:
            body = path.read_bytes()
        except FileNotFoundError:
            return None
        # Re-checked because it is cheap and a damaged file must not pass as the image.
        return body if digest_bytes(body, digest.partition(":")[0]) == digest else None

    def _check_config(self, config: ImageConfig, manifest: ImageManifest, digest: str) -> None:
        if len(config.diff_ids) != len(manifest.layers):
            raise ImageConfigError(
                f"image {digest}: the manifest has {len(manifest.layers)} layers, "
                f"its config lists {len(config.diff_ids)} diff ids"
            )
        if not config.architecture:
            return
        offered = Platform(config.os or "linux", config.architecture, config.variant).normalized()
        wanted = self.platform.normalized()
        if (offered.os, offered.architecture) != (wanted.os, wanted.architecture):
            raise RegistryError(
                f"image {digest} is for {offered}, this node is {wanted}",
                code="PLATFORM_MISMATCH",
            )


class _Download:
    """A layer download for ImageStore.ensure_layer: fetch one verified blob to a path."""

    def __init__(self, client: RegistryClient, repository: str, digest: str, size: int) -> None:
        self._client, self._repository, self._digest, self._size = client, repository, digest, size

    def __call__(self, path: Path) -> int:
        return self._client.fetch_blob(self._repository, self._digest, path, size=self._size)


def _policy(policy: PullPolicy | str, image: str) -> PullPolicy:
    # An unset policy means what the API server would have defaulted it to.
    if not policy:
        return PullPolicy(default_pull_policy(image))
    try:
        return PullPolicy(policy)
    except ValueError:
        valid = ", ".join(p.value for p in PullPolicy)
        raise ValueError(f"imagePullPolicy {policy!r} is not one of {valid}") from None


def _decide(policy: PullPolicy, present: bool) -> str:
    """use the local image, pull, or fail with never: imagePullPolicy as Kubernetes reads it."""
    if policy is PullPolicy.ALWAYS:
        return "pull"
    if present:
        return "use"
    return "never" if policy is PullPolicy.NEVER else "pull"


def _check_media_types(manifest: ImageManifest, digest: str) -> None:
    if manifest.config.media_type not in _CONFIG_TYPES:
        raise RegistryError(
            f"manifest {digest} is not a container image: config media type "
            f"{manifest.config.media_type!r}",
            code="UNSUPPORTED",
        )
    for index, layer in enumerate(manifest.layers):
        if layer.media_type not in _LAYER_TYPES:
            raise RegistryError(
                f"manifest {digest}: layer {index} has media type {layer.media_type!r}, "
                "which this node cannot unpack (tar and tar+gzip only)",
                code="UNSUPPORTED",
            )
