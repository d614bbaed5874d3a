"""kctl token, create serviceaccount, create token, certificate approve|deny.

Bootstrap tokens (what a node joins with) are Secrets `bootstrap-token-<id>` in
kube-system; `kctl token create` makes one and prints `<id>.<secret>` and
nothing else, so a script can capture it. `token list` never prints a
secret; `token delete` revokes at once (the API server stops accepting the
token the moment its Secret is gone).

`kctl create token SA` asks for a ServiceAccount token: it creates a
kubernetes.io/service-account-token Secret for the ServiceAccount and waits
for the controller manager's token controller to fill it, then prints the
token. Progress goes to stderr, the token alone to stdout.

`kctl certificate approve|deny NAME...` adds the Approved or Denied condition
to signing requests through their status, as an administrator's decision;
the signer then issues approved ones.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import secrets
import string
import sys
import time
from typing import Any

from cli import printers
from cli.errors import CliError, duration, from_api
from cli.session import Session
from machinery import errors
from machinery.clock import parse_rfc3339, rfc3339

Obj = dict[str, Any]

BOOTSTRAP_NAMESPACE = "kube-system"
BOOTSTRAP_PREFIX = "bootstrap-token-"
BOOTSTRAP_TYPE = "bootstrap.kubernetes.io/token"
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_NAME = "kubernetes.io/service-account.name"
_ALPHABET = string.ascii_lowercase + string.digits
CSR = "certificatesigningrequests"


def register(commands: argparse._SubParsersAction) -> None:
    """Add `token`, `certificate`, and `serviceaccount`/`token` under the existing `create`."""
    _register_token(commands)
    _register_certificate(commands)
    _register_create(_subcommands_of(commands.choices["create"]))


def _subcommands_of(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise RuntimeError(f"{parser.prog} has no sub-commands to add to")


def _register_token(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "token",
        help="manage bootstrap tokens (how nodes join)",
        description="Create, list and revoke bootstrap tokens.",
    )
    verbs = p.add_subparsers(dest="token_verb", metavar="create|list|delete")
    verbs.required = True
    create = verbs.add_parser("create", help="create a token and print <id>.<secret>")
    create.add_argument(
        "--ttl",
        type=duration,
        default=duration("24h"),
        help="how long the token is valid, 0 for ever (default: 24h)",
    )
    create.add_argument("--description", default="", help="what the token is for")
    create.add_argument(
        "--groups",
        default="",
        help="extra groups, comma-separated, each system:bootstrappers:<name>",
    )
    create.set_defaults(handler=run_token_create)
    listing = verbs.add_parser("list", help="list bootstrap tokens (ids only, never secrets)")
    listing.set_defaults(handler=run_token_list)
    delete = verbs.add_parser("delete", help="revoke tokens")
    delete.add_argument("tokens", nargs="+", metavar="ID|TOKEN")
    delete.set_defaults(handler=run_token_delete)


def _register_certificate(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("certificate", help="approve or deny certificate signing requests")
    verbs = p.add_subparsers(dest="certificate_verb", metavar="approve|deny")
    verbs.required = True
    for verb, doc in (("approve", "approve requests"), ("deny", "deny requests")):
        sub = verbs.add_parser(verb, help=doc)
        sub.add_argument("names", nargs="+", metavar="NAME")
        sub.set_defaults(handler=run_certificate, decision=verb)


def _register_create(what: argparse._SubParsersAction) -> None:
    what.metavar = f"{what.metavar}|serviceaccount|token" if what.metavar else None
    sa = what.add_parser("serviceaccount", aliases=["sa"], help="create a ServiceAccount")
    sa.add_argument("name")
    sa.set_defaults(handler=run_create_serviceaccount)
    token = what.add_parser(
        "token",
        help="issue a token for a ServiceAccount and print it",
        description="Create a service-account-token Secret for SERVICEACCOUNT, wait for the "
        "token controller to fill it, and print the token.",
    )
    token.add_argument("serviceaccount", metavar="SERVICEACCOUNT")
    token.add_argument(
        "--timeout",
        type=duration,
        default=duration("30s"),
        help="how long to wait for the token (default: 30s)",
    )
    token.set_defaults(handler=run_create_token)


# -- bootstrap tokens ------------------------------------------------------------------------


def new_bootstrap_token() -> tuple[str, str]:
    """(id, secret) of a new token: 6 and 16 characters of [a-z0-9], from the OS's CSPRNG."""
    token_id = "".join(secrets.choice(_ALPHABET) for _ in range(6))
    return token_id, "".join(secrets.choice(_ALPHABET) for _ in range(16))


