"""The route controller: Node objects from an informer drive RouteSyncer.apply.

Every Node event only marks the routes dirty; one loop applies the informer's
whole current list (a level-triggered sync, so a missed or coalesced event
costs nothing) in a worker thread, since netlink calls block. A resync timer
re-applies every resync_period even without events, which puts back a route
someone deleted by hand. A sync whose routes the kernel refused is retried
after a back-off, doubling from 1 s up to the resync period. All waiting goes
through the injected Clock.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from kubelet.podnet.routes import RouteSyncer, RouteSyncResult, Skipped, internal_ip, pod_cidr
from machinery.clock import Clock, RealClock
from machinery.informer import Handlers
from machinery.log import get_logger

log = get_logger("kubelet.podnet")


class NodeInformer(Protocol):
    """What the controller needs of machinery.informer.Informer (on resource "nodes")."""

    def add_handlers(self, handlers: Handlers) -> None: ...

    def list(self) -> list[dict[str, Any]]: ...

    async def wait_synced(self, timeout: float | None = None) -> None: ...


class RouteController:
    def __init__(
        self,
        informer: NodeInformer,
        syncer: RouteSyncer,
        *,
        resync_period: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self._informer = informer
        self._syncer = syncer
        self._resync = resync_period
        self._clock = clock or RealClock()
        self._dirty = asyncio.Event()
        self.last_result: RouteSyncResult | None = None
        self.syncs = 0
        self.synced = asyncio.Event()  # set after each sync; a test may clear and wait
        informer.add_handlers(
            Handlers(
                on_add=lambda _: self._dirty.set(),
                on_update=lambda old, new: self._on_update(old, new),
                on_delete=lambda _: self._dirty.set(),
            )
        )

    def _on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        # Heartbeats change status.conditions every few seconds; only a change of
        # range or address matters to routes. The resync timer covers the rest.
        if _route_fields(old) != _route_fields(new):
            self._dirty.set()

    async def run(self) -> None:
        """Sync until cancelled."""
        await self._informer.wait_synced()
        ticker = asyncio.create_task(self._tick())
        delay = 1.0
        try:
            while True:
                await self._dirty.wait()
                self._dirty.clear()
                result = await self._sync()
                if result.ok:
                    delay = 1.0
                    continue
                await self._clock.sleep(delay)
                delay = min(delay * 2, max(self._resync, 1.0))
                self._dirty.set()
        finally:
            ticker.cancel()

    async def _sync(self) -> RouteSyncResult:
        try:
            result = await asyncio.to_thread(self._syncer.apply, self._informer.list())
        except Exception as err:  # a failed sync is retried, never fatal
            log.warning("failed to sync pod routes", node=self._syncer.node_name, err=err)
            result = RouteSyncResult(failed=(Skipped("", str(err)),))
        self._report(result)
        self.last_result = result
        self.syncs += 1
        self.synced.set()
        return result

    def _report(self, result: RouteSyncResult) -> None:
        node = self._syncer.node_name
        for route in result.added:
            log.info("added pod route", node=node, dst=route.destination, via=route.gateway)
        for destination in result.removed:
            log.info("removed pod route", node=node, dst=destination)
        for failure in result.failed:
            log.warning("pod route not applied", node=node, peer=failure.node, err=failure.reason)
        for skip in result.skipped:
            log.debug("no pod route for node", node=node, peer=skip.node, reason=skip.reason)

    async def _tick(self) -> None:
        while True:
            await self._clock.sleep(self._resync)
            self._dirty.set()


def _route_fields(node: dict[str, Any]) -> tuple[str, str]:
    return (pod_cidr(node), internal_ip(node))
