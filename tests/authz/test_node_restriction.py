"""Node restriction against a real API server: node A, node B, and what A may touch.

Each node's client presents the certificate the bring-up would give it
(system:node:<name> in system:nodes). The admin creates both Nodes, a Pod bound
to each, and the Secrets and ConfigMaps those Pods use; then node A's requests
are checked row by row.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from machinery import auth, errors
from machinery.client import ApiClient

Obj = dict[str, Any]
NODE_A, NODE_B = "node-a", "node-b"


def pod(name: str, node: str, *, secret: str, config: str = "") -> Obj:
    env = []
    if config:
        ref = {"configMapKeyRef": {"name": config, "key": "k"}}
        env.append({"name": "FROM_CONFIG", "valueFrom": ref})
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "busybox", "env": env}],
            "volumes": [{"name": "s", "secret": {"secretName": secret}}],
        },
    }


def node(name: str) -> Obj:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}


def secret(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"k": "dg=="},
    }


def config_map(name: str) -> Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": {"k": "v"},
    }


def lease(name: str, namespace: str = "kube-node-lease") -> Obj:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40},
    }


@pytest.fixture
async def cluster(client: ApiClient, settled: Any) -> dict[str, Obj]:
    made = {}
    for obj in (
        node(NODE_A),
        node(NODE_B),
        secret("secret-a"),
        secret("secret-b"),
        secret("unused"),
        config_map("config-a"),
        pod("pod-a", NODE_A, secret="secret-a", config="config-a"),
        pod("pod-a2", NODE_A, secret="secret-a"),
        pod("pod-b", NODE_B, secret="secret-b"),
    ):
        resource = {"Node": "nodes", "Secret": "secrets", "ConfigMap": "configmaps"}
        made[obj["metadata"]["name"]] = await client.create(
            resource.get(obj["kind"], "pods"), obj, namespace=obj["metadata"].get("namespace", "")
        )
    for obj in made.values():
        await settled(obj)
    return made


@pytest.fixture
def node_a(connect: Any) -> ApiClient:
    return connect(auth.node_user(NODE_A), (auth.NODES_GROUP,))


def status_of(cluster: dict[str, Obj], name: str) -> Obj:
    return {**cluster[name], "status": {"phase": "Running"}}


Call = Callable[[ApiClient, dict[str, Obj]], Awaitable[Any]]

ROWS: list[tuple[str, Call, str]] = [
    # Reads a kubelet needs.
    ("lists-pods", lambda c, _: c.list("pods"), "allowed"),
    ("lists-nodes", lambda c, _: c.list("nodes"), "allowed"),
    ("gets-other-node", lambda c, _: c.get("nodes", NODE_B), "allowed"),
    ("lists-services", lambda c, _: c.list("services"), "allowed"),
    ("lists-endpoints", lambda c, _: c.list("endpoints"), "allowed"),
    ("lists-namespaces", lambda c, _: c.list("namespaces"), "allowed"),
    ("lists-csrs", lambda c, _: c.list("certificatesigningrequests"), "allowed"),
    # Its own Node, not another.
    ("patches-own-node", lambda c, _: c.patch("nodes", NODE_A, {"metadata": {}}), "allowed"),
    (
        "patches-own-node-status",
        lambda c, _: c.patch("nodes", NODE_A, {"status": {}}, status=True),
        "allowed",
    ),
    ("patches-other-node", lambda c, _: c.patch("nodes", NODE_B, {"metadata": {}}), "forbidden"),
    (
        "updates-other-node-status",
        lambda c, k: c.update_status("nodes", k[NODE_B]),
        "forbidden",
    ),
    ("deletes-other-node", lambda c, _: c.delete("nodes", NODE_B), "forbidden"),
    ("creates-another-node", lambda c, _: c.create("nodes", node("node-c")), "forbidden"),
    # Its own Lease, not another.
    ("creates-own-lease", lambda c, _: c.create("leases", lease(NODE_A)), "allowed"),
    ("creates-other-lease", lambda c, _: c.create("leases", lease(NODE_B)), "forbidden"),
    (
        "creates-lease-elsewhere",
        lambda c, _: c.create("leases", lease(NODE_A, "kube-system")),
        "forbidden",
    ),
    # Pods bound to it: status and delete; never a spec.
    (
        "updates-status-of-own-pod",
        lambda c, k: c.update_status("pods", status_of(k, "pod-a")),
        "allowed",
    ),
    (
        "updates-status-of-other-nodes-pod",
        lambda c, k: c.update_status("pods", status_of(k, "pod-b")),
        "forbidden",
    ),
    (
        "patches-status-of-other-nodes-pod",
        lambda c, _: c.patch("pods", "pod-b", {"status": {}}, namespace="default", status=True),
        "forbidden",
    ),
    ("deletes-own-pod", lambda c, _: c.delete("pods", "pod-a2", namespace="default"), "allowed"),
    (
        "deletes-other-nodes-pod",
        lambda c, _: c.delete("pods", "pod-b", namespace="default"),
        "forbidden",
    ),
    ("updates-own-pod-spec", lambda c, k: c.update("pods", k["pod-a"]), "forbidden"),
    (
        "patches-own-pod-spec",
        lambda c, _: c.patch(
            "pods", "pod-a", {"metadata": {"labels": {"x": "y"}}}, namespace="default"
        ),
        "forbidden",
    ),
    (
        "creates-a-pod",
        lambda c, _: c.create("pods", pod("mine", NODE_A, secret="secret-b")),
        "forbidden",
    ),
    # Secrets and ConfigMaps its Pods use, by name only.
    (
        "gets-own-pods-secret",
        lambda c, _: c.get("secrets", "secret-a", namespace="default"),
        "allowed",
    ),
    (
        "gets-own-pods-configmap",
        lambda c, _: c.get("configmaps", "config-a", namespace="default"),
        "allowed",
    ),
    (
        "gets-other-nodes-secret",
        lambda c, _: c.get("secrets", "secret-b", namespace="default"),
        "forbidden",
    ),
    (
        "gets-unused-secret",
        lambda c, _: c.get("secrets", "unused", namespace="default"),
        "forbidden",
    ),
    ("lists-secrets", lambda c, _: c.list("secrets", namespace="default"), "forbidden"),
    ("lists-configmaps", lambda c, _: c.list("configmaps"), "forbidden"),
    # Events, yes; anything else, no.
    (
        "creates-an-event",
        lambda c, _: c.create(
            "events",
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": "e1", "namespace": "default"},
                "involvedObject": {"kind": "Node", "name": NODE_A},
                "reason": "Test",
            },
            namespace="default",
        ),
        "allowed",
    ),
    ("lists-deployments", lambda c, _: c.list("deployments"), "forbidden"),
    ("lists-clusterroles", lambda c, _: c.list("clusterroles"), "forbidden"),
]


@pytest.mark.parametrize(("call", "expected"), [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
async def test_node_a(
    cluster: dict[str, Obj], node_a: ApiClient, call: Call, expected: str
) -> None:
    try:
        await call(node_a, cluster)
        outcome = "allowed"
    except errors.Forbidden:
        outcome = "forbidden"
    assert outcome == expected


async def test_denial_says_whose_pod_it_is(cluster: dict[str, Obj], node_a: ApiClient) -> None:
    with pytest.raises(errors.Forbidden) as caught:
        await node_a.update_status("pods", status_of(cluster, "pod-b"))
    message = caught.value.message
    assert 'user "system:node:node-a"' in message
    assert 'update pods/status "pod-b"' in message
    assert 'bound to node "node-b"' in message


async def test_secret_access_follows_the_pods(
    cluster: dict[str, Obj], client: ApiClient, node_a: ApiClient, settled: Any
) -> None:
    """A Secret becomes readable when a Pod here starts using it, and stops being so when
    the last Pod here that used it is gone."""
    with pytest.raises(errors.Forbidden):
        await node_a.get("secrets", "unused", namespace="default")
    made = await client.create("pods", pod("pod-a3", NODE_A, secret="unused"))
    await settled(made)
    assert (await node_a.get("secrets", "unused", namespace="default"))["metadata"]["name"]

    gone = await client.delete("pods", "pod-a3", namespace="default", grace_period_seconds=0)
    await settled({**gone, "kind": "Pod"})
    if (gone.get("metadata") or {}).get("deletionTimestamp"):
        # Graceful: the kubelet finishes the deletion, as node A may for its own Pod.
        final = await node_a.delete("pods", "pod-a3", namespace="default", grace_period_seconds=0)
        await settled({**final, "kind": "Pod"})
    with pytest.raises(errors.Forbidden):
        await node_a.get("secrets", "unused", namespace="default")
    # secret-a is still used by pod-a.
    assert await node_a.get("secrets", "secret-a", namespace="default")


async def test_a_node_in_another_group_gets_nothing_from_the_node_authorizer(
    cluster: dict[str, Obj], connect: Any
) -> None:
    """The node rules are for system:node:<name> in system:nodes; anyone else is RBAC's."""
    impostor = connect("someone", (auth.NODES_GROUP,))
    with pytest.raises(errors.Forbidden):
        await impostor.list("pods")
