"""kubelite-controller-manager: the controllers of the cluster in one process.

The process takes the "kube-controller-manager" Lease before any controller
acts, so a second instance is a hot standby that takes over within the
lease duration when the first dies. All controllers share one set of
informers. Losing the lease ends the process (with a non-zero status, for
its supervisor to restart it as a standby): a half-stopped controller that
still writes would be worse than a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable

from prometheus_client import start_http_server

from controllers.base import QueueController
from machinery import connection, leaderelection
from machinery import log as logsetup
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from machinery.log import get_logger

log = get_logger("controller-manager")


@dataclasses.dataclass
class Settings:
    workers: int = 4
    node_monitor_grace_period: float = 40.0
    pod_eviction_timeout: float = 300.0
    cluster_cidr: str = "10.244.0.0/16"
    node_cidr_mask_size: int = 24


Factory = Callable[[ApiClient, InformerFactory, EventRecorder, Clock, Settings], QueueController]


def _replicaset(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.replicaset import ReplicaSetController

    return ReplicaSetController(client, factory, recorder, clock=clock, workers=s.workers)


def _deployment(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.deployment import DeploymentController

    return DeploymentController(client, factory, recorder, clock=clock, workers=s.workers)


def _endpoints(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.endpoints import EndpointsController

    return EndpointsController(client, factory, recorder, clock=clock, workers=s.workers)


def _nodelifecycle(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.nodelifecycle import NodeLifecycleController

    return NodeLifecycleController(
        client,
        factory,
        recorder,
        clock=clock,
        grace_period=s.node_monitor_grace_period,
        default_toleration_seconds=s.pod_eviction_timeout,
    )


def _nodeipam(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.nodeipam import NodeIpamController

    return NodeIpamController(
        client,
        factory,
        recorder,
        clock=clock,
        cluster_cidr=s.cluster_cidr,
        node_mask=s.node_cidr_mask_size,
    )


def _namespace(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.namespace import NamespaceController

    return NamespaceController(client, factory, recorder, clock=clock)


CONTROLLERS: dict[str, Factory] = {
    "replicaset": _replicaset,
    "deployment": _deployment,
    "endpoints": _endpoints,
    "nodelifecycle": _nodelifecycle,
    "nodeipam": _nodeipam,
    "namespace": _namespace,
}


class ControllerManager:
    def __init__(
        self,
        client: ApiClient,
        *,
        names: list[str] | None = None,
        settings: Settings | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.client = client
        self.clock = clock or RealClock()
        self.settings = settings or Settings()
        self.factory = InformerFactory(client, clock=self.clock)
        self.recorder = EventRecorder(client, component="controller-manager", clock=self.clock)
        unknown = sorted(set(names or []) - set(CONTROLLERS))
        if unknown:
            raise ValueError(
                f"unknown controllers: {', '.join(unknown)} (known: {', '.join(CONTROLLERS)})"
            )
        chosen = names or list(CONTROLLERS)
        self.controllers: dict[str, QueueController] = {
            name: CONTROLLERS[name](client, self.factory, self.recorder, self.clock, self.settings)
            for name in chosen
        }

    async def run(self) -> None:
        """Start the informers, wait for them, then run every controller until cancelled."""
        self.factory.start()
        await self.factory.wait_synced()
        log.info("informers synced, starting controllers", controllers=",".join(self.controllers))
        tasks = [asyncio.create_task(c.run(), name=n) for n, c in self.controllers.items()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await self.factory.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="kubelite-controller-manager", description=__doc__.split("\n\n")[0]
    )
    connection.add_flags(p, default_server="")
    p.add_argument(
        "--controllers", default="", help=f"comma-separated subset of: {', '.join(CONTROLLERS)}"
    )
    p.add_argument(
        "--workers", type=int, default=4, help="workers per controller (default: %(default)s)"
    )
    p.add_argument(
        "--node-monitor-grace-period",
        type=float,
        default=40.0,
        help="seconds without a Lease renewal before a node is NotReady (default: %(default)s)",
    )
    p.add_argument(
        "--pod-eviction-timeout",
        type=float,
        default=300.0,
        help="default toleration seconds for unreachable/not-ready nodes (default: %(default)s)",
    )
    p.add_argument(
        "--cluster-cidr", default="10.244.0.0/16", help="Pod network (default: %(default)s)"
    )
    p.add_argument(
        "--node-cidr-mask-size", type=int, default=24, help="per-node prefix (default: %(default)s)"
    )
    leaderelection.add_flags(p, default_lease="kube-controller-manager")
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port"
    )
    p.add_argument("--metrics-address", default="127.0.0.1")
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    try:
        client = connection.connect(args)
    except connection.ConnectionConfigError as err:
        log.error("cannot connect", err=err)
        return 2
    settings = Settings(
        workers=args.workers,
        node_monitor_grace_period=args.node_monitor_grace_period,
        pod_eviction_timeout=args.pod_eviction_timeout,
        cluster_cidr=args.cluster_cidr,
        node_cidr_mask_size=args.node_cidr_mask_size,
    )
    names = [n.strip() for n in args.controllers.split(",") if n.strip()] or None
    manager = ControllerManager(client, names=names, settings=settings)
    return await leaderelection.run_component(client, args, manager.run)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
