"""Field selectors: `spec.nodeName=node-1,status.phase!=Succeeded`.

As in Kubernetes, only a few fields per kind can be selected on (every kind
has metadata.name and metadata.namespace); asking for another is an error that
names the field, not an empty result. Values compare as strings; an absent
field reads as "" so `spec.nodeName=` selects unscheduled Pods.
"""

from __future__ import annotations

import dataclasses
from typing import Any

_COMMON = ("metadata.name", "metadata.namespace")
SELECTABLE: dict[str, tuple[str, ...]] = {
    "pods": (
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    ),
    "events": (
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "type",
    ),
    "nodes": ("spec.unschedulable",),
    "namespaces": ("status.phase",),
    "replicasets": ("status.replicas",),
}


@dataclasses.dataclass(frozen=True)
class FieldRequirement:
    field: str
    value: str
    equal: bool


@dataclasses.dataclass(frozen=True)
class FieldSelector:
    requirements: tuple[FieldRequirement, ...] = ()

    @classmethod
    def parse(cls, text: str, *, resource: str) -> FieldSelector:
        """Parse text for resource; ValueError names the unsupported field or bad term."""
        allowed = _COMMON + SELECTABLE.get(resource, ())
        requirements = []
        for term in filter(None, (t.strip() for t in text.split(","))):
            if "!=" in term:
                field, value, equal = *term.split("!=", 1), False
            elif "==" in term:
                field, value, equal = *term.split("==", 1), True
            elif "=" in term:
                field, value, equal = *term.split("=", 1), True
            else:
                raise ValueError(f"invalid field selector term {term!r}: expected field=value")
            field = field.strip()
            if field not in allowed:
                raise ValueError(
                    f'field label not supported for {resource}: "{field}" '
                    f"(supported: {', '.join(allowed)})"
                )
            requirements.append(FieldRequirement(field, value.strip(), equal))
        return cls(tuple(requirements))

    @property
    def empty(self) -> bool:
        return not self.requirements

    def matches(self, obj: dict[str, Any]) -> bool:
        return all((field_value(obj, r.field) == r.value) == r.equal for r in self.requirements)

    def value_of(self, field: str) -> str | None:
        """The value an equality requirement fixes for field, for index look-ups."""
        for r in self.requirements:
            if r.field == field and r.equal:
                return r.value
        return None

    def __str__(self) -> str:
        return ",".join(f"{r.field}{'=' if r.equal else '!='}{r.value}" for r in self.requirements)


def field_value(obj: dict[str, Any], path: str) -> str:
    value: Any = obj
    for part in path.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
