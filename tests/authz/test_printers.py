"""kctl's tables and descriptions of the RBAC kinds (pure: objects in, text out)."""

from __future__ import annotations

from cli import describe, printers
from machinery import kinds
from tests.authz.builders import binding, group, role, rule, service_account, user

STAMP = "2026-01-01T00:00:00Z"


def stamped(obj: dict) -> dict:
    obj["metadata"]["creationTimestamp"] = STAMP
    return obj


def test_binding_table_names_role_and_wide_subjects() -> None:
    made = stamped(
        binding(
            "readers",
            "ClusterRole",
            "view",
            [user("alice"), group("team"), service_account("robot", "ci")],
            namespace="ci",
        )
    )
    kind = kinds.by_kind("RoleBinding")
    assert kind is not None
    lines = printers.table(kind, [made], wide=True).splitlines()
    assert lines[0].split() == ["NAME", "ROLE", "AGE", "USERS", "GROUPS", "SERVICEACCOUNTS"]
    assert lines[1].split()[:2] == ["readers", "ClusterRole/view"]
    assert lines[1].split()[-3:] == ["alice", "team", "ci/robot"]


def test_role_description_lists_each_resource_with_its_verbs() -> None:
    made = stamped(
        role(
            "r",
            [rule(["get"], ["pods", "pods/log"]), rule(["get"], ["leases"], "coordination.k8s.io")],
            namespace="ns",
        )
    )
    kind = kinds.by_kind("Role")
    assert kind is not None
    text = describe.describe(kind, made, [], [])
    rows = [line.split() for line in text.splitlines()]
    assert ["pods", "[]", "[]", "[get]"] in rows
    assert ["pods/log", "[]", "[]", "[get]"] in rows
    assert ["leases.coordination.k8s.io", "[]", "[]", "[get]"] in rows


def test_binding_description_shows_role_and_subjects() -> None:
    made = stamped(binding("b", "ClusterRole", "edit", [user("carol")]))
    kind = kinds.by_kind("ClusterRoleBinding")
    assert kind is not None
    text = describe.describe(kind, made, [], [])
    assert "  Kind:  ClusterRole\n  Name:  edit" in text
    assert ["User", "carol"] in [line.split() for line in text.splitlines()]
