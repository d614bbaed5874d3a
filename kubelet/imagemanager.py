"""A container's image, made present as its imagePullPolicy says, with pull back-off.

ImageManager.ensure() returns either the resolved image (normalized name, imageID, layer
directories and config for the runtime) or the waiting reason to report: ErrImagePull
after a failed pull, then ImagePullBackOff while the back-off holds (10 s doubling to
300 s per Pod, container and image), ErrImageNeverPull, InvalidImageName. Events are
Kubernetes': Pulling, Pulled ("Successfully pulled ..." or "... already present on
machine"), Failed, BackOff. Pulls themselves (de-duplication, verification, threads) are
kubelet/images'.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubelet.backoff import Backoff
from kubelet.images import ImageConfig, ImageNotFound, ImagePuller, ImageStore, PullResult
from kubelet.metrics import KubeletMetrics

Event = Callable[[dict[str, Any], str, str, str], None]


@dataclasses.dataclass(frozen=True)
class ResolvedImage:
    name: str
    image_id: str
    layers: tuple[Path, ...]
    config: ImageConfig


@dataclasses.dataclass(frozen=True)
class ImageWaiting:
    reason: str
    message: str
    retry_in_s: float = 0.0


class ImageManager:
    def __init__(
        self,
        puller: ImagePuller,
        store: ImageStore,
        *,
        backoff: Backoff,
        metrics: KubeletMetrics,
        event: Event,
        blocking: Callable[..., Any],
    ) -> None:
        self._puller = puller
        self._store = store
        self._backoff = backoff
        self._metrics = metrics
        self._event = event
        self._blocking = blocking

    def normalized(self, image: str) -> str:
        try:
            return str(self._puller.parse(image))
        except ValueError:
            return image

    async def ensure(
        self, pod: dict[str, Any], container: dict[str, Any]
    ) -> ResolvedImage | ImageWaiting:
        image = container.get("image", "")
        policy = container.get("imagePullPolicy") or "IfNotPresent"
        key = (pod["metadata"]["uid"], container["name"], image)
        waiting = self._backoff.remaining_since_update(key)
        if waiting > 0:
            self._metrics.image_pulls.labels("backoff").inc()
            message = f'Back-off pulling image "{image}"'
            self._event(pod, "Normal", "BackOff", message)
            return ImageWaiting("ImagePullBackOff", message, waiting)

        def pulling() -> None:
            self._event(pod, "Normal", "Pulling", f'Pulling image "{image}"')

        result = await self._present(image, policy)
        if result is None:
            result = await self._puller.ensure_image(image, policy=policy, on_pulling=pulling)
        if not result.ok or result.image is None:
            delay = self._backoff.next(key)
            self._metrics.image_pulls.labels("failure").inc()
            self._event(
                pod, "Warning", "Failed", f'Failed to pull image "{image}": {result.message}'
            )
            self._event(pod, "Warning", "Failed", f"Error: {result.reason}")
            return ImageWaiting(result.reason, result.message, delay)
        self._backoff.forget(key)
        if result.pulled:
            self._metrics.image_pulls.labels("success").inc()
            took = f"{result.duration_s * 1000:.0f}ms"
            self._event(pod, "Normal", "Pulled", f'Successfully pulled image "{image}" in {took}')
        else:
            self._event(
                pod, "Normal", "Pulled", f'Container image "{image}" already present on machine'
            )
        try:
            layers, config = await self._blocking(self._contents, result.image)
        except ImageNotFound as err:
            # A layer vanished under us (GC, disk trouble): pull again on the next try.
            return ImageWaiting("ErrImagePull", str(err), self._backoff.next(key))
        return ResolvedImage(result.reference, result.image_ref, layers, config)

    async def _present(self, image: str, policy: str) -> PullResult | None:
        """The image as the store has it, when the policy allows using a present one.

        The same decision ImagePuller.ensure_image makes, taken on the thread pool: the
        store's lookup and its last-used stamp write a file, which must not hold up the
        event loop while twenty Pods start. None: let the puller decide (and pull).
        """
        if policy not in ("IfNotPresent", "Never"):
            return None
        try:
            reference = self._puller.parse(image)
        except ValueError:
            return None  # the puller reports InvalidImageName

        def lookup() -> PullResult | None:
            record = self._store.find(reference)
            if record is None:
                return None
            record = self._store.touch(record)
            return PullResult(record, str(reference), record.image_ref_for(reference))

        return await self._blocking(lookup)

    def _contents(self, record: Any) -> tuple[tuple[Path, ...], ImageConfig]:
        return tuple(self._store.layers(record)), self._store.config(record)

    def forget_pod(self, uid: str) -> None:
        self._backoff.forget_prefix(uid)
