"""The authorization matrix, against a real API server with mutual TLS.

Every row is one identity asking one verb on one resource, and whether the
server lets it through. "Allowed" means the request passed authorization: the
answer may still be NotFound or a validation error, which authorization does
not decide. The policy under test is the built-in one plus a few bindings
made by the admin (see `policy`).
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import secrets as token_bytes
from typing import Any

import pytest

from machinery import auth, errors, kinds
from machinery.client import ApiClient
from tests.authz.builders import binding, group, role, rule, service_account, user

Obj = dict[str, Any]

ADMIN = (auth.ADMIN_USER, (auth.MASTERS,))


@dataclasses.dataclass(frozen=True)
class Ask:
    verb: str
    resource: str
    namespace: str = ""
    name: str = ""


@pytest.fixture
async def policy(client: ApiClient, settled: Any) -> None:
    """Two namespaces and the bindings the rows below rely on, written by the admin."""
    for name in ("team-a", "team-b"):
        await client.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        )
    written = [
        await client.create(
            "roles",
            role("pod-reader", [rule(["get", "list", "watch"], ["pods"])], namespace="team-a"),
        ),
        await client.create(
            "roles",
            role(
                "one-config",
                [rule(["get", "update"], ["configmaps"], resourceNames=["allowed"])],
                namespace="team-a",
            ),
        ),
        await client.create(
            "roles",
            role("status-writer", [rule(["update"], ["pods/status"])], namespace="team-a"),
        ),
    ]
    for name in ("pod-reader", "one-config", "status-writer"):
        written.append(
            await client.create(
                "rolebindings",
                binding(f"alice-{name}", "Role", name, [user("alice")], namespace="team-a"),
            )
        )
    written.append(
        await client.create(
            "rolebindings",
            binding("viewers", "ClusterRole", "view", [group("viewers")], namespace="team-b"),
        )
    )
    written.append(
        await client.create(
            "rolebindings",
            # No namespace on the subject: the RoleBinding's own.
            binding(
                "robot-view", "ClusterRole", "view", [service_account("robot")], namespace="team-a"
            ),
        )
    )
    written.append(
        await client.create(
            "clusterrolebindings",
            binding("carol-edit", "ClusterRole", "edit", [user("carol")]),
        )
    )
    for obj in written:
        await settled(obj)


async def ask(api: ApiClient, q: Ask) -> str:
    """ "allowed" or "forbidden", and the Forbidden message on the side for the caller."""
    try:
        await _call(api, q)
    except errors.Forbidden:
        return "forbidden"
    except (errors.NotFound, errors.Invalid, errors.AlreadyExists, errors.BadRequest):
        pass  # authorization let it through; the object itself was not right
    return "allowed"


async def _call(api: ApiClient, q: Ask) -> None:
    if q.verb == "get":
        await api.get(q.resource, q.name, namespace=q.namespace)
    elif q.verb == "list":
        await api.list(q.resource, namespace=q.namespace)
    elif q.verb == "watch":
        # Refused at once, or open: the first event (a bookmark at worst, every second
        # on the test server) shows the stream was admitted.
        await asyncio.wait_for(_first_event(api, q), 30)
    elif q.verb == "delete":
        await api.delete(q.resource, q.name, namespace=q.namespace)
    elif q.verb == "create":
        await api.create(q.resource, _minimal(q), namespace=q.namespace)
    elif q.verb == "update":
        await api.update(q.resource, _minimal(q))
    elif q.verb == "update-status":
        await api.update_status(q.resource, _minimal(q))
    else:
        raise AssertionError(f"no such verb in this table: {q.verb}")


async def _first_event(api: ApiClient, q: Ask) -> None:
    async for _ in api.watch(q.resource, namespace=q.namespace):
        return


def _minimal(q: Ask) -> Obj:
    kind = kinds.by_resource(q.resource)
    assert kind is not None
    meta: Obj = {"name": q.name or "made-by-test"}
    if q.namespace:
        meta["namespace"] = q.namespace
    obj: Obj = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
    if q.resource == "pods":
        obj["spec"] = {"containers": [{"name": "c", "image": "busybox"}]}
    return obj


Row = tuple[str, tuple[str, tuple[str, ...]], Ask, str]

ROWS: list[Row] = [
    # The admin (system:masters) may do everything.
    ("admin-lists-secrets-everywhere", ADMIN, Ask("list", "secrets"), "allowed"),
    ("admin-deletes-a-node", ADMIN, Ask("delete", "nodes", name="n1"), "allowed"),
    ("admin-creates-a-clusterrole", ADMIN, Ask("create", "clusterroles", name="x"), "allowed"),
    ("admin-watches-pods", ADMIN, Ask("watch", "pods"), "allowed"),
    # Nobody bound: nothing at all.
    ("unbound-list-pods", ("mallory", ()), Ask("list", "pods", "default"), "forbidden"),
    ("unbound-get-node", ("mallory", ()), Ask("get", "nodes", name="n1"), "forbidden"),
    ("unbound-create-pod", ("mallory", ()), Ask("create", "pods", "default"), "forbidden"),
    # A Role and RoleBinding grant in their own namespace only.
    ("role-list-in-its-namespace", ("alice", ()), Ask("list", "pods", "team-a"), "allowed"),
    ("role-watch-in-its-namespace", ("alice", ()), Ask("watch", "pods", "team-a"), "allowed"),
    ("role-get-in-its-namespace", ("alice", ()), Ask("get", "pods", "team-a", "p"), "allowed"),
    ("role-not-in-another-namespace", ("alice", ()), Ask("list", "pods", "team-b"), "forbidden"),
    ("role-not-across-namespaces", ("alice", ()), Ask("list", "pods"), "forbidden"),
    ("role-only-its-verbs", ("alice", ()), Ask("delete", "pods", "team-a", "p"), "forbidden"),
    ("role-only-its-resources", ("alice", ()), Ask("list", "secrets", "team-a"), "forbidden"),
    # Subresources are their own resource.
    (
        "subresource-rule-allows-status",
        ("alice", ()),
        Ask("update-status", "pods", "team-a", "p"),
        "allowed",
    ),
    (
        "subresource-rule-not-the-object",
        ("alice", ()),
        Ask("update", "pods", "team-a", "p"),
        "forbidden",
    ),
    # resourceNames: that object only, never list or create.
    (
        "names-the-named-object",
        ("alice", ()),
        Ask("get", "configmaps", "team-a", "allowed"),
        "allowed",
    ),
    (
        "names-not-another-object",
        ("alice", ()),
        Ask("get", "configmaps", "team-a", "other"),
        "forbidden",
    ),
    ("names-never-list", ("alice", ()), Ask("list", "configmaps", "team-a"), "forbidden"),
    (
        "names-never-create",
        ("alice", ()),
        Ask("create", "configmaps", "team-a", "allowed"),
        "forbidden",
    ),
    # A ClusterRole through a RoleBinding: its rules, in that namespace only.
    (
        "clusterrole-via-rolebinding-grants",
        ("bob", ("viewers",)),
        Ask("list", "deployments", "team-b"),
        "allowed",
    ),
    (
        "clusterrole-via-rolebinding-its-namespace-only",
        ("bob", ("viewers",)),
        Ask("list", "pods", "team-a"),
        "forbidden",
    ),
    (
        "view-cannot-read-secrets",
        ("bob", ("viewers",)),
        Ask("list", "secrets", "team-b"),
        "forbidden",
    ),
    (
        "view-cannot-write",
        ("bob", ("viewers",)),
        Ask("create", "pods", "team-b"),
        "forbidden",
    ),
    # A ClusterRoleBinding: everywhere.
    ("clusterrolebinding-everywhere", ("carol", ()), Ask("list", "pods"), "allowed"),
    ("edit-writes-secrets", ("carol", ()), Ask("create", "secrets", "team-b"), "allowed"),
    ("edit-not-rbac", ("carol", ()), Ask("create", "clusterroles", name="x"), "forbidden"),
    ("edit-not-nodes", ("carol", ()), Ask("delete", "nodes", name="n1"), "forbidden"),
    # Built-in component identities.
    (
        "scheduler-lists-nodes",
        (auth.SCHEDULER_USER, ()),
        Ask("list", "nodes"),
        "allowed",
    ),
    (
        "scheduler-cannot-delete-nodes",
        (auth.SCHEDULER_USER, ()),
        Ask("delete", "nodes", name="n1"),
        "forbidden",
    ),
    (
        "scheduler-cannot-read-secrets",
        (auth.SCHEDULER_USER, ()),
        Ask("get", "secrets", "default", "s"),
        "forbidden",
    ),
    ("proxy-watches-services", (auth.PROXY_USER, ()), Ask("watch", "services"), "allowed"),
    ("proxy-cannot-list-pods", (auth.PROXY_USER, ()), Ask("list", "pods"), "forbidden"),
    (
        "bootstrapper-cannot-list-nodes",
        ("system:bootstrap:abcdef", (auth.BOOTSTRAPPERS_GROUP,)),
        Ask("list", "nodes"),
        "forbidden",
    ),
    # A name that looks like a node's is not a node without the group: RBAC decides.
    (
        "node-name-without-group-is-nobody",
        ("system:node:n1", ()),
        Ask("list", "pods"),
        "forbidden",
    ),
]


@pytest.mark.parametrize(
    ("identity", "request_", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS]
)
async def test_matrix(
    policy: None, connect: Any, identity: tuple[str, tuple[str, ...]], request_: Ask, expected: str
) -> None:
    name, groups = identity
    assert await ask(connect(name, groups), request_) == expected


async def test_forbidden_names_user_verb_and_resource(policy: None, connect: Any) -> None:
    with pytest.raises(errors.Forbidden) as caught:
        await connect("mallory").list("pods", namespace="team-a")
    message = caught.value.message
    assert 'user "mallory"' in message
    assert 'list pods in namespace "team-a"' in message
    assert "RBAC" in message  # and why: nothing is bound


async def test_forbidden_names_what_is_bound(policy: None, connect: Any) -> None:
    with pytest.raises(errors.Forbidden) as caught:
        await connect("alice").delete("pods", "p", namespace="team-a")
    message = caught.value.message
    assert 'delete pods "p" in namespace "team-a"' in message
    assert 'Role "pod-reader" via RoleBinding "team-a/alice-pod-reader"' in message


async def test_service_account_token_subject(
    policy: None, client: ApiClient, connect: Any, cluster_pki: Any, settled: Any
) -> None:
    """A RoleBinding to a ServiceAccount grants the requests made with its token."""
    account = await client.create(
        "serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}},
        namespace="team-a",
    )
    token = token_bytes.token_urlsafe(32)
    secret = await client.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "kubernetes.io/service-account-token",
            "metadata": {
                "name": "robot-token",
                "annotations": {
                    "kubernetes.io/service-account.name": "robot",
                    "kubernetes.io/service-account.uid": account["metadata"]["uid"],
                },
            },
            "data": {"token": base64.b64encode(token.encode()).decode()},
        },
        namespace="team-a",
    )
    await settled(secret)
    robot = connect("", credentials=cluster_pki.token_credentials(token))
    assert await ask(robot, Ask("list", "pods", "team-a")) == "allowed"
    assert await ask(robot, Ask("list", "pods", "team-b")) == "forbidden"
    assert await ask(robot, Ask("get", "secrets", "team-a", "robot-token")) == "forbidden"


async def test_grant_follows_binding_changes(
    policy: None, client: ApiClient, connect: Any, settled: Any
) -> None:
    """Deleting a binding takes the grant away; editing a role changes what it grants."""
    dave = connect("dave")
    made = await client.create(
        "rolebindings",
        binding("dave-reader", "Role", "pod-reader", [user("dave")], namespace="team-a"),
    )
    await settled(made)
    assert await ask(dave, Ask("list", "pods", "team-a")) == "allowed"
    assert await ask(dave, Ask("list", "services", "team-a")) == "forbidden"

    current = await client.get("roles", "pod-reader", namespace="team-a")
    current["rules"].append({"verbs": ["list"], "apiGroups": [""], "resources": ["services"]})
    await settled(await client.update("roles", current))
    assert await ask(dave, Ask("list", "services", "team-a")) == "allowed"

    gone = await client.delete("rolebindings", "dave-reader", namespace="team-a")
    await settled({**gone, "kind": "RoleBinding"})
    assert await ask(dave, Ask("list", "pods", "team-a")) == "forbidden"


async def test_role_ref_is_immutable(policy: None, client: ApiClient) -> None:
    current = await client.get("rolebindings", "viewers", namespace="team-b")
    current["roleRef"]["name"] = "edit"
    with pytest.raises(errors.Invalid) as caught:
        await client.update("rolebindings", current)
    assert "roleRef" in str(caught.value)
