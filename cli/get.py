"""kctl get: list or fetch objects, print them, and optionally follow changes (-w)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cli import printers
from cli.errors import CliError
from cli.session import Session
from machinery import errors
from machinery.kinds import Kind

OUTPUTS = ("wide", "yaml", "json", "name")


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "get",
        help="display one or many objects",
        description="Display one or many objects of a kind, as a table or yaml/json.",
    )
    p.add_argument("kind", metavar="KIND[/NAME]", help="kind (pods, po, deploy, ...), or KIND/NAME")
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("-A", "--all-namespaces", action="store_true", help="list across all namespaces")
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("--field-selector", default="", help="field selector, e.g. spec.nodeName=node-1")
    p.add_argument("-o", "--output", default="", choices=OUTPUTS, help="output format")
    p.add_argument(
        "-w", "--watch", action="store_true", help="after listing, print changes as they happen"
    )
    p.add_argument("--no-headers", action="store_true", help="omit the table header")
    p.set_defaults(handler=run)


def split_kind_name(text: str, names: list[str]) -> tuple[str, list[str]]:
    if "/" in text:
        kind, _, name = text.partition("/")
        if not name:
            raise CliError(f"error: {text!r}: a name must follow the slash")
        return kind, [name, *names]
    return text, names


async def run(args: argparse.Namespace, session: Session) -> int:
    kind_name, names = split_kind_name(args.kind, args.names)
    kind = session.kind(kind_name)
    namespace = "" if args.all_namespaces else session.namespace_for(kind, args.namespace)
    items, version = await fetch(session, kind, namespace, names, args)
    out = sys.stdout
    if args.output in ("yaml", "json"):
        print(printers.render(items, args.output, single=len(names) == 1), file=out)
    elif args.output == "name":
        for item in items:
            print(printers.name_of(kind, item), file=out)
    elif items:
        print(
            printers.table(
                kind,
                items,
                wide=args.output == "wide",
                all_namespaces=args.all_namespaces,
                headers=not args.no_headers,
            ),
            file=out,
        )
    elif not args.watch:
        where = "" if args.all_namespaces or not kind.namespaced else f" in {namespace} namespace"
        print(f"No resources found{where}.", file=sys.stderr)
    out.flush()
    if args.watch:
        await follow(session, kind, namespace, names, version, args)
    return 0


async def fetch(
    session: Session, kind: Kind, namespace: str, names: list[str], args: argparse.Namespace
) -> tuple[list[dict[str, Any]], str]:
    if names:
        items = []
        for name in names:
            items.append(await session.api.get(kind, name, namespace=namespace))
        version = max((i["metadata"]["resourceVersion"] for i in items), key=int, default="")
        return items, version
    page = await session.api.list_all(
        kind, namespace=namespace, label_selector=args.selector, field_selector=args.field_selector
    )
    return page.items, page.resource_version


async def follow(
    session: Session,
    kind: Kind,
    namespace: str,
    names: list[str],
    version: str,
    args: argparse.Namespace,
) -> None:
    while True:
        try:
            async for event in session.api.watch(
                kind,
                namespace=namespace,
                label_selector=args.selector,
                field_selector=args.field_selector,
                resource_version=version,
            ):
                if event.type == "BOOKMARK":
                    version = event.resource_version or version
                    continue
                version = event.resource_version
                if names and event.object["metadata"]["name"] not in names:
                    continue
                print_event(kind, event.type, event.object, args)
        except errors.Expired:
            _, version = await fetch(session, kind, namespace, names, args)


def print_event(kind: Kind, event_type: str, obj: dict[str, Any], args: argparse.Namespace) -> None:
    if args.output in ("yaml", "json"):
        print(printers.render([obj], args.output, single=True))
        if args.output == "yaml":
            print("---")
    elif args.output == "name":
        print(printers.name_of(kind, obj))
    else:
        line = printers.table(
            kind,
            [obj],
            wide=args.output == "wide",
            all_namespaces=args.all_namespaces,
            headers=False,
        )
        print(f"{line}{'   (deleted)' if event_type == 'DELETED' else ''}")
    sys.stdout.flush()
