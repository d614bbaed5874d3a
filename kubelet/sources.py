"""The ConfigMaps and Secrets this node's Pods use, fetched by name and kept for a short while.

Node restriction lets a kubelet get a ConfigMap or Secret only by name, and
only one that a Pod bound to its node refers to; it may not list or watch
them. So, as Kubernetes' kubelet does with its "Get" change-detection
strategy, each object is fetched with a get and its copy is trusted for `ttl`
seconds:

- before a new Pod's worker starts, the agent awaits `fetch` of every object
  the Pod uses, so a worker never judges a ConfigMap missing because it was
  not asked for yet;
- a worker's read (`configmap`, `secret`; synchronous, the volumes.Sources and
  envvars.Sources protocols) answers from the copy at once and, when the copy
  is older than ttl, starts a fetch in the background;
- the agent calls `fetch` for every object its Pods use once per ttl, so a
  change reaches a Pod that is not syncing within about one ttl.

Whenever a fetch finds the object different from the copy (changed, created,
deleted), `changed(kind, namespace, name)` is called, and the agent wakes the
Pods that read it so they sync volumes and environment again.

A refused or failed fetch (Forbidden while the API server has not yet seen the
Pod bound here, Unavailable) keeps the previous copy, or none, and is retried
after at most a second; NotFound is a definite answer (the object is absent)
and is kept for ttl like any other.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock
from machinery.log import get_logger

log = get_logger("kubelet")

Obj = dict[str, Any]
# ("ConfigMap" | "Secret", namespace, name)
SourceRef = tuple[str, str, str]

DEFAULT_TTL_S = 10.0
_RETRY_S = 1.0
_RESOURCES = {"ConfigMap": "configmaps", "Secret": "secrets"}


@dataclasses.dataclass
class _Copy:
    obj: Obj | None  # None: the object does not exist (or was never read)
    expires: float


class Sources:
    def __init__(
        self,
        client: ApiClient,
        *,
        clock: Clock,
        ttl: float = DEFAULT_TTL_S,
        changed: Callable[[str, str, str], None] = lambda _k, _ns, _n: None,
    ) -> None:
        self._client = client
        self._clock = clock
        self._ttl = ttl
        self._changed = changed
        self._copies: dict[SourceRef, _Copy] = {}
        self._fetching: dict[SourceRef, asyncio.Task[None]] = {}

    @property
    def ttl(self) -> float:
        return self._ttl

    # -- reads from Pod workers ------------------------------------------------------------------

    def configmap(self, namespace: str, name: str) -> Obj | None:
        return self._read(("ConfigMap", namespace, name))

    def secret(self, namespace: str, name: str) -> Obj | None:
        return self._read(("Secret", namespace, name))

    def _read(self, ref: SourceRef) -> Obj | None:
        copy = self._copies.get(ref)
        if copy is None or copy.expires <= self._clock.now():
            self._start(ref)
        return copy.obj if copy is not None else None

    # -- fetching ------------------------------------------------------------------------------

    def fresh(self, refs: Iterable[SourceRef]) -> bool:
        """Whether every one of refs has a copy younger than ttl."""
        now = self._clock.now()
        return all((c := self._copies.get(r)) is not None and c.expires > now for r in refs)

    async def fetch(self, refs: Iterable[SourceRef]) -> None:
        """Fetch each of refs whose copy is missing or older than ttl; return when all answered."""
        now = self._clock.now()
        stale = [r for r in set(refs) if (c := self._copies.get(r)) is None or c.expires <= now]
        tasks = [self._start(ref) for ref in stale]
        if tasks:
            await asyncio.gather(*(asyncio.shield(t) for t in tasks), return_exceptions=True)

    def retain(self, refs: Iterable[SourceRef]) -> None:
        """Forget the copies of objects no Pod here uses any more."""
        keep = set(refs)
        for ref in [r for r in self._copies if r not in keep]:
            del self._copies[ref]

    async def close(self) -> None:
        tasks = list(self._fetching.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, ref: SourceRef) -> asyncio.Task[None]:
        task = self._fetching.get(ref)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._fetch(ref), name=f"get-{ref[0]}")
            self._fetching[ref] = task
            task.add_done_callback(lambda _t: self._fetching.pop(ref, None))
        return task

    async def _fetch(self, ref: SourceRef) -> None:
        kind, namespace, name = ref
        previous = self._copies.get(ref)
        try:
            obj: Obj | None = await self._client.get(_RESOURCES[kind], name, namespace=namespace)
        except errors.NotFound:
            obj = None
        except errors.ApiError as err:
            log.debug(
                "failed to get pod source, retrying",
                kind=kind,
                object=f"{namespace}/{name}",
                err=err,
            )
            kept = previous.obj if previous is not None else None
            self._copies[ref] = _Copy(kept, self._clock.now() + min(_RETRY_S, self._ttl))
            return
        self._copies[ref] = _Copy(obj, self._clock.now() + self._ttl)
        if _version(obj) != _version(previous.obj if previous is not None else None):
            self._changed(kind, namespace, name)


def _version(obj: Obj | None) -> str | None:
    if obj is None:
        return None
    meta = obj.get("metadata") or {}
    return f"{meta.get('uid', '')}/{meta.get('resourceVersion', '')}"
