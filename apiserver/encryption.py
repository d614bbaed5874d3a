"""Encryption at rest: Secrets are stored in etcd sealed with AES-GCM, never in plaintext.

The API server seals a value just before it is written to etcd and opens it just after
it is read, so everything above the store (validation, the registry's rules, the watch
cache's decoded objects) works on plaintext, and everything in etcd (its data directory,
its snapshots, a raw `etcdctl get`) holds only ciphertext. Only the resources named in
ENCRYPTED_RESOURCES are sealed, as in Kubernetes' usual encryption config; the others
keep their plain, fast path.

Stored form, as Kubernetes' aesgcm provider lays it out:

    k8s:enc:aesgcm:v1:<key name>:<12-byte random nonce><ciphertext><16-byte tag>

The etcd key of the object is the authenticated data, so a sealed value copied under
another key (another Secret's name, another namespace, another --etcd-prefix) does not
open. Random 96-bit nonces keep one key safe for about 2^32 writes; rotate well before.

Keys come from a key file, in one of two forms:

- bare: one line, base64 of 32 random bytes (what `new-key` writes); its key is named
  `key1`;
- a list, YAML or JSON: `keys: [{name: key2, secret: <base64>}, {name: key1, ...}]`.
  The first key seals every new write; every key listed opens what it sealed, so a key
  is rotated by putting a new one first, rewriting the Secrets (`rewrite` below), then
  dropping the old one.

Invariants: a sealed value never opens without the key named in its prefix; a value
that does not carry the `k8s:enc:` prefix is plaintext written before encryption was
turned on, and is read as it is (the next write of that object seals it).

Command line:

    python -m apiserver.encryption new-key PATH [--keep-existing]
    python -m apiserver.encryption add-key PATH [--name NAME]
    python -m apiserver.encryption rewrite --key-file PATH [--etcd-servers ...] [--etcd-prefix ...]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import dataclasses
import os
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import yaml
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from apiserver import store as st

ENCRYPTED_RESOURCES = ("secrets",)
ENCRYPTED_PREFIX = b"k8s:enc:"
AESGCM_PREFIX = b"k8s:enc:aesgcm:v1:"
BARE_KEY_NAME = "key1"
KEY_BYTES = 32
_KEY_SIZES = (16, 24, 32)  # AES-128, -192, -256
_NONCE_BYTES = 12
_TAG_BYTES = 16
_KEY_NAME = re.compile(r"^[A-Za-z0-9][-A-Za-z0-9_.]{0,62}$")


class DecryptError(Exception):
    """A stored value cannot be opened: unknown key, wrong key, altered or cut bytes."""


class KeyFileError(ValueError):
    """The key file is missing, unreadable or malformed; the message names what and where."""


@dataclasses.dataclass(frozen=True)
class EncryptionKey:
    name: str
    secret: bytes = dataclasses.field(repr=False)


class Transformer(Protocol):
    """How stored bytes of one resource differ from its plaintext encoding.

    context is the object's etcd key; a transformer binds the value to it.
    """

    def to_storage(self, data: bytes, *, context: bytes) -> bytes: ...
    def from_storage(self, data: bytes, *, context: bytes) -> bytes: ...


class PlaintextTransformer:
    """No key configured: writes stay plaintext, and a sealed value is a clear error."""

    def to_storage(self, data: bytes, *, context: bytes) -> bytes:
        return data

    def from_storage(self, data: bytes, *, context: bytes) -> bytes:
        if data.startswith(ENCRYPTED_PREFIX):
            raise DecryptError(
                f"the value is encrypted ({_provider_of(data)}) but this API server has no "
                "encryption key: start it with --encryption-key-file"
            )
        return data


class AesGcmTransformer:
    def __init__(self, keys: Sequence[EncryptionKey]) -> None:
        if not keys:
            raise ValueError("AesGcmTransformer needs at least one key")
        self._write = keys[0]
        self._write_prefix = AESGCM_PREFIX + keys[0].name.encode() + b":"
        self._ciphers = {k.name.encode(): AESGCM(k.secret) for k in keys}
        self._names = [k.name for k in keys]

    @property
    def write_key(self) -> str:
        return self._write.name

    def to_storage(self, data: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        sealed = self._ciphers[self._write.name.encode()].encrypt(nonce, data, context)
        return self._write_prefix + nonce + sealed

    def from_storage(self, data: bytes, *, context: bytes) -> bytes:
        if not data.startswith(ENCRYPTED_PREFIX):
            return data  # stored before encryption was turned on
        if not data.startswith(AESGCM_PREFIX):
            raise DecryptError(
                f"the value is encrypted with provider {_provider_of(data)}, "
                "which this API server does not have (it has aesgcm:v1)"
            )
        name, colon, rest = data[len(AESGCM_PREFIX) :].partition(b":")
        cipher = self._ciphers.get(name)
        if not colon or cipher is None:
            raise DecryptError(
                f"the value is encrypted with key {name.decode(errors='replace')!r}, which is "
                f"not in the key file (it has: {', '.join(self._names)})"
            )
        if len(rest) < _NONCE_BYTES + _TAG_BYTES:
            raise DecryptError(f"the value encrypted with key {name.decode()!r} is truncated")
        try:
            return cipher.decrypt(rest[:_NONCE_BYTES], rest[_NONCE_BYTES:], context)
        except InvalidTag:
            raise DecryptError(
                f"key {name.decode()!r} does not open the value: the key file holds a "
                "different key under that name, or the stored bytes were altered or moved"
            ) from None

    def is_current(self, data: bytes) -> bool:
        """Whether data is already sealed with the write key (rewrite skips it)."""
        return data.startswith(self._write_prefix)


def transformer_for(keys: Sequence[EncryptionKey]) -> PlaintextTransformer | AesGcmTransformer:
    return AesGcmTransformer(keys) if keys else PlaintextTransformer()


def _provider_of(data: bytes) -> str:
    rest = data[len(ENCRYPTED_PREFIX) :]
    parts = rest.split(b":", 2)
    return ":".join(p.decode(errors="replace") for p in parts[:2])


# -- key files ---------------------------------------------------------------------------------


def load_key_file(path: str | Path) -> list[EncryptionKey]:
    """The keys of a key file, the write key first; KeyFileError names what is wrong."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise KeyFileError(f"encryption key file {path}: cannot be read: {err}") from None
    return parse_keys(text, where=str(path))


