"""kctl apply, create namespace, delete and edit: the commands that write objects.

apply keeps the manifest it last applied in the annotation
kubectl.kubernetes.io/last-applied-configuration and updates with a
three-way merge: a field the user removed from the manifest since the last
apply is removed from the object, a field someone else set (a controller's
status, a defaulted field) is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Any

import yaml

from cli import manifests, printers, rbac, secrets
from cli.errors import CliError, duration, from_api
from cli.session import Session
from machinery import errors
from machinery.kinds import Kind

LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "apply",
        help="create or update objects from manifests",
        description="Create or update the objects in FILE, DIR or - (stdin).",
    )
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-")
    p.add_argument("-R", "--recursive", action="store_true", help="read directories recursively")
    p.add_argument("--dry-run", action="store_true", help="validate on the server without saving")
    p.set_defaults(handler=run_apply)

    p = commands.add_parser(
        "create",
        help="create objects from manifests, or a namespace or Secret",
        description="Create the objects in FILE (failing on existing ones), "
        "or create a namespace: kctl create namespace NAME, "
        "or a Secret: kctl create secret generic NAME --from-literal=KEY=VALUE.",
    )
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.set_defaults(handler=run_create)
    what = p.add_subparsers(dest="what", metavar="namespace|secret")
    ns = what.add_parser("namespace", aliases=["ns"], help="create a namespace")
    ns.add_argument("name")
    ns.set_defaults(handler=run_create_namespace)
    secrets.register_create(what)
    rbac.register_create(what)

    p = commands.add_parser("delete", help="delete objects by kind and name or from manifests")
    p.add_argument("kind", nargs="?", metavar="KIND[/NAME]")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.add_argument(
        "-l", "--selector", default="", help="delete every object matching this label selector"
    )
    p.add_argument(
        "--cascade",
        default="background",
        choices=("background", "foreground", "orphan"),
        help="what happens to dependents (default: %(default)s)",
    )
    p.add_argument(
        "--grace-period", type=int, default=-1, help="seconds a Pod gets to stop (default: its own)"
    )
    p.add_argument(
        "--wait", default="true", choices=("true", "false"), help="wait until the objects are gone"
    )
    p.add_argument(
        "--timeout",
        type=duration,
        default=120.0,
        help="how long to wait, e.g. 90s or 2m (default: 120s)",
    )
    p.add_argument("--ignore-not-found", action="store_true")
    p.set_defaults(handler=run_delete)

    p = commands.add_parser("edit", help="edit an object in $EDITOR and update it")
    p.add_argument("kind", metavar="KIND[/NAME]")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.set_defaults(handler=run_edit)


# -- apply ------------------------------------------------------------------------------------


def merge_patch_between(original: Any, modified: Any) -> Any:
    """The JSON merge patch that turns original into modified (RFC 7386 in reverse)."""
    if not isinstance(original, dict) or not isinstance(modified, dict):
        return copy.deepcopy(modified)
    patch: dict[str, Any] = {}
    for key in original.keys() - modified.keys():
        patch[key] = None
    for key, value in modified.items():
        if key not in original:
            patch[key] = copy.deepcopy(value)
        elif original[key] != value:
            if isinstance(value, dict) and isinstance(original[key], dict):
                patch[key] = merge_patch_between(original[key], value)
            else:
                patch[key] = copy.deepcopy(value)
    return patch


def apply_merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = apply_merge(result.get(key), value)
    return result


def _with_last_applied(obj: dict[str, Any]) -> dict[str, Any]:
    desired = copy.deepcopy(obj)
    annotations = desired.setdefault("metadata", {}).setdefault("annotations", {})
    annotations.pop(LAST_APPLIED, None)
    recorded = json.dumps(desired, sort_keys=True, separators=(",", ":"))
    annotations[LAST_APPLIED] = recorded
    return desired


async def apply_one(session: Session, kind: Kind, obj: dict[str, Any], *, dry_run: bool) -> str:
    namespace = session.namespace_for(kind, obj.get("metadata", {}).get("namespace", ""))
    if kind.namespaced:
        obj.setdefault("metadata", {})["namespace"] = namespace
    name = obj.get("metadata", {}).get("name")
    if not name:
        raise CliError(f"error: {kind.kind} in manifest has no metadata.name")
    desired = _with_last_applied(obj)
    try:
        live = await session.api.get(kind, name, namespace=namespace)
    except errors.NotFound:
        await session.api.create(kind, desired, namespace=namespace, dry_run=dry_run)
        return "created"
    previous: dict[str, Any] = {}
    recorded = (live["metadata"].get("annotations") or {}).get(LAST_APPLIED)
    if recorded:
        try:
            previous = json.loads(recorded)
        except ValueError:
            previous = {}
    patch = merge_patch_between(previous, desired)
    for key in ("status",):
        patch.pop(key, None)
    merged = apply_merge(live, patch)
    if merged == live:
        return "unchanged"
    merged["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"]
    await session.api.update(kind, merged, dry_run=dry_run)
    return "configured"


async def run_apply(args: argparse.Namespace, session: Session) -> int:
    loaded = manifests.load(args.filename, recursive=getattr(args, "recursive", False))
    if not loaded:
        raise CliError("error: no objects passed to apply")
    failed = 0
    suffix = " (server dry run)" if getattr(args, "dry_run", False) else ""
    for m in loaded:
        kind = session.kind(m.obj["kind"])
        try:
            outcome = await apply_one(session, kind, m.obj, dry_run=getattr(args, "dry_run", False))
        except errors.ApiError as err:
            print(f"{from_api(err)} (from {m.where})", file=sys.stderr)
            failed += 1
            if isinstance(err, errors.Unavailable):
                break
            continue
        print(f"{printers.name_of(kind, m.obj)} {outcome}{suffix}")
    return 1 if failed else 0


async def run_create(args: argparse.Namespace, session: Session) -> int:
    if not args.filename:
        raise CliError("error: give -f FILE, or: kctl create namespace NAME")
    failed = 0
    for m in manifests.load(args.filename):
        kind = session.kind(m.obj["kind"])
        namespace = session.namespace_for(kind, m.obj.get("metadata", {}).get("namespace", ""))
        try:
            await session.api.create(kind, m.obj, namespace=namespace)
        except errors.ApiError as err:
            print(f"{from_api(err)} (from {m.where})", file=sys.stderr)
            failed += 1
            continue
        print(f"{printers.name_of(kind, m.obj)} created")
    return 1 if failed else 0


async def run_create_namespace(args: argparse.Namespace, session: Session) -> int:
    kind = session.kind("namespaces")
    await session.api.create(
        kind, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": args.name}}
    )
    print(f"namespace/{args.name} created")
    return 0


# -- delete ------------------------------------------------------------------------------------


async def run_delete(args: argparse.Namespace, session: Session) -> int:
    targets: list[tuple[Kind, str, str]] = []
    if args.filename:
        for m in manifests.load(args.filename):
            kind = session.kind(m.obj["kind"])
            ns = session.namespace_for(
                kind, m.obj.get("metadata", {}).get("namespace", "") or args.namespace
            )
            targets.append((kind, ns, m.obj.get("metadata", {}).get("name", "")))
    elif args.kind:
        kind_name, names = _split(args.kind, args.names)
        kind = session.kind(kind_name)
        ns = session.namespace_for(kind, args.namespace)
        if args.selector:
            page = await session.api.list_all(kind, namespace=ns, label_selector=args.selector)
            names += [i["metadata"]["name"] for i in page.items]
        if not names:
            raise CliError("error: resource name(s) or a label selector (-l) required")
        targets = [(kind, ns, n) for n in names]
    else:
        raise CliError("error: give KIND NAME, KIND/NAME, or -f FILE")
    policy = {"background": "Background", "foreground": "Foreground", "orphan": "Orphan"}[
        args.cascade
    ]
    failed = 0
    deleted = []
    for kind, ns, name in targets:
        try:
            await session.api.delete(
                kind,
                name,
                namespace=ns,
                propagation_policy=policy,
                grace_period_seconds=args.grace_period,
            )
        except errors.NotFound as err:
            if not args.ignore_not_found:
                print(from_api(err), file=sys.stderr)
                failed += 1
            continue
        print(f"{printers.name_of(kind, {'metadata': {'name': name}})} deleted")
        deleted.append((kind, ns, name))
    if args.wait == "true":
        await _wait_gone(session, deleted, args.timeout)
    return 1 if failed else 0


async def _wait_gone(
    session: Session, targets: list[tuple[Kind, str, str]], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    for kind, ns, name in targets:
        while True:
            try:
                await session.api.get(kind, name, namespace=ns)
            except errors.NotFound:
                break
            if time.monotonic() > deadline:
                raise CliError(
                    f"error: timed out after {timeout:.0f}s waiting for {kind.resource}/{name} "
                    "to be deleted (it may be waiting on finalizers or its node)"
                )
            await asyncio.sleep(0.2)


def _split(text: str, names: list[str]) -> tuple[str, list[str]]:
    if "/" in text:
        kind, _, name = text.partition("/")
        return kind, [name, *names]
    return text, list(names)


# -- edit --------------------------------------------------------------------------------------


async def run_edit(args: argparse.Namespace, session: Session) -> int:
    kind_name, names = _split(args.kind, args.names)
    if len(names) != 1:
        raise CliError("error: edit takes exactly one object: KIND NAME or KIND/NAME")
    kind = session.kind(kind_name)
    ns = session.namespace_for(kind, args.namespace)
    live = await session.api.get(kind, names[0], namespace=ns)
    editor = os.environ.get("KUBE_EDITOR") or os.environ.get("EDITOR") or "vi"
    with tempfile.NamedTemporaryFile(
        "w", suffix=".yaml", prefix=f"kctl-edit-{names[0]}-", delete=False
    ) as f:
        f.write(yaml.safe_dump(live, sort_keys=False))
        path = f.name
    result = subprocess.run([*shlex.split(editor), path], check=False)
    if result.returncode != 0:
        raise CliError(
            f"error: the editor {editor!r} exited with status {result.returncode}; "
            f"your changes are in {path}"
        )
    with open(path) as f:
        text = f.read()
    docs = manifests.parse(text, path)
    if len(docs) != 1:
        raise CliError(f"error: {path} must hold exactly one object; your changes are kept there")
    edited = docs[0].obj
    if edited == live:
        os.unlink(path)
        print("Edit cancelled, no changes made.")
        return 0
    try:
        await session.api.update(kind, edited)
    except errors.ApiError as err:
        raise CliError(f"{from_api(err)}\nyour changes are kept in {path}") from None
    os.unlink(path)
    print(f"{printers.name_of(kind, live)} edited")
    return 0
