"""Bearer tokens the API server accepts: bootstrap tokens, ServiceAccount tokens, a static file.

Each class here is a TokenAuthenticator (apiserver.auth): it answers a UserInfo
for a token it knows and None for any other, so the Authenticator can offer a
token to each in turn. None of them raises for a bad token, and none logs one.

Bootstrap and ServiceAccount tokens live in Secrets and are read from the API
server's own Secrets watch cache (which holds them decrypted), so a token
works as soon as its Secret is written and stops working as soon as it is
deleted, with no extra etcd read per request.

Invariants:
* A token is compared with hmac.compare_digest against the stored one, never
  with ==, so the time an answer takes says nothing about how much of a guess
  was right. Lookups go through a SHA-256 of the token, for the same reason.
* A bootstrap token is refused once its expiration has passed (by the injected
  Clock), without waiting for the token cleaner to delete its Secret.
* A ServiceAccount token is valid only while the ServiceAccount named in its
  Secret exists with the uid recorded there: deleting the ServiceAccount, or
  recreating it under the same name, invalidates every token issued for it.
"""

from __future__ import annotations

import base64
import binascii
import csv
import dataclasses
import hashlib
import hmac
import pathlib
import re
from collections.abc import Callable
from typing import Any

from apiserver.watchcache import DELETED, CacheEvent, WatchCache
from machinery import auth
from machinery.auth import UserInfo
from machinery.clock import Clock, parse_rfc3339

BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAP_TOKEN_NAMESPACE = "kube-system"
BOOTSTRAP_TOKEN_PREFIX = "bootstrap-token-"
BOOTSTRAP_EXTRA_GROUP_PREFIX = f"{auth.BOOTSTRAPPERS_GROUP}:"
BOOTSTRAP_TOKEN = re.compile(r"([a-z0-9]{6})\.([a-z0-9]{16})")

SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_NAME = "kubernetes.io/service-account.name"
SERVICE_ACCOUNT_UID = "kubernetes.io/service-account.uid"

# (kind resource, namespace, name) -> the etcd key a watch cache files the object under.
KeyOf = Callable[[str, str, str], str]


def _data(secret: dict[str, Any]) -> dict[str, str]:
    """A Secret's data decoded to text; values that are not base64 UTF-8 are left out."""
    out = {}
    for key, value in (secret.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, ValueError, TypeError):
            continue
    return out


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


# -- bootstrap tokens ------------------------------------------------------------------------


class BootstrapTokens:
    """`<id>.<secret>` tokens from `bootstrap-token-<id>` Secrets in kube-system."""

    def __init__(self, secrets: WatchCache, *, key_of: KeyOf, clock: Clock) -> None:
        self._secrets = secrets
        self._key_of = key_of
        self._clock = clock

    def authenticate_token(self, token: str) -> UserInfo | None:
        match = BOOTSTRAP_TOKEN.fullmatch(token)
        if match is None:
            return None
        token_id, token_secret = match.groups()
        key = self._key_of("secrets", BOOTSTRAP_TOKEN_NAMESPACE, BOOTSTRAP_TOKEN_PREFIX + token_id)
        cached = self._secrets.get(key)
        if cached is None:
            return None  # never issued, or revoked
        secret = cached.obj
        if secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            return None
        if (secret.get("metadata") or {}).get("deletionTimestamp"):
            return None
        data = _data(secret)
        # Compare the secret first and always, so an unknown id and a wrong secret for a
        # known one cost the same.
        if not _same(data.get("token-secret", ""), token_secret):
            return None
        if data.get("token-id") != token_id:
            return None
        if data.get("usage-bootstrap-authentication") != "true":
            return None
        if bootstrap_token_expired(data, self._clock.now()):
            return None
        groups = bootstrap_extra_groups(data)
        if groups is None:
            return None
        return UserInfo(
            f"{auth.BOOTSTRAP_USER_PREFIX}{token_id}",
            (auth.BOOTSTRAPPERS_GROUP, *groups),
            method="bootstrap-token",
        )


def bootstrap_expiration(data: dict[str, str]) -> float | None:
    """When a bootstrap token expires (seconds since the epoch); None if never.

    ValueError if the expiration is not an RFC 3339 timestamp.
    """
    text = data.get("expiration", "")
    if not text:
        return None
    return parse_rfc3339(text)


def bootstrap_token_expired(data: dict[str, str], now: float) -> bool:
    """Whether a token with this (decoded) Secret data is past its expiration; an
    unreadable expiration counts as expired, so a typo never makes a token eternal."""
    try:
        expires = bootstrap_expiration(data)
    except ValueError:
        return True
    return expires is not None and now >= expires


def bootstrap_extra_groups(data: dict[str, str]) -> tuple[str, ...] | None:
    """The auth-extra-groups of a bootstrap token; None if one is not system:bootstrappers:*
    (such a token is refused rather than trusted with a group it may not grant)."""
    groups = tuple(g.strip() for g in data.get("auth-extra-groups", "").split(",") if g.strip())
    if any(not g.startswith(BOOTSTRAP_EXTRA_GROUP_PREFIX) for g in groups):
        return None
    return groups


# -- ServiceAccount tokens -------------------------------------------------------------------


