"""Role-based access control over the API server's watch caches, as Kubernetes' RBAC.

A request is allowed when one rule of a role bound to the user, or to one of
its groups, matches it: a ClusterRoleBinding grants its ClusterRole's rules
everywhere; a RoleBinding grants its Role's (or a ClusterRole's) rules only in
the RoleBinding's namespace. Nothing is ever denied here: an unmatched request
gets no opinion, with a reason that names the roles that were bound, so the
Gate's Forbidden says what was missing.

A rule matches when its verbs, apiGroups and resources each hold the request's
value or "*"; resources name subresources as "pods/status" ("*/status" any
resource's, "pods/*" any of pods'); resourceNames, when set, must hold the
object's name, so they never match list, watch or create (whose name is the new
object's, as Kubernetes has it). nonResourceURLs are accepted and ignored: this
API has no non-resource paths.

Cost: the bindings are compiled into an index from subject (a user name or a
group name) to the grants it holds, so a request looks at its own grants only.
The index is rebuilt, whole, on the first request after any change to roles or
bindings (a cache listener marks it stale). A cache that relists after losing
its watch replaces its objects without events; its revision then differs from
the one the index was built at, which also marks it stale. RBAC objects change
rarely, so a full rebuild is cheaper than keeping the index in step by parts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from apiserver.watchcache import CacheEvent, WatchCache
from machinery import auth
from machinery.auth import Attributes, Decision, UserInfo

# key_of(resource, namespace, name): the WatchCache key of an object.
KeyOf = Callable[[str, str, str], str]

RBAC_RESOURCES = ("roles", "clusterroles", "rolebindings", "clusterrolebindings")
_ALL = "*"
# How many bound roles a denial names before it says "and N more".
_REASON_ROLES = 4


@dataclasses.dataclass(frozen=True)
class Rule:
    """One PolicyRule of a role, as sets for matching."""

    verbs: frozenset[str]
    groups: frozenset[str]
    resources: frozenset[str]
    names: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, raw: Any) -> Rule | None:
        """The rule of a stored PolicyRule; None for one that names no resources."""
        if not isinstance(raw, dict) or not raw.get("resources"):
            return None
        return cls(
            verbs=_strings(raw.get("verbs")),
            groups=_strings(raw.get("apiGroups")),
            resources=_strings(raw.get("resources")),
            names=_strings(raw.get("resourceNames")),
        )

    def allows(self, attrs: Attributes) -> bool:
        if _ALL not in self.verbs and attrs.verb not in self.verbs:
            return False
        if _ALL not in self.groups and attrs.api_group not in self.groups:
            return False
        if not self._matches_resource(attrs.resource, attrs.subresource):
            return False
        if not self.names:
            return True
        return attrs.verb != "create" and bool(attrs.name) and attrs.name in self.names

    def _matches_resource(self, resource: str, subresource: str) -> bool:
        if _ALL in self.resources:
            return True
        if not subresource:
            return resource in self.resources
        return (
            f"{resource}/{subresource}" in self.resources
            or f"*/{subresource}" in self.resources
            or f"{resource}/*" in self.resources
        )


def _strings(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(v for v in value if isinstance(v, str))


@dataclasses.dataclass(frozen=True)
class Grant:
    """The rules one binding gives its subjects; namespace "" means everywhere."""

    namespace: str
    rules: tuple[Rule, ...]
    # 'ClusterRole "view" via RoleBinding "team/viewers"', for reasons.
    source: str
    # Set when the role the binding names does not exist: the grant is empty.
    missing: str = ""

    def allows(self, attrs: Attributes) -> bool:
        if self.namespace and self.namespace != attrs.namespace:
            return False
        return any(rule.allows(attrs) for rule in self.rules)


# A subject as the index keys it: ("User", name) or ("Group", name).
SubjectKey = tuple[str, str]


class RBACAuthorizer:
    def __init__(self, caches: Mapping[str, WatchCache], *, key_of: KeyOf) -> None:
        self._caches = {resource: caches[resource] for resource in RBAC_RESOURCES}
        self._key_of = key_of
        self._index: dict[SubjectKey, list[Grant]] = {}
        self._built_at: tuple[int, ...] | None = None
        self._stale = True
        for cache in self._caches.values():
            cache.add_listener(self._on_event)

    def authorize(self, user: UserInfo, attrs: Attributes) -> Decision:
        grants = self.grants_of(user)
        for grant in grants:
            if grant.allows(attrs):
                return auth.ALLOW
        return Decision(False, reason=_reason(user, grants))

    def grants_of(self, user: UserInfo) -> list[Grant]:
        """Every grant bound to the user or to one of its groups (for describe and tests)."""
        index = self._current()
        found = list(index.get(("User", user.name), ()))
        for group in user.groups:
            found += index.get(("Group", group), ())
        return found

    # -- the index ----------------------------------------------------------------------------

    def _on_event(self, event: CacheEvent) -> None:
        self._stale = True

    def _current(self) -> dict[SubjectKey, list[Grant]]:
        revisions = tuple(cache.revision for cache in self._caches.values())
        if self._stale or revisions != self._built_at:
            self._stale = False
            self._built_at = revisions
            self._index = self._build()
        return self._index

    def _build(self) -> dict[SubjectKey, list[Grant]]:
        index: dict[SubjectKey, list[Grant]] = {}
        compiled: dict[str, tuple[Rule, ...] | None] = {}
        for resource in ("clusterrolebindings", "rolebindings"):
            for cached in list(self._caches[resource].objects()):
                binding = cached.obj
                grant = self._grant_of(binding, compiled)
                if grant is None:
                    continue
                for key in _subjects(binding, grant.namespace):
                    index.setdefault(key, []).append(grant)
        return index

    def _grant_of(
        self, binding: dict[str, Any], compiled: dict[str, tuple[Rule, ...] | None]
    ) -> Grant | None:
        meta = binding.get("metadata") or {}
        namespace = meta.get("namespace", "") if binding.get("kind") == "RoleBinding" else ""
        ref = binding.get("roleRef") or {}
        ref_kind, ref_name = ref.get("kind"), ref.get("name")
        if ref_kind not in ("Role", "ClusterRole") or not isinstance(ref_name, str):
            return None  # validation refuses these; an object written before it is ignored
        if ref_kind == "Role" and not namespace:
            return None
        resource, role_ns = ("roles", namespace) if ref_kind == "Role" else ("clusterroles", "")
        key = self._key_of(resource, role_ns, ref_name)
        if key not in compiled:
            role = self._caches[resource].get(key)
            compiled[key] = None if role is None else _rules_of(role.obj)
        via = binding.get("kind", "")
        where = f"{namespace}/{meta.get('name', '')}" if namespace else meta.get("name", "")
        source = f'{ref_kind} "{ref_name}" via {via} "{where}"'
        rules = compiled[key]
        if rules is None:
            return Grant(namespace, (), source, missing=f"{ref_kind} {ref_name!r} does not exist")
        return Grant(namespace, rules, source)


def _rules_of(role: dict[str, Any]) -> tuple[Rule, ...]:
    rules = role.get("rules")
    if not isinstance(rules, list):
        return ()
    return tuple(r for r in (Rule.parse(raw) for raw in rules) if r is not None)


def _subjects(binding: dict[str, Any], namespace: str) -> Iterable[SubjectKey]:
    """The index keys of a binding's subjects; a ServiceAccount is the user it
    authenticates as, in the binding's namespace when the subject names none."""
    subjects = binding.get("subjects")
    if not isinstance(subjects, list):
        return
    for subject in subjects:
        if not isinstance(subject, dict) or not isinstance(subject.get("name"), str):
            continue
        kind, name = subject.get("kind"), subject["name"]
        if kind in ("User", "Group"):
            yield kind, name
        elif kind == "ServiceAccount":
            sa_namespace = subject.get("namespace") or namespace
            if sa_namespace:
                yield "User", auth.service_account_user(sa_namespace, name)


def _reason(user: UserInfo, grants: list[Grant]) -> str:
    """Why RBAC did not allow: what is bound, so an operator sees what to add."""
    if not grants:
        return f"RBAC: no role is bound to the user or its groups ({', '.join(user.groups)})"
    shown = [g.source + (f" ({g.missing})" if g.missing else "") for g in grants[:_REASON_ROLES]]
    more = len(grants) - len(shown)
    listed = "; ".join(shown) + (f"; and {more} more" if more else "")
    return f"RBAC: no rule of the bound roles allows it (bound: {listed})"
