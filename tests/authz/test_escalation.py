"""Writing roles and bindings never grants more than the writer holds."""

from __future__ import annotations

from typing import Any

import pytest

from machinery import errors
from tests.authz.builders import binding, role, rule, user

NS = "team"


@pytest.fixture
async def lead(client: Any, connect: Any, settled: Any) -> Any:
    """A namespace administrator: the built-in admin ClusterRole, bound in NS only."""
    await client.create(
        "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    )
    made = await client.create(
        "rolebindings", binding("lead-admin", "ClusterRole", "admin", [user("lead")], namespace=NS)
    )
    await settled(made)
    return connect("lead")


CASES = [
    (
        "role-within-own-permissions",
        role("reader", [rule(["get", "list"], ["pods"])], namespace=NS),
        None,
    ),
    (
        "role-with-all-verbs-on-everything",
        role("god", [rule(["*"], ["*"], "*")], namespace=NS),
        "it would grant what the user does not hold",
    ),
    (
        "role-on-nodes-which-admin-lacks",
        role("nodes", [rule(["delete"], ["nodes"])], namespace=NS),
        'delete nodes in namespace "team"',
    ),
    (
        "clusterrole-without-the-right-to-write-one",
        role("reader-everywhere", [rule(["get"], ["pods"])]),
        "cannot create clusterroles",
    ),
    (
        "binding-to-cluster-admin",
        binding("me-root", "ClusterRole", "cluster-admin", [user("lead")], namespace=NS),
        "cannot write RoleBinding 'me-root' to ClusterRole 'cluster-admin'",
    ),
    (
        "binding-to-view-which-admin-covers",
        binding("friend-view", "ClusterRole", "view", [user("friend")], namespace=NS),
        None,
    ),
    (
        "binding-to-a-missing-role",
        binding("ghost", "Role", "no-such-role", [user("friend")], namespace=NS),
        "it does not exist",
    ),
    (
        "clusterrolebinding",
        binding("me-view-everywhere", "ClusterRole", "view", [user("lead")]),
        "cannot create clusterrolebindings",
    ),
]


@pytest.mark.parametrize("obj, refusal", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_writer_cannot_grant_beyond_itself(lead: Any, obj: dict, refusal: str | None) -> None:
    resource = obj["kind"].lower() + "s"
    if refusal is None:
        created = await lead.create(resource, obj)
        assert created["metadata"]["name"] == obj["metadata"]["name"]
        return
    with pytest.raises(errors.Forbidden) as refused:
        await lead.create(resource, obj)
    assert refusal in refused.value.message


async def test_update_and_patch_are_judged_on_the_result(lead: Any, settled: Any) -> None:
    made = await lead.create("roles", role("grow", [rule(["get"], ["pods"])], namespace=NS))
    await settled(made)
    grown = {**made, "rules": [rule(["get"], ["pods"]), rule(["delete"], ["nodes"])]}
    with pytest.raises(errors.Forbidden, match="delete nodes"):
        await lead.update("roles", grown)
    with pytest.raises(errors.Forbidden, match="delete nodes"):
        await lead.patch("roles", "grow", {"rules": grown["rules"]}, namespace=NS)
    kept = await lead.get("roles", "grow", namespace=NS)
    assert kept["rules"] == made["rules"]


async def test_escalate_and_bind_verbs_lift_the_check(
    client: Any, connect: Any, settled: Any, lead: Any
) -> None:
    granter = role(
        "granter",
        [
            rule(["create"], ["roles", "rolebindings"], "rbac.authorization.k8s.io"),
            rule(["escalate", "bind"], ["roles", "clusterroles"], "rbac.authorization.k8s.io"),
        ],
        namespace=NS,
    )
    await settled(await client.create("roles", granter))
    made = await client.create(
        "rolebindings", binding("granter", "Role", "granter", [user("granter")], namespace=NS)
    )
    await settled(made)
    api = connect("granter")
    await api.create("roles", role("anything", [rule(["*"], ["*"], "*")], namespace=NS))
    await api.create(
        "rolebindings",
        binding("anyone-admin", "ClusterRole", "cluster-admin", [user("x")], namespace=NS),
    )


async def test_namespaced_grants_do_not_cover_a_clusterrole(
    client: Any, connect: Any, settled: Any, lead: Any
) -> None:
    writer = role(
        "clusterrole-writer", [rule(["create"], ["clusterroles"], "rbac.authorization.k8s.io")]
    )
    await settled(await client.create("clusterroles", writer))
    made = await client.create(
        "clusterrolebindings",
        binding("lead-writes-clusterroles", "ClusterRole", "clusterrole-writer", [user("lead")]),
    )
    await settled(made)
    with pytest.raises(errors.Forbidden, match="get pods at cluster scope"):
        await lead.create("clusterroles", role("pods-everywhere", [rule(["get"], ["pods"])]))


@pytest.mark.parametrize(
    "obj",
    [
        {"kind": ["Role"]},
        {"kind": "Role", "metadata": [], "rules": "all"},
        {"kind": "Role", "rules": [{"verbs": "get", "resources": [1, None]}, 7]},
        {"kind": "RoleBinding", "roleRef": "cluster-admin"},
        {"kind": "ClusterRoleBinding", "roleRef": {"kind": ["ClusterRole"], "name": 3}},
        [],
    ],
    ids=["kind-list", "metadata-list", "odd-rules", "roleref-string", "roleref-odd", "not-object"],
)
def test_malformed_objects_are_left_to_validation(obj: Any) -> None:
    """The check runs before validation: a malformed object passes it to get Invalid there."""
    from apiserver.authz.escalation import EscalationCheck
    from machinery.auth import Decision, UserInfo

    check = EscalationCheck(lambda user, attrs: Decision(False), {}, key_of=lambda *a: "")
    check.check(UserInfo("someone"), obj)
