"""What each API verb does to an object before and after it reaches the store.

The registry owns the rules Kubernetes' REST strategies encode: defaults and
validation on every write, server-owned metadata (uid, creationTimestamp,
generation, resourceVersion, deletionTimestamp) that clients cannot set,
the split between an object's spec (main resource) and its status (status
subresource), generateName, graceful deletion of Pods bound to a node,
finalizers, and optimistic concurrency.

Objects are stored as JSON without metadata.resourceVersion: the version is
etcd's mod revision of the key, added on every read. Every write is a
compare-and-swap on that revision. A write that carries a resourceVersion
fails with Conflict when it is stale; one that carries none is retried on
the latest version (an unconditional update).

Resources with a Transformer (Secrets, when the server has an encryption key)
are sealed in `_encode` after the size check, so the limit is on the object,
not on its ciphertext, and opened in `_plain` before anything reads them; a
value that cannot be opened is an InternalError naming the object, logged.

Pods are admitted by Pod Security (podsecurity.py) against their namespace's level after
validation, on create and on an update that changes their spec; a Namespace's
pod-security labels are validated with the rest of it.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import json
import random
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from apiserver import codec, encryption, podsecurity
from apiserver import store as st
from apiserver.serviceip import Allocation, Owner, ServiceAllocator
from apiserver.watchcache import WatchCache
from machinery import defaults, errors, kinds, validation
from machinery.clock import Clock, RealClock, rfc3339
from machinery.fields import FieldSelector
from machinery.kinds import Kind
from machinery.labels import Selector
from machinery.log import get_logger

log = get_logger("apiserver.registry")

MAX_OBJECT_BYTES = 1024 * 1024
# Kubernetes' alphabet for generated name suffixes: no vowels, no look-alikes.
_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"
_SERVER_METADATA = (
    "uid",
    "creationTimestamp",
    "generation",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
)
# Kinds whose status is reset on create: controllers and the proxy fill it in.
_RESET_STATUS_ON_CREATE = {"Deployment", "ReplicaSet", "Service"}
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


@dataclasses.dataclass(frozen=True)
class ListPage:
    items: list[bytes]
    resource_version: str
    continue_token: str


Mutation = Callable[[dict[str, Any]], dict[str, Any]]


class Registry:
    def __init__(
        self,
        store: st.Store,
        *,
        prefix: str = "/registry",
        clock: Clock | None = None,
        caches: dict[str, WatchCache] | None = None,
        rng: random.Random | None = None,
        max_object_bytes: int = MAX_OBJECT_BYTES,
        service_ips: ServiceAllocator | None = None,
        transformers: Mapping[str, encryption.Transformer] | None = None,
        pod_security: podsecurity.PodSecurity | None = None,
    ) -> None:
        self._store = store
        self._pod_security = pod_security or podsecurity.PodSecurity()
        # resource -> how its stored bytes are sealed; resources not named are stored plain.
        self._transformers = dict(transformers or {})
        # Services get their clusterIP and nodePorts inside create and update, as in
        # Kubernetes, so the Service a client gets back already has them.
        self._service_ips = service_ips
        self.prefix = prefix.rstrip("/")
        self._clock = clock or RealClock()
        self._caches = caches or {}
        self._rng = rng or random.Random()
        self._max_bytes = max_object_bytes

    # -- keys and encoding ----------------------------------------------------------

    def resource_prefix(self, kind: Kind, namespace: str = "") -> str:
        base = f"{self.prefix}/{kind.resource}/"
        return f"{base}{namespace}/" if kind.namespaced and namespace else base

    def key(self, kind: Kind, namespace: str, name: str) -> str:
        if kind.namespaced:
            return f"{self.prefix}/{kind.resource}/{namespace}/{name}"
        return f"{self.prefix}/{kind.resource}/{name}"

    def _encode(self, kind: Kind, obj: dict[str, Any], key: str) -> bytes:
        data = codec.encode(obj)
        if len(data) > self._max_bytes:
            name = obj["metadata"].get("name", "")
            raise errors.TooLarge(
                f'{kind.kind} "{name}" is too large: {len(data)} bytes '
                f"exceeds the limit of {self._max_bytes} bytes",
                kind=kind.kind,
                name=name,
            )
        transformer = self._transformers.get(kind.resource)
        if transformer is not None:
            data = transformer.to_storage(data, context=key.encode())
        return data

    def _plain(self, kind: Kind, kv: st.KeyValue) -> bytes:
        """The stored value as codec.encode wrote it, opened when its resource is sealed."""
        transformer = self._transformers.get(kind.resource)
        if transformer is None:
            return kv.value
        try:
            return transformer.from_storage(kv.value, context=kv.key.encode())
        except encryption.DecryptError as err:
            where = kv.key.removeprefix(self.prefix + "/")
            log.error("failed to decrypt a stored object", key=where, err=err)
            raise _Undecryptable(
                f"failed to decrypt {where} from storage: {err}", kind=kind.kind
            ) from None

    def _decode(self, kind: Kind, kv: st.KeyValue) -> dict[str, Any]:
        return codec.decode(self._plain(kind, kv), kv.mod_revision)

    def _not_found(self, kind: Kind, name: str) -> errors.NotFound:
        return errors.NotFound(f'{kind.resource} "{name}" not found', kind=kind.kind, name=name)

    def _conflict(self, kind: Kind, name: str, why: str) -> errors.Conflict:
        return errors.Conflict(
            f'Operation cannot be fulfilled on {kind.resource} "{name}": {why}',
            kind=kind.kind,
            name=name,
        )

    def _stale(self, kind: Kind, name: str) -> errors.Conflict:
        return self._conflict(
            kind,
            name,
            "the object has been modified; please apply your changes to the latest version "
            "and try again",
        )

    # -- create ------------------------------------------------------------------------------

    async def create(
        self, kind: Kind, namespace: str, obj: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        self._check_type(kind, obj)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise errors.BadRequest("metadata: must be an object")
        self._settle_namespace(kind, namespace, meta)
        defaults.apply_defaults(obj)
        self._prepare_for_create(kind, obj)
        if not meta.get("name") and not meta.get("generateName"):
            raise errors.Invalid.for_causes(
                kind.kind,
                "",
                [
                    errors.Cause(
                        "metadata.name", "FieldValueRequired", "name or generateName is required"
                    )
                ],
            )
        namespace_obj = None
        if kind.namespaced:
            namespace_obj = await self._check_namespace_open(meta["namespace"])
        generated = not meta.get("name")
        allocation: Allocation | None = None
        try:
            for _ in range(8):
                if generated:
                    meta["name"] = meta["generateName"] + "".join(
                        self._rng.choice(_SUFFIX_ALPHABET) for _ in range(5)
                    )
                self._validate(kind, obj)
                if kind.kind == "Pod":
                    self._admit_pod(namespace_obj, obj)
                if allocation is None and kind.kind == "Service" and self._service_ips:
                    allocation = await self._service_ips.allocate(obj, dry_run=dry_run)
                key = self.key(kind, meta.get("namespace", ""), meta["name"])
                data = self._encode(kind, obj, key)
                if dry_run:
                    return obj
                try:
                    revision = await self._store.create(key, data)
                except st.KeyExists:
                    if generated:
                        continue
                    raise errors.AlreadyExists(
                        f'{kind.resource} "{meta["name"]}" already exists',
                        kind=kind.kind,
                        name=meta["name"],
                    ) from None
                except st.StoreUnavailable as err:
                    raise errors.Unavailable(str(err)) from err
                meta["resourceVersion"] = str(revision)
                allocation = None  # stored: the Service holds its values now
                return obj
        finally:
            if allocation is not None and self._service_ips and not dry_run:
                await self._service_ips.release(allocation.taken)
        raise errors.AlreadyExists(
            f"{kind.resource}: could not find a free name for generateName "
            f"{meta['generateName']!r}; try again",
            kind=kind.kind,
        )

    @staticmethod
    def _check_type(kind: Kind, obj: Any) -> None:
        if not isinstance(obj, dict):
            raise errors.BadRequest(f"the {kind.kind} must be a JSON object")
        causes = []
        if obj.get("kind") != kind.kind:
            causes.append(
                errors.Cause(
                    "kind",
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(obj.get('kind'))}: must be {kind.kind} "
                    f"for the {kind.resource} resource",
                )
            )
        if obj.get("apiVersion") != kind.api_version:
            causes.append(
                errors.Cause(
                    "apiVersion",
                    "FieldValueInvalid",
                    f"Invalid value: {json.dumps(obj.get('apiVersion'))}: must be "
                    f"{kind.api_version}",
                )
            )
        if causes:
            name = (
                (obj.get("metadata") or {}).get("name", "")
                if isinstance(obj.get("metadata"), dict)
                else ""
            )
            raise errors.Invalid.for_causes(kind.kind, name, causes)

    @staticmethod
    def _settle_namespace(kind: Kind, namespace: str, meta: dict[str, Any]) -> None:
        if not kind.namespaced:
            if meta.get("namespace"):
                raise errors.BadRequest(
                    f"{kind.kind} is cluster-scoped: metadata.namespace must be empty, "
                    f"not {meta['namespace']!r}"
                )
            meta.pop("namespace", None)
            return
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise errors.BadRequest(
                f"the namespace of the object ({meta['namespace']}) does not match the "
                f"namespace of the request ({namespace})"
            )
        meta["namespace"] = meta.get("namespace") or namespace or "default"

    def _prepare_for_create(self, kind: Kind, obj: dict[str, Any]) -> None:
        meta = obj["metadata"]
        for field in (*_SERVER_METADATA, "resourceVersion"):
            meta.pop(field, None)
        meta["uid"] = str(uuid.UUID(int=self._rng.getrandbits(128), version=4))
        meta["creationTimestamp"] = rfc3339(self._clock.now())
        meta["generation"] = 1
        if kind.kind in _RESET_STATUS_ON_CREATE:
            obj["status"] = {}
        elif kind.kind == "Pod":
            obj["status"] = {"phase": "Pending", "qosClass": _qos_class(obj.get("spec", {}))}
        elif kind.kind == "Namespace":
            obj["status"] = {"phase": "Active"}

    def _validate(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None = None) -> None:
        causes = validation.validate(obj)
        if old is not None:
            causes += validation.validate_update(old, obj)
        if kind.kind == "Namespace" and not causes:
            causes += podsecurity.label_causes(obj["metadata"].get("labels") or {})
        if causes:
            raise errors.Invalid.for_causes(kind.kind, obj["metadata"].get("name", ""), causes)

    def _admit_pod(self, namespace: dict[str, Any] | None, pod: dict[str, Any]) -> None:
        if refusal := self._pod_security.admit(namespace, pod):
            raise refusal

    async def _check_namespace_open(self, namespace: str) -> dict[str, Any]:
        """The namespace, which must exist and not be terminating."""
        ns_kind = kinds.by_kind("Namespace")
        assert ns_kind is not None
        # The namespace cache answers almost every create without an etcd round trip;
        # a miss may only mean the cache lags a namespace created a moment ago.
        cache = self._caches.get(ns_kind.resource)
        cached = cache.get(self.key(ns_kind, "", namespace)) if cache is not None else None
        if cached is not None and not cached.obj["metadata"].get("deletionTimestamp"):
            return cached.obj
        try:
            ns = await self.get(ns_kind, "", namespace)
        except errors.NotFound:
            raise errors.NotFound(
                f'namespaces "{namespace}" not found', kind="Namespace", name=namespace
            ) from None
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.Forbidden(
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
                kind="Namespace",
                name=namespace,
            )
        return ns

    # -- read --------------------------------------------------------------------------------

    async def get(self, kind: Kind, namespace: str, name: str) -> dict[str, Any]:
        try:
            kv = await self._store.get(self.key(kind, namespace, name))
        except st.KeyNotFound:
            raise self._not_found(kind, name) from None
        except st.StoreUnavailable as err:
            raise errors.Unavailable(str(err)) from err
        return self._decode(kind, kv)

    async def list(
        self,
        kind: Kind,
        namespace: str,
        *,
        labels: Selector | None = None,
        fields: FieldSelector | None = None,
        limit: int = 0,
        continue_token: str = "",
        resource_version: str = "",
    ) -> ListPage:
        if limit < 0:
            raise errors.BadRequest(f"limit must not be negative, got {limit}")
        if resource_version == "0" and not continue_token and kind.resource in self._caches:
            return self._list_cached(kind, namespace, labels, fields)
        prefix = self.resource_prefix(kind, namespace)
        revision, start = 0, ""
        if continue_token:
            revision, start = _decode_continue(continue_token, prefix)
        elif resource_version not in ("", "0"):
            revision = _parse_rv(resource_version)
        items: list[bytes] = []
        more = False
        while True:
            want = max(limit - len(items), 0)
            try:
                page = await self._store.list(prefix, revision=revision, limit=want, start=start)
            except st.Compacted as err:
                raise errors.Expired(
                    f"the resourceVersion {revision} of this list is too old: it was compacted; "
                    "list again without a continue token",
                ) from err
            except st.FutureRevision:
                # Versions come from this server's answers; a newer one was made up.
                raise errors.BadRequest(
                    f"the resourceVersion {revision} of this list is newer than any the "
                    "server has written"
                ) from None
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            # etcd's header names its current revision; a read at a fixed one stays there.
            revision = revision or page.revision
            for kv in page.items:
                value = self._plain(kind, kv)
                obj = codec.decode(value, kv.mod_revision)
                if _matches(obj, labels, fields):
                    items.append(codec.with_version(value, kv.mod_revision))
            more = page.more
            if not more or not page.items:
                break
            start = page.items[-1].key + "\0"
            if limit and len(items) >= limit:
                break
        token = _encode_continue(revision, start) if more else ""
        return ListPage(items, str(revision), token)

    def _list_cached(
        self, kind: Kind, namespace: str, labels: Selector | None, fields: FieldSelector | None
    ) -> ListPage:
        cache = self._caches[kind.resource]
        items = [
            c.raw
            for c in sorted(cache.objects(), key=lambda c: c.key)
            if (not namespace or c.namespace == namespace) and _matches(c.obj, labels, fields)
        ]
        return ListPage(items, str(cache.revision), "")

    # -- update --------------------------------------------------------------------------------

    async def update(
        self, kind: Kind, namespace: str, name: str, obj: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        self._check_type(kind, obj)
        meta = obj.get("metadata")
        if not isinstance(meta, dict):
            raise errors.BadRequest("metadata: must be an object")
        if meta.get("name", name) != name:
            raise errors.BadRequest(
                f"the name of the object ({meta.get('name')}) does not match the name of the "
                f"request ({name})"
            )
        meta["name"] = name
        self._settle_namespace(kind, namespace, meta)
        defaults.apply_defaults(obj)
        precondition = meta.get("resourceVersion", "")
        if kind.kind == "Service" and self._service_ips is not None:
            return await self._update_service(
                kind, namespace, name, obj, precondition=precondition, dry_run=dry_run
            )
        namespace_obj = None
        if kind.kind == "Pod":
            namespace_obj = await self._namespace_of(meta["namespace"])
        return await self._guaranteed_update(
            kind,
            namespace,
            name,
            self._spec_mutation(kind, obj, namespace_obj),
            precondition=precondition,
            dry_run=dry_run,
        )

    async def _namespace_of(self, namespace: str) -> dict[str, Any] | None:
        """The namespace for Pod Security; None (the default level) when it is gone."""
        ns_kind = kinds.by_kind("Namespace")
        assert ns_kind is not None
        cache = self._caches.get(ns_kind.resource)
        cached = cache.get(self.key(ns_kind, "", namespace)) if cache is not None else None
        if cached is not None:
            return cached.obj
        try:
            return await self.get(ns_kind, "", namespace)
        except errors.NotFound:
            return None

    def _spec_mutation(
        self, kind: Kind, obj: dict[str, Any], namespace: dict[str, Any] | None = None
    ) -> Mutation:
        """The change an update of the main resource makes to the stored object."""

        def mutate(current: dict[str, Any]) -> dict[str, Any]:
            new = copy.deepcopy(obj)
            new_meta = new["metadata"]
            for field in _SERVER_METADATA:
                if field in current["metadata"]:
                    new_meta[field] = current["metadata"][field]
                else:
                    new_meta.pop(field, None)
            if kind.has_status:
                if "status" in current:
                    new["status"] = current["status"]
                else:
                    new.pop("status", None)
            spec_changed = _spec_of(new) != _spec_of(current)
            if spec_changed:
                new_meta["generation"] = current["metadata"].get("generation", 1) + 1
            self._validate(kind, new, current)
            if kind.kind == "Pod" and spec_changed:
                self._admit_pod(namespace, new)
            return new

        return mutate

    async def _update_service(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        obj: dict[str, Any],
        *,
        precondition: str,
        dry_run: bool,
    ) -> dict[str, Any]:
        """An update that keeps, takes or frees the Service's clusterIP and nodePorts.

        The allocation is worked out against the version read here, and the write is
        pinned to that version, so what was taken or freed matches what is stored.
        """
        assert self._service_ips is not None
        # The allocator reads the spec before the mutation validates it: refuse fields of
        # the wrong type first. (The other rules wait: the allocator drops what a change of
        # type leaves behind, which would not be valid for the new type.)
        if wrong_types := [
            c for c in validation.validate(obj) if c.reason == validation.TYPE_INVALID
        ]:
            raise errors.Invalid.for_causes(kind.kind, name, wrong_types)
        for _ in range(16):
            current = await self.get(kind, namespace, name)
            if precondition and precondition != current["metadata"]["resourceVersion"]:
                raise self._stale(kind, name)
            draft = copy.deepcopy(obj)
            allocation = await self._service_ips.reallocate(current, draft, dry_run=dry_run)
            try:
                updated = await self._guaranteed_update(
                    kind,
                    namespace,
                    name,
                    self._spec_mutation(kind, draft),
                    precondition=current["metadata"]["resourceVersion"],
                    dry_run=dry_run,
                )
            except errors.Conflict:
                await self._service_ips.release(allocation.taken)
                if precondition:
                    raise
                continue
            except BaseException:
                await self._service_ips.release(allocation.taken)
                raise
            if not dry_run:
                await self._service_ips.release(allocation.freed, Owner.of(current))
            return updated
        raise self._stale(kind, name)

    async def update_status(
        self, kind: Kind, namespace: str, name: str, obj: dict[str, Any]
    ) -> dict[str, Any]:
        if not kind.has_status:
            raise errors.MethodNotAllowed(f"{kind.resource} has no status subresource")
        self._check_type(kind, obj)
        meta = obj.get("metadata") or {}
        if not isinstance(meta, dict):
            raise errors.BadRequest("metadata: must be an object")
        precondition = meta.get("resourceVersion", "")
        status = obj.get("status", {})

        def mutate(current: dict[str, Any]) -> dict[str, Any]:
            new = copy.deepcopy(current)
            new["status"] = copy.deepcopy(status)
            self._validate(kind, new)
            return new

        return await self._guaranteed_update(
            kind, namespace, name, mutate, precondition=precondition
        )

    async def patch(
        self, kind: Kind, namespace: str, name: str, patch: Any, *, status: bool = False
    ) -> dict[str, Any]:
        if not isinstance(patch, dict):
            raise errors.BadRequest("a merge patch must be a JSON object")
        precondition = ""
        if isinstance(patch.get("metadata"), dict):
            precondition = str(patch["metadata"].get("resourceVersion") or "")
        for _ in range(16):
            current = await self.get(kind, namespace, name)
            merged = merge_patch(current, patch)
            if not isinstance(merged.get("metadata"), dict):
                raise errors.BadRequest("the patch must not remove metadata")
            merged["metadata"]["resourceVersion"] = (
                precondition or current["metadata"]["resourceVersion"]
            )
            try:
                if status:
                    return await self.update_status(kind, namespace, name, merged)
                return await self.update(kind, namespace, name, merged)
            except errors.Conflict:
                if precondition:
                    raise
        raise self._stale(kind, name)

    async def _guaranteed_update(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        mutate: Mutation,
        *,
        precondition: str = "",
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Read, mutate, compare-and-swap; retry on races unless the caller pinned a version."""
        key = self.key(kind, namespace, name)
        for _ in range(32):
            try:
                kv = await self._store.get(key)
            except st.KeyNotFound:
                raise self._not_found(kind, name) from None
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            if precondition and precondition != str(kv.mod_revision):
                raise self._stale(kind, name)
            current = self._decode(kind, kv)
            new = mutate(copy.deepcopy(current))
            new["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
            if new == current or dry_run:
                return new
            if _finished_deleting(new):
                return await self._delete_now(kind, key, name, kv.mod_revision, new)
            data = self._encode(kind, new, key)
            try:
                revision = await self._store.update(key, data, expected_revision=kv.mod_revision)
            except st.RevisionMismatch:
                if precondition:
                    raise self._stale(kind, name) from None
                continue
            except st.KeyNotFound:
                raise self._not_found(kind, name) from None
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            new["metadata"]["resourceVersion"] = str(revision)
            return new
        raise self._stale(kind, name)

    # -- delete -----------------------------------------------------------------------------------

    async def delete(
        self,
        kind: Kind,
        namespace: str,
        name: str,
        *,
        propagation: str = "",
        uid: str = "",
        resource_version: str = "",
        grace_period_seconds: int = -1,
    ) -> dict[str, Any]:
        propagation = propagation or "Background"
        if propagation not in ("Background", "Foreground", "Orphan"):
            raise errors.BadRequest(
                f'invalid propagationPolicy "{propagation}": '
                "must be Background, Foreground or Orphan"
            )
        if grace_period_seconds < -1:
            raise errors.BadRequest(
                f"gracePeriodSeconds must not be negative, got {grace_period_seconds}"
            )
        key = self.key(kind, namespace, name)
        for _ in range(32):
            try:
                kv = await self._store.get(key)
            except st.KeyNotFound:
                raise self._not_found(kind, name) from None
            except st.StoreUnavailable as err:
                raise errors.Unavailable(str(err)) from err
            try:
                current = self._decode(kind, kv)
            except _Undecryptable:
                if uid or resource_version:
                    raise self._conflict(
                        kind, name, "the stored object cannot be decrypted to check preconditions"
                    ) from None
                return await self._delete_sealed(kind, key, namespace, name, kv.mod_revision)
            meta = current["metadata"]
            if uid and meta.get("uid") != uid:
                raise self._conflict(
                    kind,
                    name,
                    f"Precondition failed: UID in precondition: {uid}, "
                    f"UID in object meta: {meta.get('uid')}",
                )
            if resource_version and resource_version != str(kv.mod_revision):
                raise self._conflict(
                    kind,
                    name,
                    f"Precondition failed: ResourceVersion in precondition: {resource_version}, "
                    f"ResourceVersion in object meta: {kv.mod_revision}",
                )
            new = self._mark_deleting(kind, current, propagation, grace_period_seconds)
            try:
                if new is None:
                    return await self._delete_now(kind, key, name, kv.mod_revision, current)
                if new == current:
                    return current
                revision = await self._store.update(
                    key, self._encode(kind, new, key), expected_revision=kv.mod_revision
                )
            except (st.RevisionMismatch, errors.Conflict):
                if resource_version:
                    raise self._stale(kind, name) from None
                continue
            new["metadata"]["resourceVersion"] = str(revision)
            log.debug(
                "object marked for deletion",
                resource=kind.resource,
                key=key,
                propagation=propagation,
            )
            return new
        raise self._stale(kind, name)

    def _mark_deleting(
        self, kind: Kind, current: dict[str, Any], propagation: str, grace: int
    ) -> dict[str, Any] | None:
        """The object with deletion recorded on it, or None when it can go at once."""
        new = copy.deepcopy(current)
        meta = new["metadata"]
        finalizers = list(meta.get("finalizers") or [])
        if not meta.get("deletionTimestamp"):
            if propagation == "Foreground" and FOREGROUND not in finalizers:
                finalizers.append(FOREGROUND)
            if propagation == "Orphan" and ORPHAN not in finalizers:
                finalizers.append(ORPHAN)
        pod_grace = self._pod_grace(kind, current, grace)
        held_by_spec = bool(_namespace_finalizers(new))
        if not finalizers and not pod_grace and not held_by_spec:
            return None
        if finalizers:
            meta["finalizers"] = finalizers
        if held_by_spec:
            # A Namespace's spec.finalizers hold it (Terminating) until the namespace
            # controller has emptied it and removed "kubernetes" from them.
            new.setdefault("status", {})["phase"] = "Terminating"
        now = self._clock.now()
        if not meta.get("deletionTimestamp"):
            meta["deletionTimestamp"] = rfc3339(now + (pod_grace or 0))
            if kind.kind == "Pod":
                meta["deletionGracePeriodSeconds"] = pod_grace or 0
        elif (
            kind.kind == "Pod" and grace >= 0 and grace < meta.get("deletionGracePeriodSeconds", 0)
        ):
            # A shorter grace period overrides a pending longer one, as for kubectl --force.
            meta["deletionGracePeriodSeconds"] = grace
            meta["deletionTimestamp"] = rfc3339(now + grace)
            if grace == 0 and not finalizers:
                return None
        return new

    @staticmethod
    def _pod_grace(kind: Kind, pod: dict[str, Any], grace: int) -> int:
        """Seconds a Pod's kubelet gets to stop it; 0 for a Pod that can go at once."""
        if kind.kind != "Pod":
            return 0
        spec, status = pod.get("spec", {}), pod.get("status", {})
        if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
            return 0
        if pod["metadata"].get("deletionTimestamp"):
            return pod["metadata"].get("deletionGracePeriodSeconds", 0)
        if grace >= 0:
            return grace
        return int(spec.get("terminationGracePeriodSeconds", 30))

    async def _delete_sealed(
        self, kind: Kind, key: str, namespace: str, name: str, revision: int
    ) -> dict[str, Any]:
        """Delete a value no key opens any more (its encryption key was lost).

        It could never be read again, so nothing it holds (finalizers, owners) can be
        honoured; refusing would leave it in etcd for good. Logged as what it is."""
        log.warning(
            "deleting an object that cannot be decrypted, without reading it",
            key=key.removeprefix(self.prefix + "/"),
        )
        meta: dict[str, Any] = {"name": name}
        if kind.namespaced:
            meta["namespace"] = namespace
        stub = {"apiVersion": kind.api_version, "kind": kind.kind, "metadata": meta}
        return await self._delete_now(kind, key, name, revision, stub)

    async def _delete_now(
        self, kind: Kind, key: str, name: str, revision: int, last: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            deleted_at, _ = await self._store.delete(key, expected_revision=revision)
        except st.RevisionMismatch:
            raise errors.Conflict(f"{kind.resource} {name!r} changed during deletion") from None
        except st.KeyNotFound:
            raise self._not_found(kind, name) from None
        except st.StoreUnavailable as err:
            raise errors.Unavailable(str(err)) from err
        last["metadata"]["resourceVersion"] = str(deleted_at)
        log.debug("object deleted", resource=kind.resource, key=key)
        if kind.kind == "Service" and self._service_ips is not None:
            try:
                await self._service_ips.release_service(last)
            except errors.ApiError as err:
                # The Service is gone either way; the allocator's repair frees what is left.
                log.warning("failed to release service allocations", key=key, err=err)
        return last

    # -- binding ----------------------------------------------------------------------------------

    async def bind(
        self, namespace: str, name: str, node_name: str, uid: str = ""
    ) -> dict[str, Any]:
        pods = kinds.by_kind("Pod")
        assert pods is not None
        if not node_name:
            raise errors.Invalid.for_causes(
                "Binding",
                name,
                [errors.Cause("target.name", "FieldValueRequired", "Required value")],
            )

        def mutate(pod: dict[str, Any]) -> dict[str, Any]:
            if uid and pod["metadata"].get("uid") != uid:
                raise self._conflict(pods, name, f"the Pod's UID is not {uid}")
            if pod["metadata"].get("deletionTimestamp"):
                raise self._conflict(
                    pods, name, f"pod {name} is being deleted, cannot be assigned to a host"
                )
            current = pod.get("spec", {}).get("nodeName")
            if current:
                raise self._conflict(
                    pods, name, f'pod {name} is already assigned to node "{current}"'
                )
            pod["spec"]["nodeName"] = node_name
            status = pod.setdefault("status", {})
            conditions = [
                c for c in status.get("conditions") or [] if c.get("type") != "PodScheduled"
            ]
            conditions.append(
                {
                    "type": "PodScheduled",
                    "status": "True",
                    "lastProbeTime": None,
                    "lastTransitionTime": rfc3339(self._clock.now()),
                }
            )
            status["conditions"] = conditions
            return pod

        return await self._guaranteed_update(pods, namespace, name, mutate)


def _finished_deleting(obj: dict[str, Any]) -> bool:
    """An object whose deletion only waited for finalizers that are now all gone."""
    meta = obj["metadata"]
    if not meta.get("deletionTimestamp") or meta.get("finalizers") or _namespace_finalizers(obj):
        return False
    return not meta.get("deletionGracePeriodSeconds")


def _namespace_finalizers(obj: dict[str, Any]) -> list[str]:
    """A Namespace's spec.finalizers, which hold its deletion besides metadata.finalizers."""
    if obj.get("kind") != "Namespace":
        return []
    return list((obj.get("spec") or {}).get("finalizers") or [])


def _spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if k not in ("metadata", "status")}


def _matches(obj: dict[str, Any], labels: Selector | None, fields: FieldSelector | None) -> bool:
    if (
        labels is not None
        and not labels.empty
        and not labels.matches(obj.get("metadata", {}).get("labels") or {})
    ):
        return False
    return fields is None or fields.empty or fields.matches(obj)


def _qos_class(spec: Any) -> str:
    """Guaranteed, Burstable or BestEffort, from the containers' requests and limits.

    It runs before validation: parts of the wrong type count as absent (validation then
    refuses the Pod anyway).
    """
    spec = _as_dict(spec)
    containers = [
        _as_dict(c)
        for field in ("containers", "initContainers")
        for c in (spec.get(field) if isinstance(spec.get(field), list) else [])
    ]
    requests_seen = limits_seen = False
    guaranteed = bool(containers)
    for c in containers:
        res = _as_dict(c.get("resources"))
        req, lim = _as_dict(res.get("requests")), _as_dict(res.get("limits"))
        requests_seen = requests_seen or bool(req)
        limits_seen = limits_seen or bool(lim)
        for name in ("cpu", "memory"):
            if name not in lim or req.get(name, lim[name]) != lim[name]:
                guaranteed = False
    if guaranteed:
        return "Guaranteed"
    return "Burstable" if requests_seen or limits_seen else "BestEffort"


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def merge_patch(target: Any, patch: Any) -> Any:
    """Apply a JSON merge patch (RFC 7386): null deletes, objects merge, the rest replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise errors.BadRequest(f"invalid resourceVersion {text!r}: must be a number") from None
    if value < 0:
        raise errors.BadRequest(f"invalid resourceVersion {text!r}: must not be negative")
    return value


def _encode_continue(revision: int, start: str) -> str:
    raw = json.dumps({"rv": revision, "start": start}).encode()
    return base64.urlsafe_b64encode(raw).decode()


class _Undecryptable(errors.InternalError):
    """A sealed value no configured key opens: still an internal error to a reader."""


def _decode_continue(token: str, prefix: str) -> tuple[int, str]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        revision, start = int(data["rv"]), str(data["start"])
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise errors.BadRequest(f"invalid continue token {token[:40]!r}") from None
    if not start.startswith(prefix):
        raise errors.BadRequest("the continue token belongs to another list request")
    return revision, start
