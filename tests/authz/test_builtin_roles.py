"""Each built-in role can do what its component does, and not more.

The requests below are the ones each component makes, read from its code
(its informers' list and watch, its client's writes, events and leader election
from machinery), asked of the real API server's authorizers with the built-in
policy the server wrote at start. A component whose code starts asking something
new fails here first, naming the request.
"""

from __future__ import annotations

from typing import Any

import pytest

from apiserver.authz import bootstrap
from machinery import auth, kinds
from machinery.auth import Attributes, UserInfo

APPS, COORD, CERTS, RBAC = (
    "apps",
    "coordination.k8s.io",
    "certificates.k8s.io",
    bootstrap.RBAC_GROUP,
)


def a(
    verb: str, resource: str, group: str = "", ns: str = "", name: str = "", sub: str = ""
) -> Attributes:
    return Attributes(verb, resource, group, ns, name, sub)


def watched(resource: str, group: str = "", ns: str = "") -> list[Attributes]:
    """An informer: a list, then a watch."""
    return [a("list", resource, group, ns), a("watch", resource, group, ns)]


def elected(lease: str) -> list[Attributes]:
    """machinery.leaderelection on its lease in kube-system."""
    return [
        a("get", "leases", COORD, "kube-system", lease),
        a("create", "leases", COORD, "kube-system", lease),
        a("update", "leases", COORD, "kube-system", lease),
    ]


EVENTS = [
    a("create", "events", ns="default", name="x.1"),
    a("patch", "events", ns="default", name="x.1"),
]

SCHEDULER_DOES = [
    *watched("pods"),
    *watched("nodes"),
    a("create", "pods", ns="default", name="p", sub="binding"),
    a("get", "pods", ns="default", name="p"),
    a("update", "pods", ns="default", name="p", sub="status"),
    *EVENTS,
    *elected("kube-scheduler"),
]
SCHEDULER_MAY_NOT = [
    a("delete", "nodes", name="n1"),
    a("update", "nodes", name="n1"),
    a("get", "secrets", ns="default", name="s"),
    a("create", "pods", ns="default", name="p"),
    a("update", "pods", ns="default", name="p"),
    a("delete", "pods", ns="default", name="p"),
    a("update", "leases", COORD, "kube-system", "kube-controller-manager"),
    a("create", "clusterrolebindings", RBAC, name="me-admin"),
]

CONTROLLER_MANAGER_DOES = [
    # Informers of every controller, and the CSR, token and namespace controllers'.
    *watched("replicasets", APPS),
    *watched("deployments", APPS),
    *watched("pods"),
    *watched("services"),
    *watched("endpoints"),
    *watched("nodes"),
    *watched("namespaces"),
    *watched("leases", COORD, "kube-node-lease"),
    *watched("certificatesigningrequests", CERTS),
    *watched("secrets"),
    *watched("serviceaccounts"),
    # ReplicaSet controller.
    a("create", "pods", ns="default", name="rs-x"),
    a("delete", "pods", ns="default", name="rs-x"),
    a("patch", "pods", ns="default", name="rs-x"),
    a("update", "replicasets", APPS, "default", "rs", "status"),
    a("get", "replicasets", APPS, "default", "rs"),
    # Deployment controller.
    a("create", "replicasets", APPS, "default", "rs"),
    a("update", "replicasets", APPS, "default", "rs"),
    a("patch", "replicasets", APPS, "default", "rs"),
    a("delete", "replicasets", APPS, "default", "rs"),
    a("get", "deployments", APPS, "default", "d"),
    a("patch", "deployments", APPS, "default", "d"),
    a("update", "deployments", APPS, "default", "d", "status"),
    # Endpoints controller.
    a("create", "endpoints", ns="default", name="svc"),
    a("update", "endpoints", ns="default", name="svc"),
    a("delete", "endpoints", ns="default", name="svc"),
    # Node lifecycle and IPAM.
    a("get", "nodes", name="n1"),
    a("update", "nodes", name="n1"),
    a("patch", "nodes", name="n1"),
    a("update", "nodes", name="n1", sub="status"),
    a("update", "pods", ns="default", name="p", sub="status"),
    # Namespace controller.
    a("update", "namespaces", name="gone"),
    a("update", "namespaces", name="gone", sub="status"),
    # CSR approver and signer; token cleaner and ServiceAccount tokens.
    a("update", "certificatesigningrequests", CERTS, name="csr-1", sub="status"),
    a("delete", "secrets", ns="kube-system", name="bootstrap-token-abcdef"),
    a("update", "secrets", ns="default", name="robot-token"),
    a("get", "serviceaccounts", ns="default", name="robot"),
    a("create", "serviceaccounts", ns="default", name="default"),
    *EVENTS,
    *elected("kube-controller-manager"),
]
# The namespace controller empties a namespace of every namespaced kind.
CONTROLLER_MANAGER_DOES += [
    attrs
    for kind in kinds.KINDS
    if kind.namespaced
    for attrs in (
        a("list", kind.resource, kind.group, "gone"),
        a("delete", kind.resource, kind.group, "gone", "x"),
    )
]
CONTROLLER_MANAGER_MAY_NOT = [
    a("delete", "nodes", name="n1"),
    a("create", "pods", ns="default", name="p", sub="exec"),
    a("get", "pods", ns="default", name="p", sub="log"),
    a("create", "pods", ns="default", name="p", sub="binding"),
    a("create", "clusterrolebindings", RBAC, name="me-admin"),
    a("update", "clusterroles", RBAC, name="system:kube-controller-manager"),
    a("update", "leases", COORD, "kube-system", "kube-scheduler"),
]