def bootstrap_secret(
    token_id: str, token_secret: str, *, expires: float | None, description: str, groups: str
) -> Obj:
    data = {
        "token-id": token_id,
        "token-secret": token_secret,
        "usage-bootstrap-authentication": "true",
    }
    if expires is not None:
        data["expiration"] = rfc3339(expires)
    if description:
        data["description"] = description
    extra = ",".join(g.strip() for g in groups.split(",") if g.strip())
    if extra:
        data["auth-extra-groups"] = extra
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": BOOTSTRAP_TYPE,
        "metadata": {"name": BOOTSTRAP_PREFIX + token_id, "namespace": BOOTSTRAP_NAMESPACE},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


async def run_token_create(args: argparse.Namespace, session: Session) -> int:
    if args.ttl < 0:
        raise CliError("error: --ttl must not be negative")
    expires = time.time() + args.ttl if args.ttl > 0 else None
    for _ in range(5):  # ids collide once in two billion; retry rather than fail
        token_id, token_secret = new_bootstrap_token()
        secret = bootstrap_secret(
            token_id,
            token_secret,
            expires=expires,
            description=args.description,
            groups=args.groups,
        )
        try:
            await session.api.create("secrets", secret, namespace=BOOTSTRAP_NAMESPACE)
        except errors.AlreadyExists:
            continue
        print(f"{token_id}.{token_secret}")
        return 0
    raise CliError("error: failed to find a free bootstrap token id; try again")


def _text(secret: Obj, key: str) -> str:
    try:
        return base64.b64decode((secret.get("data") or {}).get(key, "")).decode()
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return ""


def _token_row(secret: Obj, now: float) -> list[str]:
    expiration = _text(secret, "expiration")
    ttl = "<forever>"
    if expiration:
        try:
            left = parse_rfc3339(expiration) - now
            ttl = "<expired>" if left <= 0 else printers.age(rfc3339(now - left), now)
        except ValueError:
            ttl = "<invalid>"
    usages = sorted(
        k.removeprefix("usage-bootstrap-")
        for k in (secret.get("data") or {})
        if k.startswith("usage-bootstrap-") and _text(secret, k) == "true"
    )
    return [
        _text(secret, "token-id") or secret["metadata"]["name"].removeprefix(BOOTSTRAP_PREFIX),
        ttl,
        expiration or "<never>",
        ",".join(usages) or "<none>",
        _text(secret, "description") or "<none>",
        _text(secret, "auth-extra-groups") or "<none>",
    ]


async def run_token_list(args: argparse.Namespace, session: Session) -> int:
    found = await session.api.list_all("secrets", namespace=BOOTSTRAP_NAMESPACE)
    tokens = [s for s in found.items if s.get("type") == BOOTSTRAP_TYPE]
    if not tokens:
        print("No bootstrap tokens found.", file=sys.stderr)
        return 0
    now = time.time()
    rows = [["ID", "TTL", "EXPIRES", "USAGES", "DESCRIPTION", "EXTRA GROUPS"]]
    rows += [_token_row(s, now) for s in sorted(tokens, key=lambda s: s["metadata"]["name"])]
    print(printers.align(rows))
    return 0


