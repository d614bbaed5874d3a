"""The node authorizer: what a kubelet's identity may do, and nothing more.

A node is the user system:node:<name> in the group system:nodes. It may:

- read (get, list, watch) Nodes, Pods, Services, Endpoints, Namespaces and Leases;
- create, update, patch and delete its own Node (and its nodes/status), and its
  own Lease in kube-node-lease;
- update and patch the status of, and delete, the Pods bound to it (their
  spec.nodeName, looked up in the Pods cache); never create a Pod or change a
  Pod's spec;
- create, update and patch Events; create, get, list and watch
  CertificateSigningRequests (to renew its certificate);
- get, by name only, a Secret or ConfigMap that a Pod bound to it refers to
  (volumes, projected sources, env valueFrom, envFrom, imagePullSecrets).

Anything else asked by a node is denied with the reason, so no RBAC binding can
widen what a node identity may do; for everyone else this authorizer has no
opinion. This is Kubernetes' Node authorizer and NodeRestriction admission in
one place: both read the same facts here, so they are decided together.

Which node may read which Secret comes from an index over the Pods cache (node ->
the objects its Pods refer to), kept in step by the cache's events. A cache that
relists after losing its watch replaces its objects without events; the index
notices that the cache moved past the last event it saw and rebuilds, on the
next question that needs it.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from apiserver.authz.rbac import KeyOf
from apiserver.watchcache import DELETED, CacheEvent, WatchCache
from machinery import auth
from machinery.auth import Attributes, Decision, UserInfo

LEASE_NAMESPACE = "kube-node-lease"
COORDINATION = "coordination.k8s.io"
CERTIFICATES = "certificates.k8s.io"

READ = frozenset({"get", "list", "watch"})
_WRITE = frozenset({"create", "update", "patch"})
# (api group, resource) a node may read, whatever the object.
_READABLE = frozenset(
    {
        ("", "nodes"),
        ("", "pods"),
        ("", "services"),
        ("", "endpoints"),
        ("", "namespaces"),
        (COORDINATION, "leases"),
    }
)

# (resource, namespace, name) of a Secret or ConfigMap.
ObjectRef = tuple[str, str, str]


class NodeAuthorizer:
    def __init__(self, caches: Mapping[str, WatchCache], *, key_of: KeyOf) -> None:
        self._pods = caches["pods"]
        self._key_of = key_of
        self._refs = _ReferenceIndex(self._pods)

    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        node = user.node_name
        if not node:
            return auth.NO_OPINION
        return self._decide(node, attrs)

    def _decide(self, node: str, attrs: Attributes) -> Decision:
        what = (attrs.api_group, attrs.resource)
        if attrs.verb in READ and what in _READABLE and attrs.subresource in ("", "status"):
            return auth.ALLOW
        if what == ("", "nodes"):
            return _own_node(node, attrs)
        if what == (COORDINATION, "leases"):
            return _own_lease(node, attrs)
        if what == ("", "pods"):
            return self._pod(node, attrs)
        if what == ("", "events") and attrs.verb in _WRITE:
            return auth.ALLOW
        csr = what == (CERTIFICATES, "certificatesigningrequests") and not attrs.subresource
        if csr and attrs.verb in READ | {"create"}:
            return auth.ALLOW
        if what in (("", "secrets"), ("", "configmaps")):
            return self._referenced(node, attrs)
        return auth.deny(f"node {node!r} may not {attrs.verb} {_resource(attrs)}")

    def _pod(self, node: str, attrs: Attributes) -> Decision:
        status_write = attrs.subresource == "status" and attrs.verb in ("update", "patch")
        plain_delete = attrs.verb == "delete" and not attrs.subresource
        if not (status_write or plain_delete):
            return auth.deny(
                f"node {node!r} may not {attrs.verb} {_resource(attrs)}: a node only reads "
                "Pods, writes the status of and deletes the Pods bound to it"
            )
        cached = self._pods.get(self._key_of("pods", attrs.namespace, attrs.name))
        if cached is None:
            return auth.deny(f"Pod {attrs.namespace}/{attrs.name} is not known to this API server")
        bound = (cached.obj.get("spec") or {}).get("nodeName") or ""
        if bound != node:
            where = f'node "{bound}"' if bound else "no node"
            return auth.deny(
                f"Pod {attrs.namespace}/{attrs.name} is bound to {where}, not to node {node!r}"
            )
        return auth.ALLOW

    def _referenced(self, node: str, attrs: Attributes) -> Decision:
        kind = "Secret" if attrs.resource == "secrets" else "ConfigMap"
        if attrs.verb != "get" or attrs.subresource:
            return auth.deny(
                f"node {node!r} may not {attrs.verb} {attrs.resource}: a node may only get, by "
                f"name, a {kind} that a Pod bound to it refers to"
            )
        if self._refs.refers(node, (attrs.resource, attrs.namespace, attrs.name)):
            return auth.ALLOW
        return auth.deny(
            f"no Pod bound to node {node!r} refers to {kind} {attrs.namespace}/{attrs.name}"
        )


def _own_node(node: str, attrs: Attributes) -> Decision:
    if attrs.verb in _WRITE | {"delete"} and attrs.subresource in ("", "status"):
        if attrs.name == node:
            return auth.ALLOW
        return auth.deny(f"node {node!r} may only change its own Node, not {attrs.name!r}")
    return auth.deny(f"node {node!r} may not {attrs.verb} {_resource(attrs)}")


def _own_lease(node: str, attrs: Attributes) -> Decision:
    if attrs.verb in _WRITE | {"delete"} and not attrs.subresource:
        if attrs.namespace == LEASE_NAMESPACE and attrs.name == node:
            return auth.ALLOW
        return auth.deny(
            f"node {node!r} may only change its own Lease {LEASE_NAMESPACE}/{node}, not "
            f"{attrs.namespace}/{attrs.name}"
        )
    return auth.deny(f"node {node!r} may not {attrs.verb} {_resource(attrs)}")


def _resource(attrs: Attributes) -> str:
    return f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource


# -- which node's Pods refer to which Secrets and ConfigMaps ---------------------------------


class _ReferenceIndex:
    def __init__(self, pods: WatchCache) -> None:
        self._pods = pods
        # node -> how many of its Pods refer to each object.
        self._by_node: dict[str, collections.Counter[ObjectRef]] = {}
        # Pod cache key -> (node, the objects it refers to), to undo on change.
        self._by_pod: dict[str, tuple[str, frozenset[ObjectRef]]] = {}
        self._revision = -1  # never built
        pods.add_listener(self._on_event)

    def refers(self, node: str, ref: ObjectRef) -> bool:
        if self._revision < 0 or self._pods.revision > self._revision:
            self._rebuild()
        counts = self._by_node.get(node)
        return counts is not None and counts[ref] > 0

    def _on_event(self, event: CacheEvent) -> None:
        if self._revision < 0:
            return  # built on first use from the cache as it is then
        self._forget(event.current.key)
        if event.type != DELETED:
            self._remember(event.current.key, event.current.obj)
        self._revision = max(self._revision, event.revision)

    def _rebuild(self) -> None:
        self._revision = self._pods.revision
        self._by_node.clear()
        self._by_pod.clear()
        for cached in list(self._pods.objects()):
            self._remember(cached.key, cached.obj)

    def _remember(self, key: str, pod: dict[str, Any]) -> None:
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        if not node or not isinstance(node, str):
            return
        namespace = (pod.get("metadata") or {}).get("namespace", "")
        refs = frozenset(
            (resource, namespace, name) for resource, name in pod_references(spec) if name
        )
        if not refs:
            return
        self._by_pod[key] = (node, refs)
        self._by_node.setdefault(node, collections.Counter()).update(refs)

    def _forget(self, key: str) -> None:
        held = self._by_pod.pop(key, None)
        if held is None:
            return
        node, refs = held
        counts = self._by_node[node]
        counts.subtract(refs)
        for ref in refs:
            if counts[ref] <= 0:
                del counts[ref]
        if not counts:
            del self._by_node[node]


def pod_references(spec: dict[str, Any]) -> Iterable[tuple[str, str]]:
    """("secrets"|"configmaps", name) of every object a Pod spec refers to."""
    for ref in _list(spec.get("imagePullSecrets")):
        yield "secrets", ref.get("name", "")
    for volume in _list(spec.get("volumes")):
        yield "configmaps", _dict(volume.get("configMap")).get("name", "")
        yield "secrets", _dict(volume.get("secret")).get("secretName", "")
        for source in _list(_dict(volume.get("projected")).get("sources")):
            yield "configmaps", _dict(source.get("configMap")).get("name", "")
            yield "secrets", _dict(source.get("secret")).get("name", "")
    for field in ("containers", "initContainers", "ephemeralContainers"):
        for container in _list(spec.get(field)):
            for var in _list(container.get("env")):
                source = _dict(var.get("valueFrom"))
                yield "configmaps", _dict(source.get("configMapKeyRef")).get("name", "")
                yield "secrets", _dict(source.get("secretKeyRef")).get("name", "")
            for source in _list(container.get("envFrom")):
                yield "configmaps", _dict(source.get("configMapRef")).get("name", "")
                yield "secrets", _dict(source.get("secretRef")).get("name", "")


def _list(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