def parse_keys(text: str, *, where: str) -> list[EncryptionKey]:
    stripped = text.strip()
    if not stripped:
        raise KeyFileError(f"encryption key file {where}: is empty")
    if "\n" not in stripped and ":" not in stripped:
        return [EncryptionKey(BARE_KEY_NAME, _secret(stripped, where))]
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise KeyFileError(f"encryption key file {where}: not valid YAML or JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or not doc["keys"]:
        raise KeyFileError(
            f"encryption key file {where}: must be base64 of {KEY_BYTES} bytes, or a mapping "
            "with a non-empty list `keys` of {name, secret}"
        )
    unknown = sorted(set(doc) - {"keys"})
    if unknown:
        raise KeyFileError(f"encryption key file {where}: unknown field {unknown[0]!r}")
    keys = [_entry(item, f"keys[{i}]", where) for i, item in enumerate(doc["keys"])]
    seen: set[str] = set()
    for i, key in enumerate(keys):
        if key.name in seen:
            raise KeyFileError(
                f"encryption key file {where}: keys[{i}].name: duplicate name {key.name!r}"
            )
        seen.add(key.name)
    return keys


def _entry(item: Any, path: str, where: str) -> EncryptionKey:
    if not isinstance(item, dict):
        raise KeyFileError(f"encryption key file {where}: {path}: must be a mapping")
    unknown = sorted(set(item) - {"name", "secret"})
    if unknown:
        raise KeyFileError(f"encryption key file {where}: {path}.{unknown[0]}: unknown field")
    name = item.get("name")
    if not isinstance(name, str) or not _KEY_NAME.match(name):
        raise KeyFileError(
            f"encryption key file {where}: {path}.name: must be 1-63 letters, digits, "
            f"'-', '_' or '.', starting with a letter or digit (got {name!r})"
        )
    secret = item.get("secret")
    if not isinstance(secret, str):
        raise KeyFileError(f"encryption key file {where}: {path}.secret: Required value")
    return EncryptionKey(name, _secret(secret, f"{where}: {path}.secret"))


def _secret(text: str, path: str) -> bytes:
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = None
    if raw is None or len(raw) not in _KEY_SIZES:
        got = "not base64" if raw is None else f"{len(raw)} bytes"
        raise KeyFileError(
            f"encryption key file {path}: must be base64 of {KEY_BYTES} random bytes "
            f"(16 and 24 are accepted too), got {got}"
        )
    return raw


def dump_keys(keys: Sequence[EncryptionKey]) -> str:
    """The list form of a key file, write key first."""
    body = {"keys": [{"name": k.name, "secret": base64.b64encode(k.secret).decode()} for k in keys]}
    header = (
        "# kubelite encryption keys for Secrets at rest: the first key encrypts new writes,\n"
        "# every key listed decrypts. Keep this file mode 0600.\n"
    )
    return header + yaml.safe_dump(body, sort_keys=False)


def write_private(path: Path, text: str) -> None:
    """Write text to path with mode 0600, atomically (a reader sees old or new, never half)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_key_text() -> str:
    return base64.b64encode(os.urandom(KEY_BYTES)).decode() + "\n"


def add_key(path: Path, name: str) -> str:
    """Put a fresh key named name first in the key file; the file's keys stay after it."""
    keys = load_key_file(path)
    if not _KEY_NAME.match(name):
        raise KeyFileError(f"key name {name!r}: must be 1-63 letters, digits, '-', '_' or '.'")
    if name in {k.name for k in keys}:
        raise KeyFileError(f"encryption key file {path}: already has a key named {name!r}")
    fresh = EncryptionKey(name, os.urandom(KEY_BYTES))
    write_private(path, dump_keys([fresh, *keys]))
    return name


# -- rewriting stored values under the write key -----------------------------------------------


@dataclasses.dataclass(frozen=True)
class RewriteResult:
    rewritten: int
    current: int  # already sealed with the write key
    raced: int  # changed by someone else meanwhile, so written with the write key anyway


async def rewrite(store: st.Store, *, prefix: str, transformer: AesGcmTransformer) -> RewriteResult:
    """Seal every stored value of the encrypted resources with the write key.

    Run after a new key was put first (and the API servers restarted with it), before
    the old key is dropped. Each value is replaced only if unchanged since it was read.
    Raises DecryptError for a value no key of the file opens.
    """
    rewritten = current = raced = 0
    for resource in ENCRYPTED_RESOURCES:
        base = f"{prefix.rstrip('/')}/{resource}/"
        start = ""
        while True:
            page = await store.list(base, limit=500, start=start)
            for kv in page.items:
                if transformer.is_current(kv.value):
                    current += 1
                    continue
                context = kv.key.encode()
                plain = transformer.from_storage(kv.value, context=context)
                sealed = transformer.to_storage(plain, context=context)
                try:
                    await store.update(kv.key, sealed, expected_revision=kv.mod_revision)
                    rewritten += 1
                except (st.RevisionMismatch, st.KeyNotFound):
                    raced += 1
            if not page.more or not page.items:
                break
            start = page.items[-1].key + "\0"
    return RewriteResult(rewritten, current, raced)


# -- command line ------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m apiserver.encryption",
        description="Manage the key file the API server encrypts Secrets in etcd with.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = commands.add_parser("new-key", help="write a fresh key file (32 random bytes, mode 0600)")
    p.add_argument("path", type=Path)
    p.add_argument(
        "--keep-existing",
        action="store_true",
        help="succeed without writing when PATH exists (a bring-up run twice keeps its key)",
    )
    p = commands.add_parser(
        "add-key", help="put a fresh key first in a key file: it encrypts, the others decrypt"
    )
    p.add_argument("path", type=Path)
    p.add_argument("--name", default="", help="the new key's name (default: key-<UTC time>)")
    p = commands.add_parser(
        "rewrite", help="re-encrypt every stored Secret with the key file's first key"
    )
    p.add_argument("--key-file", type=Path, required=True)
    p.add_argument("--etcd-servers", default="127.0.0.1:2379", help="comma-separated host:port")
    p.add_argument("--etcd-prefix", default="/registry")
    return parser


def _new_key(path: Path, keep_existing: bool) -> int:
    if path.exists():
        if keep_existing:
            load_key_file(path)  # an existing file must at least be a usable one
            print(f"{path}: exists, kept")
            return 0
        raise KeyFileError(
            f"{path} already exists: Secrets stored with its keys need it; remove it first "
            "to start over, or use add-key to rotate"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_private(path, new_key_text())
    print(f"{path}: wrote a new key")
    return 0


async def _rewrite(args: argparse.Namespace) -> int:
    keys = load_key_file(args.key_file)
    endpoints = [e.strip() for e in args.etcd_servers.split(",") if e.strip()]
    store = st.EtcdStore(endpoints)
    try:
        result = await rewrite(store, prefix=args.etcd_prefix, transformer=AesGcmTransformer(keys))
    finally:
        await store.close()
    print(
        f"rewrote {result.rewritten} with key {keys[0].name!r}; {result.current} already "
        f"current; {result.raced} written by others meanwhile"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "new-key":
            return _new_key(args.path, args.keep_existing)
        if args.command == "add-key":
            name = args.name or time.strftime("key-%Y%m%dT%H%M%SZ", time.gmtime())
            print(f"{args.path}: added key {add_key(args.path, name)!r}, which now encrypts")
            return 0
        return asyncio.run(_rewrite(args))
    except (KeyFileError, DecryptError, st.StoreError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
