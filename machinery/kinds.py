"""The kinds the API serves, and how each is named, scoped and addressed.

A kind is known by its Kind name (Pod), its plural resource name (pods), its
singular and its short names (po); `lookup` accepts any of them, as kubectl
does. The resource name is the key everything else uses: the etcd key
`<prefix>/<resource>/<namespace>/<name>`, the `resource` field of every API
request, the schema file name.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Kind:
    kind: str
    resource: str
    group: str
    version: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    has_status: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()

    def names(self) -> tuple[str, ...]:
        return (self.resource, self.singular, *self.short_names)


KINDS: tuple[Kind, ...] = (
    Kind("Namespace", "namespaces", "", "v1", False, ("ns",), has_status=True),
    Kind("Pod", "pods", "", "v1", True, ("po",), has_status=True),
    Kind("ReplicaSet", "replicasets", "apps", "v1", True, ("rs",), has_status=True),
    Kind("Deployment", "deployments", "apps", "v1", True, ("deploy",), has_status=True),
    Kind("Service", "services", "", "v1", True, ("svc",), has_status=True),
    Kind("Endpoints", "endpoints", "", "v1", True, ("ep",)),
    Kind("ConfigMap", "configmaps", "", "v1", True, ("cm",)),
    Kind("Secret", "secrets", "", "v1", True),
    Kind("Node", "nodes", "", "v1", False, ("no",), has_status=True),
    Kind("Event", "events", "", "v1", True, ("ev",)),
    Kind("Lease", "leases", "coordination.k8s.io", "v1", True),
    Kind("ServiceAccount", "serviceaccounts", "", "v1", True, ("sa",)),
    Kind("Role", "roles", "rbac.authorization.k8s.io", "v1", True),
    Kind("ClusterRole", "clusterroles", "rbac.authorization.k8s.io", "v1", False),
    Kind("RoleBinding", "rolebindings", "rbac.authorization.k8s.io", "v1", True),
    Kind("ClusterRoleBinding", "clusterrolebindings", "rbac.authorization.k8s.io", "v1", False),
    Kind(
        "CertificateSigningRequest",
        "certificatesigningrequests",
        "certificates.k8s.io",
        "v1",
        False,
        ("csr",),
        has_status=True,
    ),
)

_BY_NAME: dict[str, Kind] = {}
for _k in KINDS:
    for _n in (*_k.names(), _k.kind):
        _BY_NAME[_n.lower()] = _k
_BY_KIND: dict[str, Kind] = {k.kind: k for k in KINDS}
_BY_RESOURCE: dict[str, Kind] = {k.resource: k for k in KINDS}


def lookup(name: str) -> Kind | None:
    """The kind named by any of its names (pods, pod, po, Pod), or None."""
    return _BY_NAME.get(name.lower())


def by_kind(kind: str) -> Kind | None:
    return _BY_KIND.get(kind)


def by_resource(resource: str) -> Kind | None:
    return _BY_RESOURCE.get(resource)
