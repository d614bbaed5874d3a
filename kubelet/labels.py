"""Labels and annotations the kubelet writes on sandboxes and containers in the runtime.

They are what a restarted kubelet reads back to adopt what is running (see the module
docstring of podworker.py): which Pod a sandbox or container belongs to, which container
of the spec an instance runs, the hash of that spec (a changed spec means a restart), and
the image reference and imageID the container was made from. Keys follow Kubernetes'
io.kubernetes.* names where Kubernetes has one.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

POD_UID = "io.kubernetes.pod.uid"
POD_NAME = "io.kubernetes.pod.name"
POD_NAMESPACE = "io.kubernetes.pod.namespace"
CONTAINER_NAME = "io.kubernetes.container.name"

CONTAINER_HASH = "io.kubernetes.container.hash"
RESTART_COUNT = "io.kubernetes.container.restartCount"
CONTAINER_KIND = "kubelite.io/container-kind"  # "init" or "app"
IMAGE = "kubelite.io/image"  # the normalized reference the container was made from
IMAGE_ID = "kubelite.io/image-id"  # the imageID a status reports
TERMINATION_GRACE = "io.kubernetes.pod.terminationGracePeriod"


def pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    meta = pod.get("metadata", {})
    return {
        POD_UID: meta.get("uid", ""),
        POD_NAME: meta.get("name", ""),
        POD_NAMESPACE: meta.get("namespace", ""),
    }


def container_hash(container: dict[str, Any]) -> str:
    """A stable hash of a container's spec: it changes exactly when the spec changes.

    The spec comes defaulted from the API server, so an object that round-trips through
    the API keeps its hash.
    """
    canonical = json.dumps(container, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
