"""Image metrics: a small seam, and its Prometheus implementation.

The puller and the garbage collector report through an ImageMetrics handed
to them; the kubelet builds one PrometheusImageMetrics on the registry it
serves at /metrics. Metric names carry the kubelite_ prefix:

    kubelite_image_pulls_total{result="success"|"failure"}
    kubelite_image_pull_duration_seconds            (histogram, pulls that ran)
    kubelite_image_pull_bytes_total                 (compressed bytes downloaded)
    kubelite_image_gc_removed_images_total
    kubelite_image_gc_freed_bytes_total

A pull that several callers waited on counts once.
"""

from __future__ import annotations

from typing import Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

# Pulls range from a cached manifest check (milliseconds) to large images (minutes).
_PULL_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class ImageMetrics(Protocol):
    def pull_finished(self, *, result: str, duration_s: float, downloaded_bytes: int) -> None: ...

    def gc_finished(self, *, removed: int, freed_bytes: int) -> None: ...


class NoImageMetrics:
    """Metrics that go nowhere, for callers that do not export any."""

    def pull_finished(self, *, result: str, duration_s: float, downloaded_bytes: int) -> None:
        pass

    def gc_finished(self, *, removed: int, freed_bytes: int) -> None:
        pass


class PrometheusImageMetrics:
    """The image metrics as prometheus_client collectors on `registry`.

    Create one per CollectorRegistry: the names are registered once.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        target = registry if registry is not None else REGISTRY
        self.pulls = Counter(
            "kubelite_image_pulls", "Image pulls by result.", ["result"], registry=target
        )
        self.pull_duration = Histogram(
            "kubelite_image_pull_duration_seconds",
            "Duration of image pulls that ran, successful or not.",
            buckets=_PULL_BUCKETS,
            registry=target,
        )
        self.pull_bytes = Counter(
            "kubelite_image_pull_bytes",
            "Compressed bytes downloaded by image pulls.",
            registry=target,
        )
        self.gc_removed = Counter(
            "kubelite_image_gc_removed_images",
            "Images removed by garbage collection.",
            registry=target,
        )
        self.gc_freed = Counter(
            "kubelite_image_gc_freed_bytes",
            "Bytes freed by image garbage collection.",
            registry=target,
        )

    def pull_finished(self, *, result: str, duration_s: float, downloaded_bytes: int) -> None:
        self.pulls.labels(result=result).inc()
        self.pull_duration.observe(duration_s)
        self.pull_bytes.inc(downloaded_bytes)

    def gc_finished(self, *, removed: int, freed_bytes: int) -> None:
        self.gc_removed.inc(removed)
        self.gc_freed.inc(freed_bytes)
