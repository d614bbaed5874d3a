"""No one grants what they do not hold: privilege escalation through RBAC objects.

Being allowed to write Roles and RoleBindings must not make a user all-powerful,
so, as in Kubernetes, a user may write a Role or ClusterRole only if every
permission in it is already theirs where the role applies, unless they may
`escalate` that role; and may write a binding only if they hold every
permission of the role it names, in the binding's scope, unless they may
`bind` that role.

"Holding a permission" is asked of the same authorizers every request goes
through, with the rule's own values as the request: a rule for "*" verbs is
covered only by a grant of "*" verbs, one for "pods/status" by a grant of
pods/status, "*/status" or "*". A Role's rules are checked in its namespace, a
ClusterRole's (and a ClusterRoleBinding's) at cluster scope, which a RoleBinding's
grant never covers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from apiserver.watchcache import WatchCache
from machinery import auth, errors
from machinery.auth import Attributes, Decision, UserInfo

RBAC_GROUP = "rbac.authorization.k8s.io"
ROLE_KINDS = {"Role": "roles", "ClusterRole": "clusterroles"}
BINDING_KINDS = {"RoleBinding": "rolebindings", "ClusterRoleBinding": "clusterrolebindings"}
# How many missing permissions a refusal lists before it says "and N more".
_SHOWN = 5

Authorize = Callable[[UserInfo, Attributes], Decision]
KeyOf = Callable[[str, str, str], str]


class EscalationCheck:
    def __init__(
        self, authorize: Authorize, caches: Mapping[str, WatchCache], *, key_of: KeyOf
    ) -> None:
        self._authorize = authorize
        self._caches = caches
        self._key_of = key_of

    def check(self, user: UserInfo, obj: Any) -> None:
        """Forbidden if writing obj (a role or binding) would grant user more than it has."""
        if not isinstance(obj, dict) or auth.MASTERS in user.groups:
            return
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) else ""
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        namespace = str(meta.get("namespace") or "") if kind in ("Role", "RoleBinding") else ""
        name = str(meta.get("name") or "")
        if kind in ROLE_KINDS:
            if self._may(user, "escalate", ROLE_KINDS[kind], namespace, name):
                return
            missing = self._missing(user, obj.get("rules"), namespace)
            if missing:
                raise _refusal(user, f"{kind} {name!r}", missing, "escalate")
        elif kind in BINDING_KINDS:
            ref = obj.get("roleRef") if isinstance(obj.get("roleRef"), dict) else {}
            ref_kind, ref_name = ref.get("kind"), ref.get("name")
            if (
                not isinstance(ref_kind, str)
                or ref_kind not in ROLE_KINDS
                or not isinstance(ref_name, str)
            ):
                return  # validation answers a malformed roleRef with Invalid
            ref_resource = ROLE_KINDS[ref_kind]
            ref_namespace = namespace if ref_kind == "Role" else ""
            # May bind: asked where the binding applies, so a RoleBinding's own namespace
            # may hold the right to bind a ClusterRole there.
            if self._may(user, "bind", ref_resource, namespace, ref_name):
                return
            role = self._caches[ref_resource].get(
                self._key_of(ref_resource, ref_namespace, ref_name)
            )
            if role is None:
                raise errors.Forbidden(
                    f'user "{user.name}" cannot bind {ref_kind} {ref_name!r}: it does not exist, '
                    f"and binding a role one cannot inspect needs the bind verb on it",
                    kind=ref_resource,
                    name=ref_name,
                )
            missing = self._missing(user, role.obj.get("rules"), namespace)
            if missing:
                raise _refusal(user, f"{kind} {name!r} to {ref_kind} {ref_name!r}", missing, "bind")

    def _may(self, user: UserInfo, verb: str, resource: str, namespace: str, name: str) -> bool:
        attrs = Attributes(verb, resource, api_group=RBAC_GROUP, namespace=namespace, name=name)
        return self._authorize(user, attrs).allowed

    def _missing(self, user: UserInfo, rules: Any, namespace: str) -> list[Attributes]:
        return [a for a in _permissions(rules, namespace) if not self._authorize(user, a).allowed]


def _permissions(rules: Any, namespace: str) -> Iterator[Attributes]:
    """Every single permission the rules grant, as the request that would use it."""
    if not isinstance(rules, list):
        return
    for rule in rules:
        if not isinstance(rule, dict):
            continue
        names = [n for n in _strings(rule.get("resourceNames"))] or [""]
        for verb in _strings(rule.get("verbs")):
            for group in _strings(rule.get("apiGroups")):
                for resource in _strings(rule.get("resources")):
                    base, _, sub = resource.partition("/")
                    for name in names:
                        yield Attributes(
                            verb,
                            base,
                            api_group=group,
                            namespace=namespace,
                            name=name,
                            subresource=sub,
                        )


def _strings(value: Any) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def _refusal(user: UserInfo, what: str, missing: list[Attributes], verb: str) -> errors.Forbidden:
    shown = ", ".join(a.describe() for a in missing[:_SHOWN])
    more = len(missing) - _SHOWN
    if more > 0:
        shown += f", and {more} more"
    return errors.Forbidden(
        f'user "{user.name}" cannot write {what}: it would grant what the user does not hold '
        f"({shown}); holding the {verb} verb on the role allows it"
    )
