"""Builders of RBAC objects for the authorization tests."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def role(name: str, rules: list[Obj], *, namespace: str = "") -> Obj:
    kind = "Role" if namespace else "ClusterRole"
    meta: Obj = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "rules": rules,
    }


def binding(
    name: str, role_kind: str, role_name: str, subjects: list[Obj], *, namespace: str = ""
) -> Obj:
    kind = "RoleBinding" if namespace else "ClusterRoleBinding"
    meta: Obj = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role_name},
        "subjects": subjects,
    }


def user(name: str) -> Obj:
    return {"kind": "User", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def group(name: str) -> Obj:
    return {"kind": "Group", "apiGroup": "rbac.authorization.k8s.io", "name": name}


def service_account(name: str, namespace: str = "") -> Obj:
    out: Obj = {"kind": "ServiceAccount", "name": name}
    if namespace:
        out["namespace"] = namespace
    return out


def rule(verbs: list[str], resources: list[str], group_: str = "", **extra: Any) -> Obj:
    return {"verbs": verbs, "apiGroups": [group_], "resources": resources, **extra}
