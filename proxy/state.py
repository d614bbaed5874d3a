"""The proxy's in-memory view of Services and Endpoints, fed by the informers.

The informer wiring calls upsert_*/delete_* (or apply() with a watch event)
for every change it sees; each call parses the object once (refusing a bad one
with InvalidObject and leaving the previous value in place), bumps a
generation number when the view really changed, and wakes the sync runner.
The runner renders from snapshot() and, once the rules of a snapshot are in
the kernel, calls settle() so that the Endpoints changes that snapshot carried
are timed from the moment they were observed.

The runner must not program anything before both kinds have been listed once:
a proxy that restarts and syncs with half its Services missing would tear down
their rules and break connections that nothing else was touching.
mark_listed() records that the initial list of one kind is complete.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from machinery.clock import Clock
from proxy.model import (
    Endpoints,
    InvalidObject,
    Service,
    object_key,
    parse_endpoints,
    parse_service,
)

KINDS = ("Service", "Endpoints")
Key = tuple[str, str]


@dataclasses.dataclass(frozen=True)
class Snapshot:
    services: tuple[Service, ...]
    endpoints: tuple[Endpoints, ...]
    generation: int
    pending_changes: tuple[float, ...]  # wall time each Endpoints change was observed


class ProxyState:
    def __init__(self, *, clock: Clock) -> None:
        self._clock = clock
        self._services: dict[Key, Service] = {}
        self._endpoints: dict[Key, Endpoints] = {}
        self._pending: list[float] = []
        self._listed: set[str] = set()
        self._listeners: list[Callable[[], None]] = []
        self.generation = 0

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call `listener` (synchronously, cheaply) after every effective change."""
        self._listeners.append(listener)

    # Changes from the informers. Each returns whether the view changed.

    def upsert_service(self, obj: Mapping[str, Any]) -> bool:
        svc = parse_service(obj)
        if self._services.get(svc.key) == svc:
            return False
        self._services[svc.key] = svc
        return self._changed()

    def delete_service(self, obj: Mapping[str, Any]) -> bool:
        if self._services.pop(object_key(obj, "Service"), None) is None:
            return False
        return self._changed()

    def upsert_endpoints(self, obj: Mapping[str, Any], *, observed_at: float | None = None) -> bool:
        eps = parse_endpoints(obj)
        if self._endpoints.get(eps.key) == eps:
            return False
        self._endpoints[eps.key] = eps
        return self._endpoints_changed(observed_at)

    def delete_endpoints(self, obj: Mapping[str, Any], *, observed_at: float | None = None) -> bool:
        if self._endpoints.pop(object_key(obj, "Endpoints"), None) is None:
            return False
        return self._endpoints_changed(observed_at)

    def apply(self, event: Mapping[str, Any], *, observed_at: float | None = None) -> bool:
        """One watch event {"type": ADDED|MODIFIED|DELETED|BOOKMARK, "object": {...}}."""
        kind_of, obj = event.get("type"), event.get("object")
        if kind_of == "BOOKMARK":
            return False
        if not isinstance(obj, Mapping):
            raise InvalidObject(f"watch event {kind_of}: object: missing or not an object")
        kind = obj.get("kind")
        if kind not in KINDS:
            raise InvalidObject(
                f"watch event {kind_of}: object.kind: must be one of {KINDS}, got {kind!r}"
            )
        if kind_of in ("ADDED", "MODIFIED"):
            if kind == "Service":
                return self.upsert_service(obj)
            return self.upsert_endpoints(obj, observed_at=observed_at)
        if kind_of == "DELETED":
            if kind == "Service":
                return self.delete_service(obj)
            return self.delete_endpoints(obj, observed_at=observed_at)
        raise InvalidObject(
            f"watch event: type: must be ADDED, MODIFIED, DELETED or BOOKMARK, got {kind_of!r}"
        )

    def mark_listed(self, kind: str) -> None:
        """The informer for `kind` has delivered its initial list."""
        if kind not in KINDS:
            raise ValueError(f"mark_listed: kind must be one of {KINDS}, got {kind!r}")
        self._listed.add(kind)
        self._notify()

    @property
    def listed(self) -> bool:
        return self._listed.issuperset(KINDS)

    # The runner's side.

    def snapshot(self) -> Snapshot:
        return Snapshot(
            services=tuple(self._services.values()),
            endpoints=tuple(self._endpoints.values()),
            generation=self.generation,
            pending_changes=tuple(self._pending),
        )

    def settle(self, snapshot: Snapshot) -> None:
        """The rules of `snapshot` are in place: forget the changes it carried."""
        del self._pending[: len(snapshot.pending_changes)]

    def _endpoints_changed(self, observed_at: float | None) -> bool:
        # The initial list is not a change: timing it would measure how long
        # the proxy took to start, not how fast it follows the cluster.
        if "Endpoints" in self._listed:
            self._pending.append(self._clock.now() if observed_at is None else observed_at)
        return self._changed()

    def _changed(self) -> bool:
        self.generation += 1
        self._notify()
        return True

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()