class ServiceAccountTokens:
    """Tokens of kubernetes.io/service-account-token Secrets, by an index on the token.

    The index (SHA-256 of the token -> Secret key) follows the Secrets cache's
    events. A cache that relists after losing its watch replaces its objects
    without events, so a hit is checked against the cache before it is trusted,
    and a miss rebuilds the index when the cache has moved past what the index
    has seen (a rebuild per change at most, however many bad tokens arrive).
    """

    def __init__(self, secrets: WatchCache, service_accounts: WatchCache, *, key_of: KeyOf) -> None:
        self._secrets = secrets
        self._service_accounts = service_accounts
        self._key_of = key_of
        # SHA-256 of a token -> the cache key of its Secret, and back.
        self._index: dict[bytes, str] = {}
        self._by_key: dict[str, bytes] = {}
        self._revision = 0
        secrets.add_listener(self._on_event)

    def authenticate_token(self, token: str) -> UserInfo | None:
        digest = _digest(token)
        key = self._index.get(digest)
        if key is None and self._secrets.revision > self._revision:
            self._rebuild()
            key = self._index.get(digest)
        if key is None:
            return None
        cached = self._secrets.get(key)
        if cached is None:
            return None
        found = _token_of(cached.obj)
        if found is None or not _same(found, token):
            return None
        return self._user_of(cached.obj)

    def _user_of(self, secret: dict[str, Any]) -> UserInfo | None:
        meta = secret.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        namespace, name = meta.get("namespace", ""), annotations.get(SERVICE_ACCOUNT_NAME, "")
        uid = annotations.get(SERVICE_ACCOUNT_UID, "")
        if not name or not uid or meta.get("deletionTimestamp"):
            return None
        account = self._service_accounts.get(self._key_of("serviceaccounts", namespace, name))
        if account is None or (account.obj.get("metadata") or {}).get("uid") != uid:
            return None  # deleted, or recreated: the token was for the old one
        return UserInfo(
            auth.service_account_user(namespace, name),
            auth.service_account_groups(namespace),
            uid=uid,
            method="serviceaccount",
        )

    def _on_event(self, event: CacheEvent) -> None:
        self._forget(event.current.key)
        if event.type != DELETED:
            self._remember(event.current.key, event.current.obj)
        self._revision = max(self._revision, event.revision)

    def _forget(self, key: str) -> None:
        digest = self._by_key.pop(key, None)
        if digest is not None and self._index.get(digest) == key:
            del self._index[digest]

    def _remember(self, key: str, secret: dict[str, Any]) -> None:
        token = _token_of(secret)
        if token is None:
            return
        digest = _digest(token)
        self._index[digest] = key
        self._by_key[key] = digest

    def _rebuild(self) -> None:
        self._revision = self._secrets.revision
        self._index.clear()
        self._by_key.clear()
        for cached in list(self._secrets.objects()):
            self._remember(cached.key, cached.obj)


def _token_of(secret: dict[str, Any]) -> str | None:
    """The token of a filled ServiceAccount token Secret, or None."""
    if secret.get("type") != SERVICE_ACCOUNT_TOKEN_TYPE:
        return None
    token = _data(secret).get("token", "")
    return token or None


# -- the static token file -------------------------------------------------------------------


class TokenFileError(ValueError):
    """The static token file cannot be read; the message names the file and line."""


@dataclasses.dataclass(frozen=True)
class _StaticToken:
    token: str
    user: UserInfo


class StaticTokenFile:
    """Tokens from a CSV file of `token,user,uid,"group1,group2"` lines, read once at start.

    Lines that are empty or start with # are skipped. The groups column is optional.
    """

    def __init__(self, tokens: list[_StaticToken]) -> None:
        self._by_digest = {_digest(t.token): t for t in tokens}

    @classmethod
    def read(cls, path: str | pathlib.Path) -> StaticTokenFile:
        """The file's tokens; TokenFileError naming the line when one is malformed."""
        path = pathlib.Path(path)
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as err:
            raise TokenFileError(f"failed to read token file {path}: {err}") from None
        return cls(parse_token_file(text, source=str(path)))

    def authenticate_token(self, token: str) -> UserInfo | None:
        found = self._by_digest.get(_digest(token))
        if found is None or not _same(found.token, token):
            return None
        return found.user

    def __len__(self) -> int:
        return len(self._by_digest)


def parse_token_file(text: str, *, source: str = "token file") -> list[_StaticToken]:
    """The tokens of a static token file's text; TokenFileError at the first bad line."""
    tokens: list[_StaticToken] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{source} line {number}"
        try:
            row = next(csv.reader([line], strict=True))
        except csv.Error as err:
            raise TokenFileError(f"{where}: not a CSV line: {err}") from None
        token = _static_token(row, where)
        if token.token in seen:
            raise TokenFileError(f"{where}: the token is already given on line {seen[token.token]}")
        seen[token.token] = number
        tokens.append(token)
    return tokens


def _static_token(row: list[str], where: str) -> _StaticToken:
    fields = [f.strip() for f in row]
    if len(fields) < 3:
        raise TokenFileError(
            f'{where}: has {len(fields)} fields; want token,user,uid[,"group1,group2"]'
        )
    if len(fields) > 4:
        raise TokenFileError(
            f"{where}: has {len(fields)} fields; want at most 4 (quote the groups column: "
            f'token,user,uid,"group1,group2")'
        )
    token, user, uid = fields[:3]
    if not token:
        raise TokenFileError(f"{where}: the token (field 1) is empty")
    if any(c.isspace() for c in token):
        raise TokenFileError(f"{where}: the token (field 1) contains whitespace")
    if not user:
        raise TokenFileError(f"{where}: the user name (field 2) is empty")
    groups = tuple(g.strip() for g in fields[3].split(",") if g.strip()) if len(fields) > 3 else ()
    return _StaticToken(token, UserInfo(user, groups, uid=uid, method="static-token"))
