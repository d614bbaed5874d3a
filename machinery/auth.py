"""Who is asking and what they ask to do: the vocabulary of authentication and authorization.

The API server turns a request's credential into a UserInfo (authentication)
and asks its authorizers whether that user may perform the request's
Attributes (authorization). The names below are the ones Kubernetes uses, so
roles and bindings written for Kubernetes mean the same here.
"""

from __future__ import annotations

import dataclasses

from machinery.kinds import Kind

# Groups every authenticated user is in, and the one that bypasses authorization.
AUTHENTICATED = "system:authenticated"
MASTERS = "system:masters"

NODES_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
BOOTSTRAPPERS_GROUP = "system:bootstrappers"
BOOTSTRAP_USER_PREFIX = "system:bootstrap:"
SERVICE_ACCOUNT_PREFIX = "system:serviceaccount:"
SERVICE_ACCOUNTS_GROUP = "system:serviceaccounts"

# The components' identities: the common names of their client certificates.
SCHEDULER_USER = "system:kube-scheduler"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
PROXY_USER = "system:kube-proxy"
DNS_USER = "system:kube-dns"
ADMIN_USER = "kubernetes-admin"
# The API server's client certificate towards kubelets (logs, exec); kubelets accept only it.
APISERVER_KUBELET_CLIENT = "kube-apiserver-kubelet-client"


@dataclasses.dataclass(frozen=True)
class UserInfo:
    name: str
    groups: tuple[str, ...] = ()
    uid: str = ""
    # How the user proved who they are (x509, token, bootstrap-token, serviceaccount);
    # for logs only, never a secret.
    method: str = ""

    def in_group(self, group: str) -> bool:
        return group in self.groups

    @property
    def node_name(self) -> str:
        """The node this identity speaks for, or "" if it is not a node."""
        if self.name.startswith(NODE_USER_PREFIX) and NODES_GROUP in self.groups:
            return self.name[len(NODE_USER_PREFIX) :]
        return ""


def node_user(node: str) -> str:
    return f"{NODE_USER_PREFIX}{node}"


def service_account_user(namespace: str, name: str) -> str:
    return f"{SERVICE_ACCOUNT_PREFIX}{namespace}:{name}"


def service_account_groups(namespace: str) -> tuple[str, ...]:
    return (SERVICE_ACCOUNTS_GROUP, f"{SERVICE_ACCOUNTS_GROUP}:{namespace}")


@dataclasses.dataclass(frozen=True)
class Attributes:
    """One request as authorization sees it.

    verb is a Kubernetes verb: get, list, watch, create, update, patch, delete;
    api_group "" is the core group; subresource is "status", "binding", "log",
    "exec" or "". name is "" for list, watch and create.
    """

    verb: str
    resource: str
    api_group: str = ""
    namespace: str = ""
    name: str = ""
    subresource: str = ""

    @classmethod
    def of(
        cls, verb: str, kind: Kind, *, namespace: str = "", name: str = "", subresource: str = ""
    ) -> Attributes:
        """The attributes of a request on kind; a cluster-scoped kind has no namespace."""
        return cls(
            verb=verb,
            resource=kind.resource,
            api_group=kind.group,
            namespace=namespace if kind.namespaced else "",
            name=name,
            subresource=subresource,
        )

    def describe(self) -> str:
        """`verb resource[/sub] "name" in namespace "ns"` for messages and logs."""
        res = f"{self.resource}/{self.subresource}" if self.subresource else self.resource
        if self.api_group:
            res = f"{res}.{self.api_group}"
        text = f"{self.verb} {res}"
        if self.name:
            text += f' "{self.name}"'
        text += f' in namespace "{self.namespace}"' if self.namespace else " at cluster scope"
        return text


@dataclasses.dataclass(frozen=True)
class Decision:
    """allowed: yes; denied: a definite no (the chain stops); neither: no opinion."""

    allowed: bool
    denied: bool = False
    reason: str = ""


ALLOW = Decision(True)
NO_OPINION = Decision(False)


def deny(reason: str) -> Decision:
    return Decision(False, True, reason)
