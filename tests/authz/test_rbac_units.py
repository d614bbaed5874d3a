"""The parts of authorization that are values: rule matching, validation, references, policy.

Rule matching and validation are pure; reconciling the built-in policy runs on
the test's real API server.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from apiserver.authz import bootstrap
from apiserver.authz.node import pod_references
from apiserver.authz.rbac import Rule
from machinery import defaults, validation
from machinery.auth import Attributes
from machinery.clock import RealClock
from tests.authz.builders import binding, group, role, rule, service_account, user

# -- rule matching ---------------------------------------------------------------------------

RULES: list[tuple[str, dict[str, Any], Attributes, bool]] = [
    ("verb-and-resource", rule(["get"], ["pods"]), Attributes("get", "pods"), True),
    ("other-verb", rule(["get"], ["pods"]), Attributes("delete", "pods"), False),
    ("other-resource", rule(["get"], ["pods"]), Attributes("get", "secrets"), False),
    ("other-group", rule(["get"], ["pods"]), Attributes("get", "pods", "apps"), False),
    ("star-verb", rule(["*"], ["pods"]), Attributes("patch", "pods"), True),
    (
        "star-group",
        rule(["get"], ["deployments"], "*"),
        Attributes("get", "deployments", "apps"),
        True,
    ),
    (
        "star-resource-covers-subresources",
        rule(["get"], ["*"]),
        Attributes("get", "pods", subresource="log"),
        True,
    ),
    (
        "object-rule-not-its-subresource",
        rule(["update"], ["pods"]),
        Attributes("update", "pods", subresource="status"),
        False,
    ),
    (
        "subresource-rule",
        rule(["update"], ["pods/status"]),
        Attributes("update", "pods", subresource="status"),
        True,
    ),
    (
        "subresource-rule-not-the-object",
        rule(["update"], ["pods/status"]),
        Attributes("update", "pods"),
        False,
    ),
    (
        "any-resources-subresource",
        rule(["update"], ["*/status"]),
        Attributes("update", "nodes", subresource="status"),
        True,
    ),
    (
        "any-subresource-of-a-resource",
        rule(["get"], ["pods/*"]),
        Attributes("get", "pods", subresource="log"),
        True,
    ),
    (
        "named-object",
        rule(["get"], ["configmaps"], resourceNames=["a"]),
        Attributes("get", "configmaps", name="a"),
        True,
    ),
    (
        "other-object",
        rule(["get"], ["configmaps"], resourceNames=["a"]),
        Attributes("get", "configmaps", name="b"),
        False,
    ),
    (
        "names-never-match-list",
        rule(["list"], ["configmaps"], resourceNames=["a"]),
        Attributes("list", "configmaps"),
        False,
    ),
    (
        "names-never-match-create",
        rule(["create"], ["configmaps"], resourceNames=["a"]),
        Attributes("create", "configmaps", name="a"),
        False,
    ),
]


@pytest.mark.parametrize(
    ("raw", "attrs", "allowed"), [r[1:] for r in RULES], ids=[r[0] for r in RULES]
)
def test_rule_matches(raw: dict[str, Any], attrs: Attributes, allowed: bool) -> None:
    parsed = Rule.parse(raw)
    assert parsed is not None
    assert parsed.allows(attrs) is allowed


def test_url_rules_grant_nothing() -> None:
    assert Rule.parse({"verbs": ["get"], "nonResourceURLs": ["/healthz"]}) is None


# -- validation ------------------------------------------------------------------------------


def causes(obj: dict[str, Any]) -> list[str]:
    obj = copy.deepcopy(obj)
    defaults.apply_defaults(obj)
    return [str(c) for c in validation.validate(obj)]


INVALID: list[tuple[str, dict[str, Any], str]] = [
    (
        "rule-without-verbs",
        role("r", [{"verbs": [], "apiGroups": [""], "resources": ["pods"]}]),
        "rules[0].verbs: Required value",
    ),
    (
        "rule-without-groups",
        role("r", [{"verbs": ["get"], "resources": ["pods"]}]),
        "rules[0].apiGroups: Required value",
    ),
    (
        "rule-without-resources",
        role("r", [{"verbs": ["get"], "apiGroups": [""]}]),
        "rules[0].resources: Required value",
    ),
    (
        "bad-resource",
        role("r", [rule(["get"], ["Pods"])]),
        'rules[0].resources[0]: Invalid value: "Pods"',
    ),
    (
        "urls-in-a-role",
        role("r", [{"verbs": ["get"], "nonResourceURLs": ["/x"]}], namespace="ns"),
        "rules[0].nonResourceURLs: Forbidden",
    ),
    (
        "clusterrolebinding-to-a-role",
        binding("b", "Role", "r", [user("u")]),
        'roleRef.kind: Unsupported value: "Role"',
    ),
    (
        "binding-to-another-kind",
        binding("b", "Deployment", "r", [user("u")], namespace="ns"),
        'roleRef.kind: Unsupported value: "Deployment"',
    ),
    (
        "binding-to-another-group",
        {
            **binding("b", "ClusterRole", "r", []),
            "roleRef": {"apiGroup": "x", "kind": "ClusterRole", "name": "r"},
        },
        'roleRef.apiGroup: Unsupported value: "x"',
    ),
    (
        "binding-without-role-ref",
        {k: v for k, v in binding("b", "ClusterRole", "r", []).items() if k != "roleRef"},
        "roleRef: Required value",
    ),
    (
        "unknown-subject-kind",
        binding("b", "ClusterRole", "r", [{"kind": "Robot", "name": "x"}]),
        'subjects[0].kind: Unsupported value: "Robot"',
    ),
    (
        "service-account-without-namespace-cluster-wide",
        binding("b", "ClusterRole", "r", [service_account("robot")]),
        "subjects[0].namespace: Required value",
    ),
    (
        "user-with-a-namespace",
        binding("b", "ClusterRole", "r", [{**user("u"), "namespace": "ns"}]),
        "subjects[0].namespace: Forbidden",
    ),
    ("name-with-a-slash", role("a/b", []), "metadata.name: Invalid value"),
]


@pytest.mark.parametrize(("obj", "expected"), [r[1:] for r in INVALID], ids=[r[0] for r in INVALID])
def test_invalid_rbac_objects(obj: dict[str, Any], expected: str) -> None:
    found = causes(obj)
    assert any(expected in c for c in found), found


VALID = [
    ("builtin-roles", bootstrap.cluster_roles()),
    ("builtin-bindings", bootstrap.cluster_role_bindings()),
    (
        "rolebinding-to-a-clusterrole",
        [binding("b", "ClusterRole", "view", [group("g"), service_account("sa")], namespace="ns")],
    ),
    (
        "role-with-names",
        [role("r", [rule(["get"], ["configmaps"], resourceNames=["x"])], namespace="ns")],
    ),
]


@pytest.mark.parametrize("objects", [v[1] for v in VALID], ids=[v[0] for v in VALID])
def test_valid_rbac_objects(objects: list[dict[str, Any]]) -> None:
    for obj in objects:
        assert causes(obj) == [], obj["metadata"]["name"]


def test_subject_api_group_is_defaulted() -> None:
    obj = binding(
        "b",
        "ClusterRole",
        "r",
        [{"kind": "User", "name": "u"}, {"kind": "ServiceAccount", "name": "s", "namespace": "n"}],
    )
    defaults.apply_defaults(obj)
    assert [s["apiGroup"] for s in obj["subjects"]] == ["rbac.authorization.k8s.io", ""]


def test_role_ref_cannot_change() -> None:
    old = binding("b", "ClusterRole", "view", [user("u")])
    new = copy.deepcopy(old)
    new["roleRef"]["name"] = "cluster-admin"
    assert [c.field for c in validation.validate_update(old, new)] == ["roleRef"]
    more_subjects = copy.deepcopy(old)
    more_subjects["subjects"].append(user("v"))
    assert validation.validate_update(old, more_subjects) == []


# -- what a Pod refers to ----------------------------------------------------------------------

REFERENCES = [
    (
        "secret-volume",
        {"volumes": [{"name": "v", "secret": {"secretName": "s"}}]},
        {("secrets", "s")},
    ),
    (
        "configmap-volume",
        {"volumes": [{"name": "v", "configMap": {"name": "c"}}]},
        {("configmaps", "c")},
    ),
    (
        "projected",
        {
            "volumes": [
                {
                    "name": "v",
                    "projected": {
                        "sources": [{"secret": {"name": "s"}}, {"configMap": {"name": "c"}}]
                    },
                }
            ]
        },
        {("secrets", "s"), ("configmaps", "c")},
    ),
    (
        "env-value-from",
        {
            "containers": [
                {
                    "name": "c",
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "c", "key": "k"}}},
                    ],
                }
            ]
        },
        {("secrets", "s"), ("configmaps", "c")},
    ),
    (
        "env-from-in-an-init-container",
        {
            "initContainers": [
                {
                    "name": "i",
                    "envFrom": [{"secretRef": {"name": "s"}}, {"configMapRef": {"name": "c"}}],
                }
            ]
        },
        {("secrets", "s"), ("configmaps", "c")},
    ),
    ("image-pull-secret", {"imagePullSecrets": [{"name": "pull"}]}, {("secrets", "pull")}),
    ("nothing", {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}]}, set()),
]


@pytest.mark.parametrize(
    ("spec", "expected"), [r[1:] for r in REFERENCES], ids=[r[0] for r in REFERENCES]
)
def test_pod_references(spec: dict[str, Any], expected: set[tuple[str, str]]) -> None:
    assert {ref for ref in pod_references(spec) if ref[1]} == expected


# -- reconciling the built-in policy -------------------------------------------------------------


async def test_reconcile_restores_missing_rules_and_keeps_added_ones(
    apiserver: Any, client: Any
) -> None:
    dns = await client.get("clusterroles", "system:kube-dns")
    extra = rule(["get"], ["configmaps"])
    dns["rules"] = [extra]  # an administrator's rule, and the built-in ones removed
    await client.update("clusterroles", dns)
    await bootstrap.reconcile(apiserver.registry, clock=RealClock())
    after = await client.get("clusterroles", "system:kube-dns")
    assert extra in after["rules"]
    assert all(r in after["rules"] for r in _builtin("system:kube-dns")["rules"])


async def test_reconcile_leaves_an_object_marked_not_to_update(apiserver: Any, client: Any) -> None:
    dns = await client.get("clusterroles", "system:kube-dns")
    dns["metadata"]["annotations"][bootstrap.AUTOUPDATE] = "false"
    dns["rules"] = []
    await client.update("clusterroles", dns)
    await bootstrap.reconcile(apiserver.registry, clock=RealClock())
    assert not (await client.get("clusterroles", "system:kube-dns")).get("rules")


async def test_reconcile_recreates_a_deleted_binding_and_adds_subjects(
    apiserver: Any, client: Any
) -> None:
    await client.delete("clusterrolebindings", "system:kube-scheduler")
    proxy = await client.get("clusterrolebindings", "system:kube-proxy")
    proxy["subjects"] = [user("someone-else")]
    await client.update("clusterrolebindings", proxy)
    await bootstrap.reconcile(apiserver.registry, clock=RealClock())
    assert await client.get("clusterrolebindings", "system:kube-scheduler")
    subjects = (await client.get("clusterrolebindings", "system:kube-proxy"))["subjects"]
    assert [s["name"] for s in subjects] == ["someone-else", "system:kube-proxy"]


def _builtin(name: str) -> dict[str, Any]:
    return next(r for r in bootstrap.cluster_roles() if r["metadata"]["name"] == name)


def test_builtin_objects_are_labelled() -> None:
    for obj in [*bootstrap.cluster_roles(), *bootstrap.cluster_role_bindings()]:
        assert obj["metadata"]["labels"] == {bootstrap.BOOTSTRAP_LABEL: bootstrap.BOOTSTRAP_VALUE}
