"""kctl create role|clusterrole|rolebinding|clusterrolebinding: RBAC objects from flags.

The flags are kubectl's: --verb and --resource (repeatable or comma-separated;
`pods/status` names a subresource, `deployments.apps` a group),
--resource-name; for bindings --role or --clusterrole and --user, --group,
--serviceaccount NAMESPACE:NAME. The object is built here and sent whole;
the server validates it and refuses a role or binding granting more than the
caller holds.
"""

from __future__ import annotations

import argparse
from typing import Any

from cli.errors import CliError
from cli.session import Session
from machinery import kinds

RBAC = "rbac.authorization.k8s.io"
Obj = dict[str, Any]


def register_create(what: argparse._SubParsersAction) -> None:
    added = "role|clusterrole|rolebinding|clusterrolebinding"
    what.metavar = f"{what.metavar}|{added}" if what.metavar else None
    for kind, help_text in (("Role", "a Role in the namespace"), ("ClusterRole", "a ClusterRole")):
        p = what.add_parser(kind.lower(), help=help_text)
        p.add_argument("name")
        p.add_argument("--verb", action="append", required=True, help="get, list, ..., or *")
        p.add_argument(
            "--resource", action="append", required=True, help="pods, pods/log, deployments.apps"
        )
        p.add_argument("--resource-name", action="append", default=[], help="limit to these")
        p.add_argument(
            "--dry-run", action="store_true", help="have the server check it, create nothing"
        )
        p.set_defaults(handler=run_create_role, kind=kind)
    for kind in ("RoleBinding", "ClusterRoleBinding"):
        p = what.add_parser(kind.lower(), help=f"a {kind} of users, groups, ServiceAccounts")
        p.add_argument("name")
        if kind == "RoleBinding":
            p.add_argument("--role", default="", help="the Role to bind (in the namespace)")
        p.add_argument("--clusterrole", default="", help="the ClusterRole to bind")
        p.add_argument("--user", action="append", default=[])
        p.add_argument("--group", action="append", default=[])
        p.add_argument("--serviceaccount", action="append", default=[], metavar="NAMESPACE:NAME")
        p.add_argument(
            "--dry-run", action="store_true", help="have the server check it, create nothing"
        )
        p.set_defaults(handler=run_create_binding, kind=kind)


def _split(values: list[str]) -> list[str]:
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def rules_from(verbs: list[str], resources: list[str], names: list[str]) -> list[Obj]:
    """One rule per API group, as kubectl groups them; CliError names a bad resource."""
    by_group: dict[str, list[str]] = {}
    for given in _split(resources):
        base, slash, sub = given.partition("/")
        plural, _, group = base.partition(".")
        if plural == "*":
            by_group.setdefault(group or "*", []).append(given)
            continue
        kind = kinds.lookup(plural)
        if kind is None:
            raise CliError(
                f'error: --resource: the server doesn\'t have a resource type "{plural}"'
            )
        if group and group != kind.group:
            raise CliError(
                f"error: --resource {given}: {kind.resource} is in the "
                f'"{kind.group or "core"}" group, not "{group}"'
            )
        by_group.setdefault(kind.group, []).append(kind.resource + (slash + sub if slash else ""))
    rules = []
    for group, found in by_group.items():
        rule: Obj = {"apiGroups": [group], "resources": found, "verbs": _split(verbs)}
        if names:
            rule["resourceNames"] = _split(names)
        rules.append(rule)
    return rules


def subjects_from(users: list[str], groups: list[str], accounts: list[str]) -> list[Obj]:
    subjects: list[Obj] = [{"kind": "User", "apiGroup": RBAC, "name": u} for u in _split(users)]
    subjects += [{"kind": "Group", "apiGroup": RBAC, "name": g} for g in _split(groups)]
    for given in _split(accounts):
        namespace, colon, name = given.partition(":")
        if not colon or not namespace or not name:
            raise CliError(f"error: --serviceaccount {given!r}: must be NAMESPACE:NAME")
        subjects.append({"kind": "ServiceAccount", "namespace": namespace, "name": name})
    if not subjects:
        raise CliError("error: name at least one --user, --group or --serviceaccount")
    return subjects


async def _create(session: Session, kind: str, obj: Obj, *, dry_run: bool) -> int:
    resolved = session.kind(kind)
    namespace = session.namespace_for(resolved)
    if namespace:
        obj["metadata"]["namespace"] = namespace
    await session.api.create(resolved, obj, namespace=namespace, dry_run=dry_run)
    suffix = " (dry run)" if dry_run else ""
    print(f"{resolved.singular}.{RBAC}/{obj['metadata']['name']} created{suffix}")
    return 0


async def run_create_role(args: argparse.Namespace, session: Session) -> int:
    obj = {
        "apiVersion": f"{RBAC}/v1",
        "kind": args.kind,
        "metadata": {"name": args.name},
        "rules": rules_from(args.verb, args.resource, args.resource_name),
    }
    return await _create(session, args.kind, obj, dry_run=args.dry_run)


async def run_create_binding(args: argparse.Namespace, session: Session) -> int:
    role = getattr(args, "role", "")
    if bool(role) == bool(args.clusterrole):
        raise CliError("error: give exactly one of --role and --clusterrole")
    obj = {
        "apiVersion": f"{RBAC}/v1",
        "kind": args.kind,
        "metadata": {"name": args.name},
        "roleRef": {
            "apiGroup": RBAC,
            "kind": "Role" if role else "ClusterRole",
            "name": role or args.clusterrole,
        },
        "subjects": subjects_from(args.user, args.group, args.serviceaccount),
    }
    return await _create(session, args.kind, obj, dry_run=args.dry_run)
