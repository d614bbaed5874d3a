"""The built-in RBAC policy: the ClusterRoles the cluster's components need, and their bindings.

Each component gets exactly what its code calls (its informers' list and watch,
its client's writes), read from scheduler/, controllers/, proxy/, dns/ and the
shared machinery (events, leader election). A component that starts calling
something new needs its role here extended, or it fails PERMISSION_DENIED.

    cluster-admin                    everything; bound to the group system:masters
    admin, edit, view                for RoleBindings that hand a namespace to people
    system:basic-user                what every authenticated identity may do: nothing
                                     in this API yet; bound to system:authenticated
    system:kube-scheduler            bound to the user system:kube-scheduler
    system:kube-controller-manager   bound to the user system:kube-controller-manager
    system:kube-proxy                bound to the user system:kube-proxy
    system:kube-dns                  bound to the user system:kube-dns
    system:node-bootstrapper         asks for a node certificate; bound to system:bootstrappers
    system:node                      what a kubelet needs, for an identity that speaks for
                                     many nodes at once (the hollow-node simulator); bound
                                     to the group kubelite:hollow-nodes

Real nodes (system:node:<name>) are not in this policy at all: the node
authorizer decides for them, per node.

`reconcile` runs when an API server becomes ready. It creates what is missing
and adds to an existing built-in object the rules or subjects it lacks (after
an upgrade, say), as Kubernetes does; it never removes what an administrator
added. An object annotated rbac.authorization.kubernetes.io/autoupdate=false
is left exactly as it is.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Mapping
from typing import Any

from apiserver.authz.rbac import KeyOf
from apiserver.registry import Registry
from apiserver.watchcache import WatchCache
from machinery import auth, errors, kinds
from machinery.clock import Clock
from machinery.log import get_logger

log = get_logger("apiserver.authz")

RBAC_VERSION = "rbac.authorization.k8s.io/v1"
RBAC_GROUP = "rbac.authorization.k8s.io"
BOOTSTRAP_LABEL = "kubernetes.io/bootstrapping"
BOOTSTRAP_VALUE = "rbac-defaults"
AUTOUPDATE = "rbac.authorization.kubernetes.io/autoupdate"
# A group for identities that act for many nodes at once (hollow nodes).
HOLLOW_NODES_GROUP = "kubelite:hollow-nodes"

READ = ["get", "list", "watch"]
WRITE = ["create", "update", "patch", "delete", "deletecollection"]
EVENTS = ["create", "update", "patch"]

Obj = dict[str, Any]


def rule(
    verbs: list[str], resources: list[str], group: str = "", *, names: tuple[str, ...] = ()
) -> Obj:
    out: Obj = {"verbs": list(verbs), "apiGroups": [group], "resources": list(resources)}
    if names:
        out["resourceNames"] = list(names)
    return out


def _namespaced_kinds() -> list[Obj]:
    """list and delete of every namespaced kind, by group: what the namespace controller
    needs to empty a namespace that is being deleted."""
    by_group: dict[str, list[str]] = {}
    for kind in kinds.KINDS:
        if kind.namespaced:
            by_group.setdefault(kind.group, []).append(kind.resource)
    return [rule(["list", "delete"], resources, group) for group, resources in by_group.items()]


def _workloads(verbs: list[str]) -> list[Obj]:
    return [
        rule(verbs, ["pods", "services", "endpoints", "configmaps", "serviceaccounts"]),
        rule(verbs, ["deployments", "replicasets"], "apps"),
    ]


def _viewer() -> list[Obj]:
    return [
        *_workloads(READ),
        rule(READ, ["pods/log", "pods/status", "services/status", "events", "namespaces"]),
        rule(READ, ["deployments/status", "replicasets/status"], "apps"),
        rule(READ, ["leases"], "coordination.k8s.io"),
    ]


def _editor() -> list[Obj]:
    return [
        *_viewer(),
        *_workloads([*READ, *WRITE]),
        rule([*READ, *WRITE], ["secrets"]),
        rule(["create"], ["pods/exec"]),
        rule(["update", "patch"], ["deployments/scale", "replicasets/scale"], "apps"),
    ]


def _scheduler() -> list[Obj]:
    return [
        rule(READ, ["pods", "nodes"]),
        rule(["create"], ["pods/binding"]),
        rule(["update", "patch"], ["pods/status"]),
        rule(EVENTS, ["events"]),
        *_leader_lease("kube-scheduler"),
    ]


def _leader_lease(name: str) -> list[Obj]:
    """Leader election: create the lease, then read and renew only that one."""
    return [
        rule(["create"], ["leases"], "coordination.k8s.io"),
        rule(["get", "update"], ["leases"], "coordination.k8s.io", names=(name,)),
    ]


def _controller_manager() -> list[Obj]:
    certificates = "certificates.k8s.io"
    return [
        # ReplicaSet and Deployment controllers (pods adopted and released by patch).
        rule([*READ, "create", "update", "patch", "delete"], ["pods"]),
        rule([*READ, "create", "update", "patch", "delete"], ["replicasets"], "apps"),
        rule([*READ, "update", "patch"], ["deployments"], "apps"),
        rule(["update", "patch"], ["replicasets/status", "deployments/status"], "apps"),
        rule(["update", "patch"], ["pods/status"]),
        # Endpoints controller.
        rule([*READ, "create", "update", "delete"], ["endpoints"]),
        rule(READ, ["services"]),
        # Node lifecycle (conditions, taints, evictions) and node IPAM (podCIDR).
        rule([*READ, "update", "patch"], ["nodes", "nodes/status"]),
        rule(READ, ["leases"], "coordination.k8s.io"),
        # Namespace controller: finalize, and empty every namespaced kind.
        rule([*READ, "update"], ["namespaces", "namespaces/status"]),
        *_namespaced_kinds(),
        # Certificate approver and signer, bootstrap token cleaner, ServiceAccount tokens.
        rule([*READ, "delete"], ["certificatesigningrequests"], certificates),
        rule(
            ["update", "patch"],
            ["certificatesigningrequests/status", "certificatesigningrequests/approval"],
            certificates,
        ),
        rule([*READ, "create", "update", "patch", "delete"], ["secrets"]),
        rule([*READ, "create", "update", "patch"], ["serviceaccounts"]),
        rule(EVENTS, ["events"]),
        *_leader_lease("kube-controller-manager"),
    ]


def _kubelet() -> list[Obj]:
    """Everything a kubelet may do for any node; real nodes get the node authorizer instead."""
    return [
        rule([*READ, "create", "update", "patch", "delete"], ["nodes"]),
        rule(["update", "patch"], ["nodes/status", "pods/status"]),
        rule([*READ, "delete"], ["pods"]),
        rule(READ, ["services", "endpoints", "namespaces"]),
        rule(["get"], ["secrets", "configmaps"]),
        rule(EVENTS, ["events"]),
        rule([*READ, "create", "update", "patch", "delete"], ["leases"], "coordination.k8s.io"),
        rule(["create", *READ], ["certificatesigningrequests"], "certificates.k8s.io"),
    ]


def cluster_roles() -> list[Obj]:
    roles: dict[str, list[Obj]] = {
        "cluster-admin": [
            {"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]},
            {"verbs": ["*"], "nonResourceURLs": ["*"]},
        ],
        "admin": [*_editor(), rule([*READ, *WRITE], ["roles", "rolebindings"], RBAC_GROUP)],
        "edit": _editor(),
        "view": _viewer(),
        "system:basic-user": [],
        "system:kube-scheduler": _scheduler(),
        "system:kube-controller-manager": _controller_manager(),
        "system:kube-proxy": [rule(READ, ["services", "endpoints"]), rule(EVENTS, ["events"])],
        "system:kube-dns": [rule(READ, ["services", "endpoints"])],
        "system:node-bootstrapper": [
            rule(["create", *READ], ["certificatesigningrequests"], "certificates.k8s.io")
        ],
        "system:node": _kubelet(),
    }
    return [_object("ClusterRole", name, {"rules": rules}) for name, rules in roles.items()]


def cluster_role_bindings() -> list[Obj]:
    bound = {
        "cluster-admin": ("Group", auth.MASTERS),
        "system:basic-user": ("Group", auth.AUTHENTICATED),
        "system:kube-scheduler": ("User", auth.SCHEDULER_USER),
        "system:kube-controller-manager": ("User", auth.CONTROLLER_MANAGER_USER),
        "system:kube-proxy": ("User", auth.PROXY_USER),
        "system:kube-dns": ("User", auth.DNS_USER),
        "system:node-bootstrapper": ("Group", auth.BOOTSTRAPPERS_GROUP),
        "system:node": ("Group", HOLLOW_NODES_GROUP),
    }
    return [
        _object(
            "ClusterRoleBinding",
            role,
            {
                "roleRef": {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": role},
                "subjects": [{"kind": kind, "apiGroup": RBAC_GROUP, "name": name}],
            },
        )
        for role, (kind, name) in bound.items()
    ]


def _object(kind: str, name: str, body: Obj) -> Obj:
    return {
        "apiVersion": RBAC_VERSION,
        "kind": kind,
        "metadata": {
            "name": name,
            "labels": {BOOTSTRAP_LABEL: BOOTSTRAP_VALUE},
            "annotations": {AUTOUPDATE: "true"},
        },
        **body,
    }


# -- writing it ---------------------------------------------------------------------------------


async def reconcile(registry: Registry, *, clock: Clock) -> None:
    """Create or complete every built-in object, all at once (a server start waits for
    this); each retries with back-off while etcd is away or another server races it."""
    wanted = [*cluster_roles(), *cluster_role_bindings()]
    await asyncio.gather(*(_reconcile_retrying(registry, obj, clock=clock) for obj in wanted))


async def until_cached(caches: Mapping[str, WatchCache], *, key_of: KeyOf) -> None:
    """Return once the watch caches hold every built-in object, so the authorizers see
    the policy as soon as the server says it is ready; give up (logged) after ~5 s, when
    someone deleted an object right after it was written."""
    wanted = [
        (kinds.by_kind(obj["kind"]), obj["metadata"]["name"])
        for obj in [*cluster_roles(), *cluster_role_bindings()]
    ]
    keys = [(kind.resource, key_of(kind.resource, "", name)) for kind, name in wanted if kind]
    for _ in range(500):
        if all(caches[resource].get(key) is not None for resource, key in keys):
            return
        await asyncio.sleep(0.01)  # a wait for the cache's own watch, not a decision
    log.warning("built-in RBAC policy not in the watch caches yet, serving anyway")


async def _reconcile_retrying(registry: Registry, wanted: Obj, *, clock: Clock) -> None:
    delay = 0.1
    while True:
        try:
            await _reconcile_one(registry, wanted)
            return
        except (errors.Unavailable, errors.Conflict) as err:
            log.warning(
                "failed to write built-in RBAC policy, retrying",
                kind=wanted["kind"],
                name=wanted["metadata"]["name"],
                err=err,
            )
            await clock.sleep(delay)
            delay = min(delay * 2, 5.0)


async def _reconcile_one(registry: Registry, wanted: Obj) -> None:
    kind = kinds.by_kind(wanted["kind"])
    assert kind is not None
    name = wanted["metadata"]["name"]
    try:
        await registry.create(kind, "", copy.deepcopy(wanted))
        log.info("created built-in RBAC policy", kind=kind.kind, name=name)
        return
    except errors.AlreadyExists:
        pass
    current = await registry.get(kind, "", name)
    annotations = (current.get("metadata") or {}).get("annotations") or {}
    if annotations.get(AUTOUPDATE) == "false":
        return
    updated = _completed(current, wanted)
    if updated is not None:
        await registry.update(kind, "", name, updated)
        log.info("completed built-in RBAC policy", kind=kind.kind, name=name)


def _completed(current: Obj, wanted: Obj) -> Obj | None:
    """current with what wanted has and it lacks added, or None when nothing lacks."""
    field = "rules" if wanted["kind"] == "ClusterRole" else "subjects"
    have = list(current.get(field) or [])
    missing = [item for item in wanted.get(field) or [] if item not in have]
    if not missing and (field in current or not wanted.get(field)):
        return None
    if wanted["kind"] == "ClusterRoleBinding" and current.get("roleRef") != wanted["roleRef"]:
        log.warning(
            "built-in ClusterRoleBinding refers to another role, left as it is",
            name=wanted["metadata"]["name"],
            role=(current.get("roleRef") or {}).get("name", ""),
        )
        return None
    return {**current, field: have + missing}
