"""Small accessors over Kubernetes-shaped objects.

Objects are plain JSON dicts, exactly as the API serves them: the JSON
Schemas in machinery/schemas are their single definition, and a typed copy of
every kind would only drift from it. These helpers are the one place that
knows where metadata fields live, so the rest of the code does not index
dicts by hand.
"""

from __future__ import annotations

import copy
from typing import Any, NewType

Obj = dict[str, Any]
UID = NewType("UID", str)
NodeName = NewType("NodeName", str)


def metadata(obj: Obj) -> dict[str, Any]:
    return obj.setdefault("metadata", {})


def name(obj: Obj) -> str:
    return obj.get("metadata", {}).get("name", "")


def namespace(obj: Obj) -> str:
    return obj.get("metadata", {}).get("namespace", "")


def uid(obj: Obj) -> UID:
    return UID(obj.get("metadata", {}).get("uid", ""))


def labels(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("labels") or {}


def annotations_of(obj: Obj) -> dict[str, str]:
    return obj.get("metadata", {}).get("annotations") or {}


def resource_version(obj: Obj) -> str:
    return obj.get("metadata", {}).get("resourceVersion", "")


def ref(obj: Obj) -> str:
    """namespace/name, or name for a cluster-scoped object: the form logs and keys use."""
    ns = namespace(obj)
    return f"{ns}/{name(obj)}" if ns else name(obj)


def owner_references(obj: Obj) -> list[dict[str, Any]]:
    return obj.get("metadata", {}).get("ownerReferences") or []


def controller_of(obj: Obj) -> dict[str, Any] | None:
    """The ownerReference marked controller: true, if any."""
    for owner in owner_references(obj):
        if owner.get("controller"):
            return owner
    return None


def is_deleting(obj: Obj) -> bool:
    return bool(obj.get("metadata", {}).get("deletionTimestamp"))


def finalizers(obj: Obj) -> list[str]:
    return obj.get("metadata", {}).get("finalizers") or []


def owner_reference(owner: Obj, *, controller: bool = True) -> dict[str, Any]:
    """An ownerReference pointing at owner, as controllers set on what they create."""
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": name(owner),
        "uid": uid(owner),
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def deep_copy(obj: Obj) -> Obj:
    return copy.deepcopy(obj)


def condition(obj: Obj, kind: str) -> dict[str, Any] | None:
    for cond in obj.get("status", {}).get("conditions") or []:
        if cond.get("type") == kind:
            return cond
    return None
