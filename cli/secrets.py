"""kctl create secret generic|tls: a Secret from literals, files and env files.

The Secret is built here and sent whole; the server validates it (key names,
sizes, the keys its type needs). Values are read as bytes and sent base64-encoded
in `data`, so binary files survive; nothing of a value is ever printed.

Sources, as kubectl takes them:
  --from-literal=KEY=VALUE     one key
  --from-file=[KEY=]PATH       a file (KEY defaults to its base name), or a directory:
                               each regular file directly in it, keyed by its name
  --from-env-file=PATH         KEY=VALUE lines; blank lines and # comments are skipped
A key given twice is an error rather than a silent overwrite.
"""

from __future__ import annotations

import argparse
import base64
from pathlib import Path
from typing import Any

from cli.errors import CliError
from cli.session import Session


def register_create(what: argparse._SubParsersAction) -> None:
    """Add `secret` (generic, tls) under kctl create."""
    secret = what.add_parser("secret", help="create a Secret (generic or tls)")
    kinds = secret.add_subparsers(dest="secret_type", metavar="generic|tls")
    kinds.required = True
    generic = kinds.add_parser(
        "generic", help="a Secret from literals, files, directories or env files"
    )
    generic.add_argument("name")
    generic.add_argument(
        "--from-literal", action="append", default=[], metavar="KEY=VALUE", help="a key and value"
    )
    generic.add_argument(
        "--from-file",
        action="append",
        default=[],
        metavar="[KEY=]PATH",
        help="a file's content (key: its name) or each file of a directory",
    )
    generic.add_argument(
        "--from-env-file", action="append", default=[], metavar="PATH", help="KEY=VALUE lines"
    )
    generic.add_argument("--type", default="Opaque", help="the Secret's type (default: Opaque)")
    _common(generic)
    generic.set_defaults(handler=run_create_generic)

    tls = kinds.add_parser("tls", help="a kubernetes.io/tls Secret from a certificate and key")
    tls.add_argument("name")
    tls.add_argument("--cert", required=True, metavar="PATH", help="PEM certificate (tls.crt)")
    tls.add_argument("--key", required=True, metavar="PATH", help="PEM private key (tls.key)")
    _common(tls)
    tls.set_defaults(handler=run_create_tls)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--immutable", action="store_true", help="refuse later changes to the Secret's data"
    )
    p.add_argument("--dry-run", action="store_true", help="validate on the server without saving")


# -- collecting data ---------------------------------------------------------------------------


def collect(*, literals: list[str], files: list[str], env_files: list[str]) -> dict[str, bytes]:
    """key -> value from every source, in the order kubectl reads them; CliError on a clash."""
    data: dict[str, bytes] = {}
    for literal in literals:
        key, eq, value = literal.partition("=")
        if not eq or not key:
            raise CliError(f"error: invalid literal source {literal!r}, expected KEY=VALUE")
        _put(data, key, value.encode(), f"--from-literal={key}=...")
    for source in files:
        for key, path in _file_sources(source):
            _put(data, key, _read(path, f"--from-file={source}"), f"--from-file={source}")
    for env_file in env_files:
        for key, value in _env_lines(env_file):
            _put(data, key, value.encode(), f"--from-env-file={env_file}")
    return data


def _put(data: dict[str, bytes], key: str, value: bytes, where: str) -> None:
    if key in data:
        raise CliError(
            f"error: {where}: cannot add key {key!r}: another source already gave that key"
        )
    data[key] = value


def _file_sources(source: str) -> list[tuple[str, Path]]:
    key, eq, path_text = source.partition("=")
    if not eq:
        key, path_text = "", source
    elif not key or not path_text:
        raise CliError(f"error: invalid file source {source!r}, expected [KEY=]PATH")
    path = Path(path_text)
    if path.is_dir():
        if key:
            raise CliError(f"error: --from-file={source}: a directory cannot be given a key")
        # Only regular files directly inside, as kubectl: no recursion, no devices.
        return [(entry.name, entry) for entry in sorted(path.iterdir()) if entry.is_file()]
    return [(key or path.name, path)]


def _read(path: Path, where: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise CliError(f"error: {where}: cannot read {path}: {err.strerror}") from None


def _env_lines(path_text: str) -> list[tuple[str, str]]:
    raw = _read(Path(path_text), f"--from-env-file={path_text}")
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        raise CliError(f"error: --from-env-file={path_text}: is not UTF-8 text") from None
    out = []
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.lstrip()
        if not stripped or stripped.startswith("#"):
            continue
        key, eq, value = stripped.partition("=")
        if not eq or not key.strip():
            raise CliError(
                f"error: {path_text}:{number}: expected KEY=VALUE, got {key.strip()[:40]!r}"
            )
        out.append((key.strip(), value))
    return out


def secret_manifest(
    name: str, namespace: str, data: dict[str, bytes], *, secret_type: str, immutable: bool
) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": secret_type,
        "data": {k: base64.b64encode(v).decode() for k, v in data.items()},
    }
    if immutable:
        obj["immutable"] = True
    return obj


# -- commands ----------------------------------------------------------------------------------


async def _create(args: argparse.Namespace, session: Session, obj: dict[str, Any]) -> int:
    kind = session.kind("secrets")
    await session.api.create(
        kind, obj, namespace=obj["metadata"]["namespace"], dry_run=args.dry_run
    )
    suffix = " (server dry run)" if args.dry_run else ""
    print(f"secret/{obj['metadata']['name']} created{suffix}")
    return 0


async def run_create_generic(args: argparse.Namespace, session: Session) -> int:
    data = collect(literals=args.from_literal, files=args.from_file, env_files=args.from_env_file)
    namespace = session.namespace_for(session.kind("secrets"), args.namespace)
    obj = secret_manifest(
        args.name, namespace, data, secret_type=args.type, immutable=args.immutable
    )
    return await _create(args, session, obj)


async def run_create_tls(args: argparse.Namespace, session: Session) -> int:
    data = {
        "tls.crt": _read(Path(args.cert), "--cert"),
        "tls.key": _read(Path(args.key), "--key"),
    }
    namespace = session.namespace_for(session.kind("secrets"), args.namespace)
    obj = secret_manifest(
        args.name, namespace, data, secret_type="kubernetes.io/tls", immutable=args.immutable
    )
    return await _create(args, session, obj)
