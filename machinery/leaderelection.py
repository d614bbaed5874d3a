"""Leader election on a Lease object, for components that run in HA pairs.

A candidate holds the lease when spec.holderIdentity is its identity and it
renewed spec.renewTime within leaseDurationSeconds. Others wait and retry;
once the holder's renewTime is older than the lease duration, the first
candidate to update the Lease (a compare-and-swap on its resourceVersion)
takes over and bumps leaseTransitions. The leader renews every
retry_period; if it cannot renew for renew_deadline it stops leading at
once, before the lease expires for others, so two leaders never act at the
same time as long as clocks tick at the same rate.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine
from typing import Any

from machinery import errors
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock, parse_rfc3339, rfc3339_micro
from machinery.log import get_logger

log = get_logger("leaderelection")


class LeaderElector:
    def __init__(
        self,
        client: ApiClient,
        *,
        name: str,
        identity: str,
        namespace: str = "kube-system",
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry_period: float = 2.0,
        clock: Clock | None = None,
    ) -> None:
        if not renew_deadline < lease_duration:
            raise ValueError("renew_deadline must be shorter than lease_duration")
        self._client = client
        self.name = name
        self.identity = identity
        self._namespace = namespace
        self._duration = lease_duration
        self._renew_deadline = renew_deadline
        self._retry = retry_period
        self._clock = clock or RealClock()
        self.is_leader = False
        self._log = log.bind(lease=f"{namespace}/{name}", identity=identity)

    async def run(self, lead: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Wait for the lease, run lead() while holding it; return once leadership is lost."""
        while not await self._try_acquire():
            await self._clock.sleep(self._retry)
        self.is_leader = True
        self._log.info("became leader")
        work = asyncio.create_task(lead(), name=f"leader-{self.name}")
        try:
            await self._renew_until_lost(work)
        finally:
            self.is_leader = False
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            self._log.info("stopped leading")

    async def _renew_until_lost(self, work: asyncio.Task[None]) -> None:
        last_renew = self._clock.monotonic()
        while not work.done():
            await self._clock.sleep(self._retry)
            if await self._try_acquire():
                last_renew = self._clock.monotonic()
            elif self._clock.monotonic() - last_renew > self._renew_deadline:
                self._log.warning("failed to renew lease in time, giving it up")
                return

    async def release(self) -> None:
        """Give the lease up on a clean shutdown so a standby takes over at once."""
        with contextlib.suppress(errors.ApiError):
            lease = await self._client.get("leases", self.name, namespace=self._namespace)
            if lease.get("spec", {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                lease["spec"]["leaseDurationSeconds"] = 1
                await self._client.update("leases", lease)

    async def _try_acquire(self) -> bool:
        now = self._clock.now()
        try:
            lease = await self._client.get("leases", self.name, namespace=self._namespace)
        except errors.NotFound:
            return await self._create(now)
        except errors.ApiError as err:
            self._log.debug("failed to read lease", err=err)
            return False
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity", "")
        if holder and holder != self.identity and not self._expired(spec, now):
            return False
        if holder != self.identity:
            spec["leaseTransitions"] = int(spec.get("leaseTransitions", 0)) + (1 if holder else 0)
            spec["acquireTime"] = rfc3339_micro(now)
        spec["holderIdentity"] = self.identity
        spec["leaseDurationSeconds"] = max(1, int(self._duration))
        spec["renewTime"] = rfc3339_micro(now)
        try:
            await self._client.update("leases", lease)
        except errors.ApiError as err:
            self._log.debug("failed to update lease", err=err)
            return False
        return True

    def _expired(self, spec: dict[str, Any], now: float) -> bool:
        renewed = spec.get("renewTime") or spec.get("acquireTime")
        if not renewed:
            return True
        return (
            parse_rfc3339(renewed) + float(spec.get("leaseDurationSeconds") or self._duration) < now
        )

    async def _create(self, now: float) -> bool:
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.name, "namespace": self._namespace},
            "spec": {
                "holderIdentity": self.identity,
                "leaseDurationSeconds": max(1, int(self._duration)),
                "acquireTime": rfc3339_micro(now),
                "renewTime": rfc3339_micro(now),
                "leaseTransitions": 0,
            },
        }
        try:
            await self._client.create("leases", lease)
        except errors.ApiError as err:
            self._log.debug("failed to create lease", err=err)
            return False
        return True


def add_flags(parser: Any, *, default_lease: str) -> None:
    """The leader election flags every HA component takes."""
    parser.add_argument(
        "--leader-elect",
        default="true",
        choices=("true", "false"),
        help="take a Lease before acting, for HA pairs (default: %(default)s)",
    )
    parser.add_argument("--leader-elect-lease-name", default=default_lease)
    parser.add_argument("--leader-elect-lease-duration", type=float, default=15.0)
    parser.add_argument("--leader-elect-renew-deadline", type=float, default=10.0)
    parser.add_argument("--leader-elect-retry-period", type=float, default=2.0)


Work = Callable[[], Coroutine[Any, Any, None]]


async def run_component(client: ApiClient, args: Any, work: Work) -> int:
    """Run work (under the lease when --leader-elect) until SIGTERM/SIGINT or lost leadership.

    0 after a signal, 1 when the work ended or the lease was lost: a supervisor
    restarts the process, which then waits as a standby.
    """
    import os
    import signal
    import socket
    import uuid

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    elector = None
    if args.leader_elect == "true":
        elector = LeaderElector(
            client,
            name=args.leader_elect_lease_name,
            identity=f"{socket.gethostname()}_{os.getpid()}_{uuid.uuid4().hex[:6]}",
            lease_duration=args.leader_elect_lease_duration,
            renew_deadline=args.leader_elect_renew_deadline,
            retry_period=args.leader_elect_retry_period,
        )
        task: asyncio.Task[None] = asyncio.create_task(elector.run(work))
    else:
        task = asyncio.create_task(work())
    stopping = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    ended = task in done
    for t in (task, stopping):
        t.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    if elector is not None and not ended:
        await elector.release()
    await client.close()
    if ended:
        log.error("work ended or leadership was lost, exiting")
        return 1
    log.info("stopped on signal")
    return 0