PROXY_DOES = [*watched("services"), *watched("endpoints"), *EVENTS]
PROXY_MAY_NOT = [
    *watched("pods"),
    a("update", "services", ns="default", name="svc"),
    a("get", "secrets", ns="default", name="s"),
]
DNS_DOES = [*watched("services"), *watched("endpoints")]
DNS_MAY_NOT = [*watched("pods"), a("update", "endpoints", ns="default", name="svc")]

BOOTSTRAPPER_DOES = [
    a("create", "certificatesigningrequests", CERTS, name="node-csr-1"),
    a("get", "certificatesigningrequests", CERTS, name="node-csr-1"),
    *watched("certificatesigningrequests", CERTS),
]
BOOTSTRAPPER_MAY_NOT = [
    # It must not approve its own request.
    a("update", "certificatesigningrequests", CERTS, name="node-csr-1", sub="status"),
    *watched("nodes"),
    a("get", "secrets", ns="kube-system", name="bootstrap-token-abcdef"),
]

# hollow/nodes.py: one identity for many nodes (the kubelite:hollow-nodes group).
HOLLOW_DOES = [
    *watched("pods"),
    *watched("nodes"),
    a("create", "nodes", name="hollow-1"),
    a("get", "nodes", name="hollow-1"),
    a("update", "nodes", name="hollow-1", sub="status"),
    a("delete", "nodes", name="hollow-1"),
    a("create", "leases", COORD, "kube-node-lease", "hollow-1"),
    a("get", "leases", COORD, "kube-node-lease", "hollow-1"),
    a("update", "leases", COORD, "kube-node-lease", "hollow-1"),
    a("delete", "leases", COORD, "kube-node-lease", "hollow-1"),
    a("update", "pods", ns="default", name="p", sub="status"),
    a("get", "pods", ns="default", name="p"),
    a("delete", "pods", ns="default", name="p"),
]
HOLLOW_MAY_NOT = [a("create", "pods", ns="default", name="p"), *watched("secrets")]

IDENTITIES = {
    "scheduler": UserInfo(auth.SCHEDULER_USER, (auth.AUTHENTICATED,)),
    "controller-manager": UserInfo(auth.CONTROLLER_MANAGER_USER, (auth.AUTHENTICATED,)),
    "proxy": UserInfo(auth.PROXY_USER, (auth.AUTHENTICATED,)),
    "dns": UserInfo(auth.DNS_USER, (auth.AUTHENTICATED,)),
    "bootstrapper": UserInfo(
        "system:bootstrap:abcdef", (auth.BOOTSTRAPPERS_GROUP, auth.AUTHENTICATED)
    ),
    "hollow": UserInfo("hollow-nodes", (bootstrap.HOLLOW_NODES_GROUP, auth.AUTHENTICATED)),
    "basic-user": UserInfo("someone", (auth.AUTHENTICATED,)),
}

TABLE: list[tuple[str, list[Attributes], bool]] = [
    ("scheduler", SCHEDULER_DOES, True),
    ("scheduler", SCHEDULER_MAY_NOT, False),
    ("controller-manager", CONTROLLER_MANAGER_DOES, True),
    ("controller-manager", CONTROLLER_MANAGER_MAY_NOT, False),
    ("proxy", PROXY_DOES, True),
    ("proxy", PROXY_MAY_NOT, False),
    ("dns", DNS_DOES, True),
    ("dns", DNS_MAY_NOT, False),
    ("bootstrapper", BOOTSTRAPPER_DOES, True),
    ("bootstrapper", BOOTSTRAPPER_MAY_NOT, False),
    ("hollow", HOLLOW_DOES, True),
    ("hollow", HOLLOW_MAY_NOT, False),
    ("basic-user", [*watched("pods"), *watched("namespaces"), a("get", "nodes", name="n")], False),
]


@pytest.mark.parametrize(
    ("who", "requests", "allowed"),
    [row[:3] for row in TABLE],
    ids=[f"{who}-{'does' if allowed else 'may-not'}" for who, _, allowed in TABLE],
)
async def test_builtin_role(
    apiserver: Any, who: str, requests: list[Attributes], allowed: bool
) -> None:
    """One server for all of a row's requests; every wrong answer is named at once."""
    wrong = []
    for attrs in requests:
        decision = apiserver.gate.authorize(IDENTITIES[who], attrs)
        if decision.allowed is not allowed:
            wrong.append(f"{attrs.describe()}: {decision.reason or 'allowed'}")
    assert not wrong, f"{who} {'cannot' if allowed else 'can'}:\n" + "\n".join(wrong)
