"""Token controllers: bootstrap token cleaner, ServiceAccount tokens, default ServiceAccounts.

* TokenCleaner deletes a bootstrap token's Secret (kube-system,
  type bootstrap.kubernetes.io/token) when its data.expiration passes. The API
  server already refuses an expired token; the cleaner only tidies up, so it
  waits on the injected Clock until each expiration (a FakeClock replays it).
  A token whose expiration cannot be read is left alone and logged: the API
  server refuses it, and deleting what an administrator mistyped would hide it.

* ServiceAccountTokenController fills Secrets of type
  kubernetes.io/service-account-token: a fresh random token (32 bytes from the
  operating system's CSPRNG, URL-safe), the namespace, the cluster CA when one
  is configured, and the kubernetes.io/service-account.uid annotation of the
  ServiceAccount it was issued for. A token a client put in a Secret before it
  was filled is replaced, so every token is one the controller made. A token
  Secret whose ServiceAccount is gone, or was recreated with another uid, is
  deleted (the API server already refuses its token); "gone" is confirmed with
  a read from the API server first, since a Secret can arrive in the informer
  before the ServiceAccount it names.

* ServiceAccountsController keeps a ServiceAccount named `default` in every
  Namespace that is not being deleted.

Token bytes are never logged.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
from collections.abc import Callable
from typing import Any

from controllers.base import QueueController, split_key
from machinery import errors, meta
from machinery.client import ApiClient
from machinery.clock import Clock, parse_rfc3339
from machinery.events import NORMAL, EventRecorder
from machinery.informer import Handlers, InformerFactory, object_key

Obj = dict[str, Any]

BOOTSTRAP_TOKEN_TYPE = "bootstrap.kubernetes.io/token"
BOOTSTRAP_NAMESPACE = "kube-system"
SERVICE_ACCOUNT_TOKEN_TYPE = "kubernetes.io/service-account-token"
SERVICE_ACCOUNT_NAME = "kubernetes.io/service-account.name"
SERVICE_ACCOUNT_UID = "kubernetes.io/service-account.uid"
DEFAULT_SERVICE_ACCOUNT = "default"
TOKEN_BYTES = 32


def _decoded(secret: Obj, key: str) -> str | None:
    value = (secret.get("data") or {}).get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):
        return None


def _b64(text: str | bytes) -> str:
    return base64.b64encode(text.encode() if isinstance(text, str) else text).decode()


# -- the bootstrap token cleaner ---------------------------------------------------------------


def bootstrap_expiration(secret: Obj) -> float | None | str:
    """When a bootstrap token Secret expires (epoch seconds), None if never, or why its
    expiration cannot be read."""
    text = _decoded(secret, "expiration")
    if text is None:
        return None if "expiration" not in (secret.get("data") or {}) else "not base64"
    try:
        return parse_rfc3339(text)
    except ValueError:
        return f"{text!r} is not an RFC 3339 time"


class TokenCleaner(QueueController):
    name = "tokencleaner"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 1,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.secrets = factory.informer("secrets")
        self.secrets.add_handlers(
            Handlers(on_add=self._changed, on_update=lambda _, cur: self._changed(cur))
        )

    async def run(self) -> None:
        await self.secrets.synced.wait()
        await super().run()

    def _changed(self, secret: Obj) -> None:
        if secret.get("type") == BOOTSTRAP_TOKEN_TYPE and meta.namespace(secret) == (
            BOOTSTRAP_NAMESPACE
        ):
            self.enqueue(secret)

    async def sync(self, key: str) -> None:
        secret = self.secrets.get_by_key(key)
        if secret is None or secret.get("type") != BOOTSTRAP_TOKEN_TYPE:
            return
        expires = bootstrap_expiration(secret)
        if expires is None:
            return
        if isinstance(expires, str):
            self.log.warning("bootstrap token has an unreadable expiration", key=key, err=expires)
            return
        remaining = expires - self.clock.now()
        if remaining > 0:
            self.queue.add_after(key, remaining)
            return
        namespace, name = split_key(key)
        try:
            await self.client.delete("secrets", name, namespace=namespace, uid=meta.uid(secret))
        except errors.NotFound:
            return
        except errors.Conflict:
            return  # replaced by a new Secret of the same name: its own event syncs it
        self.log.info("deleted expired bootstrap token", key=key)


# -- ServiceAccount tokens -----------------------------------------------------------------------


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def _account_of(secret: Obj) -> str:
    """ "ns/name" of the ServiceAccount a token Secret names."""
    return f"{meta.namespace(secret)}/{meta.annotations_of(secret).get(SERVICE_ACCOUNT_NAME, '')}"


class ServiceAccountTokenController(QueueController):
    name = "serviceaccount-token"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        root_ca: bytes = b"",
        token_source: Callable[[], str] = new_token,
        clock: Clock | None = None,
        workers: int = 2,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.root_ca = root_ca
        self.token_source = token_source
        self.secrets = factory.informer("secrets")
        self.accounts = factory.informer("serviceaccounts")
        self.secrets.add_index(
            "serviceaccount",
            lambda s: [_account_of(s)] if s.get("type") == SERVICE_ACCOUNT_TOKEN_TYPE else [],
        )
        self.secrets.add_handlers(
            Handlers(on_add=self._secret_changed, on_update=lambda _, c: self._secret_changed(c))
        )
        self.accounts.add_handlers(
            Handlers(
                on_add=self._account_changed,
                on_update=lambda _, cur: self._account_changed(cur),
                on_delete=self._account_changed,
            )
        )

    async def run(self) -> None:
        await asyncio.gather(self.secrets.synced.wait(), self.accounts.synced.wait())
        await super().run()

    def _secret_changed(self, secret: Obj) -> None:
        if secret.get("type") == SERVICE_ACCOUNT_TOKEN_TYPE:
            self.enqueue(secret)

    def _account_changed(self, account: Obj) -> None:
        for secret in self.secrets.by_index("serviceaccount", object_key(account)):
            self.enqueue(secret)

    async def sync(self, key: str) -> None:
        secret = self.secrets.get_by_key(key)
        if secret is None or secret.get("type") != SERVICE_ACCOUNT_TOKEN_TYPE:
            return
        if meta.is_deleting(secret):
            return
        log = self.log.bind(secret=key, serviceaccount=_account_of(secret))
        account = await self._account(secret)
        issued_for = meta.annotations_of(secret).get(SERVICE_ACCOUNT_UID, "")
        if account is None or (issued_for and issued_for != meta.uid(account)):
            await self._delete(secret)
            log.info("deleted token of a ServiceAccount that is gone")
            return
        if issued_for and _decoded(secret, "token"):
            return  # filled, for the ServiceAccount that exists
        await self.client.update("secrets", self._filled(secret, account))
        log.info("issued ServiceAccount token")
        self.recorder.event(
            account, NORMAL, "TokenIssued", f"issued a token in Secret {meta.name(secret)}"
        )

    async def _account(self, secret: Obj) -> Obj | None:
        """The ServiceAccount the Secret names: from the informer, or read when it is not
        there yet (a Secret created right after its ServiceAccount may arrive first)."""
        namespace, name = split_key(_account_of(secret))
        account = self.accounts.get(name, namespace)
        if account is not None or not name:
            return account
        try:
            return await self.client.get("serviceaccounts", name, namespace=namespace)
        except errors.NotFound:
            return None

    def _filled(self, secret: Obj, account: Obj) -> Obj:
        new = {**secret, "metadata": dict(secret["metadata"])}
        new["metadata"]["annotations"] = {
            **meta.annotations_of(secret),
            SERVICE_ACCOUNT_UID: meta.uid(account),
        }
        data = dict(secret.get("data") or {})
        data["token"] = _b64(self.token_source())
        data["namespace"] = _b64(meta.namespace(secret))
        if self.root_ca:
            data["ca.crt"] = _b64(self.root_ca)
        new["data"] = data
        new.pop("stringData", None)
        return new

    async def _delete(self, secret: Obj) -> None:
        try:
            await self.client.delete(
                "secrets", meta.name(secret), namespace=meta.namespace(secret), uid=meta.uid(secret)
            )
        except (errors.NotFound, errors.Conflict):
            pass  # gone already, or replaced by a new Secret that syncs on its own


# -- default ServiceAccounts ---------------------------------------------------------------------


class ServiceAccountsController(QueueController):
    name = "serviceaccount"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 1,
        names: tuple[str, ...] = (DEFAULT_SERVICE_ACCOUNT,),
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.names = names
        self.namespaces = factory.informer("namespaces")
        self.accounts = factory.informer("serviceaccounts")
        self.namespaces.add_handlers(
            Handlers(on_add=self.enqueue, on_update=lambda _, cur: self.enqueue(cur))
        )
        self.accounts.add_handlers(Handlers(on_delete=self._account_deleted))

    async def run(self) -> None:
        await asyncio.gather(self.namespaces.synced.wait(), self.accounts.synced.wait())
        await super().run()

    def _account_deleted(self, account: Obj) -> None:
        if meta.name(account) in self.names:
            self.queue.add(meta.namespace(account))

    async def sync(self, key: str) -> None:
        namespace = self.namespaces.get_by_key(key)
        if namespace is None or meta.is_deleting(namespace):
            return
        if (namespace.get("status") or {}).get("phase") == "Terminating":
            return
        for name in self.names:
            if self.accounts.get(name, key) is not None:
                continue
            try:
                await self.client.create(
                    "serviceaccounts",
                    {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
                    namespace=key,
                )
            except errors.AlreadyExists:
                continue
            except errors.NotFound:
                return  # the namespace went away after the informer saw it
            self.log.info("created ServiceAccount", namespace=key, name=name)
