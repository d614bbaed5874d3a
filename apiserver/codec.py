"""How objects are written to etcd, and how their resourceVersion is added back.

An object is stored as compact JSON with apiVersion, kind and metadata as
its first three keys and without metadata.resourceVersion (the version is
the key's etcd revision). Because metadata always comes third, the stored
bytes can get their resourceVersion spliced in after the first
`"metadata":{` without parsing and re-serializing the whole object, which
the watch cache does for every event.
"""

from __future__ import annotations

import json
from typing import Any

_METADATA = b'"metadata":{'


def encode(obj: dict[str, Any]) -> bytes:
    meta = dict(obj.get("metadata") or {})
    meta.pop("resourceVersion", None)
    ordered = {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "metadata": meta}
    for key, value in obj.items():
        if key not in ordered:
            ordered[key] = value
    return json.dumps(ordered, separators=(",", ":")).encode()


def with_version(data: bytes, revision: int) -> bytes:
    """The stored bytes with metadata.resourceVersion set to revision."""
    at = data.find(_METADATA)
    if at < 0:
        raise ValueError("stored object has no metadata")
    at += len(_METADATA)
    field = b'"resourceVersion":"%d"' % revision
    if data[at : at + 1] != b"}":
        field += b","
    return data[:at] + field + data[at:]


def decode(data: bytes, revision: int) -> dict[str, Any]:
    obj = json.loads(data)
    obj["metadata"]["resourceVersion"] = str(revision)
    return obj
