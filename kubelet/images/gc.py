"""Image garbage collection: free disk above a high threshold, down to a low one.

Kubernetes' image GC policy: when the image filesystem is at least
`high_threshold_percent` full (default 85), remove unused images, least
recently used first, until usage would be down to `low_threshold_percent`
(default 80). An image is never removed while a container uses it (the
caller passes the set in use) nor before `min_age_s` since it was first
pulled (default 2 minutes), so that an image pulled for a Pod about to start
is not collected under it. The outcome is a value: what was removed, what
was freed, and, when the unused images were not enough, by how much it fell
short (Kubernetes reports that as a warning Event; the kubelet does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from machinery.clock import Clock, RealClock

from .metrics import ImageMetrics, NoImageMetrics
from .store import DiskUsage, ImageStore


@dataclasses.dataclass(frozen=True)
class GCPolicy:
    high_threshold_percent: int = 85
    low_threshold_percent: int = 80
    min_age_s: float = 120.0

    def __post_init__(self) -> None:
        if not 0 <= self.low_threshold_percent <= self.high_threshold_percent <= 100:
            raise ValueError(
                f"image GC thresholds must satisfy 0 <= low <= high <= 100, got low="
                f"{self.low_threshold_percent} high={self.high_threshold_percent}"
            )


@dataclasses.dataclass(frozen=True)
class GCResult:
    usage_before: DiskUsage
    usage_after: DiskUsage
    bytes_to_free: int
    freed_bytes: int
    removed: tuple[str, ...]
    message: str = ""

    @property
    def ok(self) -> bool:
        return not self.message


def bytes_to_free(usage: DiskUsage, policy: GCPolicy) -> int:
    """How much to free: 0 below the high threshold, else down to the low one."""
    if usage.used_percent < policy.high_threshold_percent:
        return 0
    target_available = usage.capacity * (100 - policy.low_threshold_percent) // 100
    return max(0, target_available - usage.available)


def collect_garbage(
    store: ImageStore,
    *,
    in_use: Collection[str],
    policy: GCPolicy | None = None,
    clock: Clock | None = None,
    metrics: ImageMetrics | None = None,
) -> GCResult:
    """Run one image GC pass over `store`.

    `in_use` names the images containers use, by id, name or repo digest
    (whatever the kubelet holds); images it names are never removed.
    """
    policy = policy or GCPolicy()
    clock = clock or RealClock()
    before = store.disk_usage()
    needed = bytes_to_free(before, policy)
    if needed == 0:
        return GCResult(before, before, 0, 0, ())

    # Candidates: unused and old enough, least recently used first.
    used_ids = {record.id for key in in_use if (record := store.get(key)) is not None}
    now = clock.now()
    candidates = sorted(
        (
            r
            for r in store.images()
            if r.id not in used_ids and now - r.created_at >= policy.min_age_s
        ),
        key=lambda r: (r.last_used, r.id),
    )

    # Remove until enough is freed.
    freed, removed = 0, []
    for record in candidates:
        if freed >= needed:
            break
        freed += store.remove(record)
        removed.append(record.id)
    (metrics or NoImageMetrics()).gc_finished(removed=len(removed), freed_bytes=freed)
    message = ""
    if freed < needed:
        message = (
            f"failed to garbage collect required amount of images: wanted to free {needed} "
            f"bytes, but freed {freed} bytes"
        )
    return GCResult(before, store.disk_usage(), needed, freed, tuple(removed), message)
