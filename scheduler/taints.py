"""Taints on Nodes and the tolerations of Pods, parsed once into values.

A toleration matches a taint when the effects agree (an empty toleration
effect matches every effect), the keys agree (an empty key with operator
Exists matches every key) and, for operator Equal, the values are equal.
NoSchedule and NoExecute taints keep Pods off a node unless tolerated;
PreferNoSchedule only lowers a node's score.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

NO_SCHEDULE = "NoSchedule"
PREFER_NO_SCHEDULE = "PreferNoSchedule"
NO_EXECUTE = "NoExecute"
EFFECTS = (NO_SCHEDULE, PREFER_NO_SCHEDULE, NO_EXECUTE)

# Well-known taint keys the scheduler itself reasons about.
UNSCHEDULABLE_KEY = "node.kubernetes.io/unschedulable"
NOT_READY_KEY = "node.kubernetes.io/not-ready"
UNREACHABLE_KEY = "node.kubernetes.io/unreachable"


@dataclasses.dataclass(frozen=True, slots=True)
class Taint:
    key: str
    value: str
    effect: str

    def __str__(self) -> str:
        # Kubernetes' own rendering in scheduling messages: {key: value}.
        return f"{{{self.key}: {self.value}}}"


@dataclasses.dataclass(frozen=True, slots=True)
class Toleration:
    key: str = ""
    operator: str = "Equal"
    value: str = ""
    effect: str = ""
    toleration_seconds: int | None = None

    def tolerates(self, taint: Taint) -> bool:
        if self.effect and self.effect != taint.effect:
            return False
        if self.key and self.key != taint.key:
            return False
        if self.operator == "Exists":
            return True
        return self.value == taint.value


def tolerated(taint: Taint, tolerations: Iterable[Toleration]) -> bool:
    return any(t.tolerates(taint) for t in tolerations)


def parse_taints(raw: Any, path: str, errors: list[str]) -> tuple[Taint, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{path}: must be a list")
        return ()
    taints = []
    for i, item in enumerate(raw):
        here = f"{path}[{i}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("key"), str):
            errors.append(f"{here}: must be an object with a string key")
            continue
        effect = item.get("effect")
        if effect not in EFFECTS:
            errors.append(f"{here}.effect: {effect!r} is not one of {', '.join(EFFECTS)}")
            continue
        taints.append(Taint(item["key"], str(item.get("value") or ""), effect))
    return tuple(taints)


def parse_tolerations(raw: Any, path: str, errors: list[str]) -> tuple[Toleration, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        errors.append(f"{path}: must be a list")
        return ()
    parsed = (_toleration(item, f"{path}[{i}]", errors) for i, item in enumerate(raw))
    return tuple(t for t in parsed if t is not None)


def _toleration(item: Any, path: str, errors: list[str]) -> Toleration | None:
    if not isinstance(item, Mapping):
        errors.append(f"{path}: must be an object")
        return None
    key = item.get("key") or ""
    operator = item.get("operator") or "Equal"
    value = item.get("value") or ""
    effect = item.get("effect") or ""
    seconds = item.get("tolerationSeconds")
    problem = _toleration_problem(key, operator, value, effect, seconds)
    if problem:
        errors.append(f"{path}: {problem}")
        return None
    return Toleration(key, operator, value, effect, seconds)


def _toleration_problem(key: Any, operator: Any, value: Any, effect: Any, seconds: Any) -> str:
    if not isinstance(key, str) or not isinstance(value, str):
        return "key and value must be strings"
    if operator not in ("Exists", "Equal"):
        return f"operator {operator!r} is not one of Exists, Equal"
    if operator == "Exists" and value:
        return f"operator Exists takes no value, got {value!r}"
    if not key and operator != "Exists":
        return "an empty key needs operator Exists"
    if effect and effect not in EFFECTS:
        return f"effect {effect!r} is not one of {', '.join(EFFECTS)}"
    if seconds is not None and (isinstance(seconds, bool) or not isinstance(seconds, int)):
        return f"tolerationSeconds must be an integer, got {seconds!r}"
    return ""
