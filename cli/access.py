"""kctl auth whoami and kctl auth can-i: who the server sees, and what it lets them do.

`can-i VERB RESOURCE[/NAME]` prints yes or no and exits 0 or 1, as kubectl
does, so a script can branch on it; with --why a refusal's reason follows on
stderr. A subresource is written as kubectl writes it: `kctl auth can-i
update pods --subresource=status`, or `pods/status`.
"""

from __future__ import annotations

import argparse
import sys

from cli import printers
from cli.errors import CliError
from cli.session import Session


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("auth", help="who am I, and may I")
    verbs = p.add_subparsers(dest="auth_verb", metavar="whoami|can-i")
    verbs.required = True
    whoami = verbs.add_parser("whoami", help="the identity the server sees for these credentials")
    whoami.set_defaults(handler=run_whoami)
    can_i = verbs.add_parser(
        "can-i",
        help="whether these credentials may do VERB on RESOURCE (exit 0: yes, 1: no)",
    )
    can_i.add_argument("verb", help="get, list, watch, create, update, patch, delete, ...")
    can_i.add_argument("resource", help="RESOURCE, RESOURCE/NAME or RESOURCE/SUBRESOURCE")
    can_i.add_argument("name", nargs="?", default="", help="the object's name, if one")
    can_i.add_argument("--subresource", default="", help="status, log, exec, binding, ...")
    can_i.add_argument("--why", action="store_true", help="say why not, on stderr")
    can_i.set_defaults(handler=run_can_i)


async def run_whoami(args: argparse.Namespace, session: Session) -> int:
    me = await session.api.whoami()
    if me.method == "none":
        print("the server authenticates no one (it runs without TLS)")
        return 0
    rows = [["ATTRIBUTE", "VALUE"], ["Username", me.user]]
    if me.uid:
        rows.append(["UID", me.uid])
    rows.append(["Groups", "[" + " ".join(me.groups) + "]"])
    rows.append(["Authenticated by", me.method])
    print(printers.align(rows))
    return 0


async def run_can_i(args: argparse.Namespace, session: Session) -> int:
    resource, _, rest = args.resource.partition("/")
    name, subresource = args.name, args.subresource
    if rest:
        kind = session.kind(resource)
        # pods/status names a subresource; pods/web names an object, as kubectl reads it.
        if rest in ("status", "log", "exec", "binding", "approval", "scale"):
            subresource = subresource or rest
        elif name:
            raise CliError(f"error: give the name once: {args.resource} and {name}")
        else:
            name = rest
    else:
        kind = session.kind(resource)
    answer = await session.api.may(
        args.verb,
        kind,
        namespace=session.namespace_for(kind, args.namespace),
        name=name,
        subresource=subresource,
    )
    print("yes" if answer.allowed else "no")
    if not answer.allowed and args.why and answer.reason:
        print(answer.reason, file=sys.stderr)
    return 0 if answer.allowed else 1
