"""Images on the node: a content-addressed store, a puller, garbage collection.

The runtime uses two things from here: `ImageStore.layers(image)`, the
unpacked layer directories bottom first in overlayfs form, and
`ImageStore.config(image)`, the ImageConfig (entrypoint, cmd, env, ...).
The kubelet uses `ImagePuller.ensure_image` before creating a container and
`collect_garbage` on its housekeeping tick.
"""

from .config import (
    ImageConfig,
    ImageConfigError,
    ProcessSpec,
    parse_image_config,
    resolve_process,
)
from .gc import GCPolicy, GCResult, bytes_to_free, collect_garbage
from .metrics import ImageMetrics, NoImageMetrics, PrometheusImageMetrics
from .puller import ImagePuller, PullPolicy, PullResult, RegistrySource
from .store import DiskUsage, ImageNotFound, ImageRecord, ImageStore
from .unpack import LayerError, unpack_layer

__all__ = [
    "DiskUsage",
    "GCPolicy",
    "GCResult",
    "ImageConfig",
    "ImageConfigError",
    "ImageMetrics",
    "ImageNotFound",
    "ImagePuller",
    "ImageRecord",
    "ImageStore",
    "LayerError",
    "NoImageMetrics",
    "ProcessSpec",
    "PrometheusImageMetrics",
    "PullPolicy",
    "PullResult",
    "RegistrySource",
    "bytes_to_free",
    "collect_garbage",
    "parse_image_config",
    "resolve_process",
    "unpack_layer",
]