async def run_token_delete(args: argparse.Namespace, session: Session) -> int:
    failed = 0
    for given in args.tokens:
        token_id = given.partition(".")[0]
        try:
            await session.api.delete(
                "secrets", BOOTSTRAP_PREFIX + token_id, namespace=BOOTSTRAP_NAMESPACE
            )
        except errors.NotFound:
            print(f'error: bootstrap token "{token_id}" not found', file=sys.stderr)
            failed += 1
            continue
        except errors.ApiError as err:
            print(from_api(err), file=sys.stderr)
            failed += 1
            continue
        print(f'bootstrap token "{token_id}" deleted')
    return 1 if failed else 0


# -- ServiceAccounts and their tokens ---------------------------------------------------------


async def run_create_serviceaccount(args: argparse.Namespace, session: Session) -> int:
    account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": args.name}}
    await session.api.create("serviceaccounts", account, namespace=session.namespace)
    print(f"serviceaccount/{args.name} created")
    return 0


async def run_create_token(args: argparse.Namespace, session: Session) -> int:
    namespace, name = session.namespace, args.serviceaccount
    try:
        await session.api.get("serviceaccounts", name, namespace=namespace)
    except errors.NotFound:
        raise CliError(
            f'error: serviceaccount "{name}" not found in namespace "{namespace}"'
        ) from None
    secret = await session.api.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": SERVICE_ACCOUNT_TOKEN_TYPE,
            "metadata": {
                "generateName": f"{name}-token-",
                "annotations": {SERVICE_ACCOUNT_NAME: name},
            },
        },
        namespace=namespace,
    )
    secret_name = secret["metadata"]["name"]
    print(f"waiting for the token controller to fill secret/{secret_name}...", file=sys.stderr)
    token = await _wait_for_token(session, namespace, secret_name, args.timeout)
    print(token)
    return 0


async def _wait_for_token(session: Session, namespace: str, name: str, timeout: float) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            secret = await session.api.get("secrets", name, namespace=namespace)
        except errors.NotFound:
            raise CliError(
                f"error: secret/{name} was deleted before it got a token (was the "
                "ServiceAccount deleted?)"
            ) from None
        token = _text(secret, "token")
        if token:
            return token
        if loop.time() >= deadline:
            raise CliError(
                f"error: secret/{name} got no token within {timeout:g}s: is the controller "
                "manager running (its serviceaccount-token controller fills it)?"
            )
        await asyncio.sleep(0.2)


# -- certificate approve|deny ------------------------------------------------------------------


def decided(csr: Obj, decision: str, now: float) -> Obj:
    """The CSR with an administrator's Approved or Denied condition."""
    condition_type = "Approved" if decision == "approve" else "Denied"
    status = dict(csr.get("status") or {})
    status["conditions"] = [
        *(c for c in status.get("conditions") or [] if c.get("type") != condition_type),
        {
            "type": condition_type,
            "status": "True",
            "reason": "KctlApprove" if decision == "approve" else "KctlDeny",
            "message": f"This CSR was {condition_type.lower()} by kctl certificate {decision}.",
            "lastUpdateTime": rfc3339(now),
            "lastTransitionTime": rfc3339(now),
        },
    ]
    return {**csr, "status": status}


async def _decide(session: Session, name: str, decision: str) -> str:
    for _ in range(5):
        csr = await session.api.get(CSR, name)
        types = {c.get("type") for c in (csr.get("status") or {}).get("conditions") or []}
        if ("Approved" if decision == "approve" else "Denied") in types:
            return "already " + ("approved" if decision == "approve" else "denied")
        try:
            await session.api.update_status(CSR, decided(csr, decision, time.time()))
        except errors.Conflict:
            continue
        return "approved" if decision == "approve" else "denied"
    raise errors.Conflict(f"certificatesigningrequest {name} kept changing; try again")


async def run_certificate(args: argparse.Namespace, session: Session) -> int:
    failed = 0
    for name in args.names:
        try:
            outcome = await _decide(session, name, args.decision)
        except errors.ApiError as err:
            print(from_api(err), file=sys.stderr)
            failed += 1
            continue
        print(f"certificatesigningrequest.certificates.k8s.io/{name} {outcome}")
    return 1 if failed else 0
