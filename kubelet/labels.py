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


# What a container runs: a change of any of these means a new container. Fields the API
# server fills in with defaults (imagePullPolicy, probe periods, terminationMessagePath) are
# left out on purpose, so that a new default in a newer API server never restarts every
# container of the cluster; so are probes and resources, which apply without a restart.
HASHED_FIELDS = (
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "volumeMounts",
    "securityContext",
    "tty",
    "stdin",
)


def container_hash(container: dict[str, Any]) -> str:
    """A stable hash of what a container runs; it changes exactly when that changes."""
    chosen = {key: container[key] for key in HASHED_FIELDS if container.get(key) not in (None, [])}
    canonical = json.dumps(chosen, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]
