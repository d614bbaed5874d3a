"""The Namespace controller: a deleted Namespace is emptied, then let go.

How the two kinds of finalizer interact (the API server's registry side):
deleting a Namespace sets its deletionTimestamp and phase Terminating and
keeps it while spec.finalizers is non-empty. Namespaces get spec.finalizers
["kubernetes"] by default; that entry is this controller's. Once nothing is
left in the Namespace, the controller removes "kubernetes" from
spec.finalizers with an update; if metadata.finalizers is empty too, that
update completes the deletion. metadata.finalizers (anyone's) hold it as
they hold any object.

A sync of a Namespace being deleted sets phase Terminating if the API server
did not, then deletes every object of every namespaced kind in it (a Pod
bound to a node is deleted gracefully and goes when its kubelet confirms),
and checks again every `recheck` seconds until nothing is left. While
content remains, the Namespace carries a NamespaceContentRemaining condition
saying what. New objects cannot be created meanwhile: the API server refuses
writes into a terminating Namespace.
"""

from __future__ import annotations

import collections
from typing import Any

from controllers import util
from controllers.base import QueueController
from machinery import errors, kinds, meta
from machinery.client import ApiClient
from machinery.clock import Clock, rfc3339
from machinery.events import WARNING, EventRecorder
from machinery.informer import Handlers, InformerFactory

Obj = dict[str, Any]

FINALIZER = "kubernetes"
REMAINING = "NamespaceContentRemaining"
NAMESPACED = tuple(k for k in kinds.KINDS if k.namespaced)


class NamespaceController(QueueController):
    name = "namespace"

    def __init__(
        self,
        client: ApiClient,
        factory: InformerFactory,
        recorder: EventRecorder,
        *,
        clock: Clock | None = None,
        workers: int = 2,
        recheck: float = 2.0,
    ) -> None:
        super().__init__(clock=clock, workers=workers)
        self.client = client
        self.recorder = recorder
        self.recheck = recheck
        self.namespaces = factory.informer("namespaces")
        self.namespaces.add_handlers(
            Handlers(on_add=self._changed, on_update=lambda _, cur: self._changed(cur))
        )

    async def run(self) -> None:
        await self.namespaces.synced.wait()
        await super().run()

    def _changed(self, namespace: Obj) -> None:
        if meta.is_deleting(namespace):
            self.enqueue(namespace)

    async def sync(self, key: str) -> None:
        namespace = self.namespaces.get_by_key(key)
        if namespace is None or not meta.is_deleting(namespace):
            return
        if FINALIZER not in ((namespace.get("spec") or {}).get("finalizers") or []):
            return  # our part is done; other finalizers are someone else's
        log = self.log.bind(namespace=key)
        namespace = await self._set_terminating(namespace)
        remaining = await self._delete_content(key)
        if remaining:
            summary = ", ".join(f"{r} has {n} resource instances" for r, n in remaining.items())
            await self._set_remaining(namespace, f"Some resources are remaining: {summary}")
            log.debug("namespace content remaining", remaining=summary)
            self.queue.add_after(key, self.recheck)
            return
        await self._finalize(namespace)
        log.info("namespace emptied, finalizer removed")

    async def _set_terminating(self, namespace: Obj) -> Obj:
        if (namespace.get("status") or {}).get("phase") == "Terminating":
            return namespace
        updated = meta.deep_copy(namespace)
        updated.setdefault("status", {})["phase"] = "Terminating"
        return await self.client.update_status("namespaces", updated)

    async def _delete_content(self, namespace: str) -> dict[str, int]:
        """Delete what is left; how many objects remain per resource."""
        remaining: dict[str, int] = collections.Counter()
        for kind in NAMESPACED:
            page = await self.client.list_all(kind, namespace=namespace)
            for obj in page.items:
                if not meta.is_deleting(obj):
                    try:
                        obj = await self.client.delete(
                            kind, meta.name(obj), namespace=namespace, uid=meta.uid(obj)
                        )
                    except (errors.NotFound, errors.Conflict):
                        continue  # gone already, or replaced: the next pass sees the new one
                    if not meta.is_deleting(obj):
                        continue  # deleted at once
                remaining[kind.resource] += 1
        return dict(remaining)

    async def _set_remaining(self, namespace: Obj, message: str) -> None:
        """Say what is left in a NamespaceContentRemaining condition, when that changed."""
        status = meta.deep_copy(namespace.get("status") or {})
        current = util.get_condition(status, REMAINING)
        if current is not None and current.get("message") == message:
            return
        since = current.get("lastTransitionTime") if current else None
        util.remove_condition(status, REMAINING)
        status.setdefault("conditions", []).append(
            {
                "type": REMAINING,
                "status": "True",
                "reason": "SomeResourcesRemain",
                "message": message,
                "lastTransitionTime": since or rfc3339(self.clock.now()),
            }
        )
        updated = meta.deep_copy(namespace)
        updated["status"] = status
        try:
            await self.client.update_status("namespaces", updated)
        except errors.Conflict:
            pass  # informational only; the next pass writes it again

    async def _finalize(self, namespace: Obj) -> None:
        updated = meta.deep_copy(namespace)
        spec = updated.setdefault("spec", {})
        # [] rather than absent: absent would be defaulted back to ["kubernetes"].
        spec["finalizers"] = [f for f in spec.get("finalizers") or [] if f != FINALIZER]
        try:
            await self.client.update("namespaces", updated)
        except errors.NotFound:
            return
        except errors.Invalid as err:
            self.recorder.event(
                namespace,
                WARNING,
                "NamespaceFinalizeFailed",
                f"failed to remove the {FINALIZER} finalizer: {err}",
            )
            raise
