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
    # The CA the CSR signer signs with; without both files the signer does not run.
    cluster_signing_cert_file: str = ""
    cluster_signing_key_file: str = ""
    cluster_signing_duration: float = 8760 * 3600.0
    # Put into ServiceAccount token Secrets as ca.crt, for programs in Pods.
    root_ca_file: str = ""


# A factory returns None for a controller its settings turn off (the signer without a CA).
Factory = Callable[
    [ApiClient, InformerFactory, EventRecorder, Clock, Settings], QueueController | None
]


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


def _csrapproving(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.certificates import CSRApprovingController

    return CSRApprovingController(client, factory, recorder, clock=clock)


def _csrsigning(client, factory, recorder, clock, s) -> QueueController | None:  # type: ignore[no-untyped-def]
    from controllers.certificates import CSRSigningController, load_ca

    if not s.cluster_signing_cert_file and not s.cluster_signing_key_file:
        return None
    if not s.cluster_signing_cert_file or not s.cluster_signing_key_file:
        raise ValueError(
            "the CSR signer needs both --cluster-signing-cert-file and --cluster-signing-key-file"
        )
    ca = load_ca(s.cluster_signing_cert_file, s.cluster_signing_key_file)
    return CSRSigningController(
        client, factory, recorder, ca=ca, duration=s.cluster_signing_duration, clock=clock
    )


def _csrcleaner(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.certificates import CSRCleaner

    return CSRCleaner(client, factory, recorder, clock=clock)


def _tokencleaner(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.tokens import TokenCleaner

    return TokenCleaner(client, factory, recorder, clock=clock)


def _serviceaccount_token(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.tokens import ServiceAccountTokenController

    root_ca = b""
    if s.root_ca_file:
        try:
            with open(s.root_ca_file, "rb") as f:
                root_ca = f.read()
        except OSError as err:
            raise ValueError(f"failed to read --root-ca-file: {err}") from None
    return ServiceAccountTokenController(client, factory, recorder, root_ca=root_ca, clock=clock)


def _serviceaccount(client, factory, recorder, clock, s) -> QueueController:  # type: ignore[no-untyped-def]
    from controllers.tokens import ServiceAccountsController

    return ServiceAccountsController(client, factory, recorder, clock=clock)


CONTROLLERS: dict[str, Factory] = {
    "replicaset": _replicaset,
    "deployment": _deployment,
    "endpoints": _endpoints,
    "nodelifecycle": _nodelifecycle,
    "nodeipam": _nodeipam,
    "namespace": _namespace,
    "csrapproving": _csrapproving,
    "csrsigning": _csrsigning,
    "csrcleaner": _csrcleaner,
    "tokencleaner": _tokencleaner,
    "serviceaccount-token": _serviceaccount_token,
    "serviceaccount": _serviceaccount,
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
        self.controllers: dict[str, QueueController] = {}
        for name in chosen:
            controller = CONTROLLERS[name](
                client, self.factory, self.recorder, self.clock, self.settings
            )
            if controller is not None:
                self.controllers[name] = controller
            elif names:
                raise ValueError(f"controller {name} is turned off by its settings: see --help")
            else:
                log.info("controller off: not configured", controller=name)

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


def _duration(text: str) -> float:
    from controllers.certificates import parse_duration

    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    p.add_argument(
        "--cluster-signing-cert-file",
        default="",
        metavar="PATH",
        help="PEM CA certificate the CSR signer signs with (with --cluster-signing-key-file; "
        "without them the signer is off)",
    )
    p.add_argument(
        "--cluster-signing-key-file", default="", metavar="PATH", help="the CA's PEM private key"
    )
    p.add_argument(
        "--cluster-signing-duration",
        default="8760h",
        type=_duration,
        metavar="DURATION",
        help="longest validity of a signed certificate, e.g. 8760h, 30m (default: %(default)s)",
    )
    p.add_argument(
        "--root-ca-file",
        default="",
        metavar="PATH",
        help="CA certificate put into ServiceAccount token Secrets as ca.crt",
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
    connection.follow_in_background(client, args)  # a replaced certificate is picked up
    settings = Settings(
        workers=args.workers,
        node_monitor_grace_period=args.node_monitor_grace_period,
        pod_eviction_timeout=args.pod_eviction_timeout,
        cluster_cidr=args.cluster_cidr,
        node_cidr_mask_size=args.node_cidr_mask_size,
        cluster_signing_cert_file=args.cluster_signing_cert_file,
        cluster_signing_key_file=args.cluster_signing_key_file,
        cluster_signing_duration=args.cluster_signing_duration,
        root_ca_file=args.root_ca_file,
    )
    names = [n.strip() for n in args.controllers.split(",") if n.strip()] or None
    try:
        manager = ControllerManager(client, names=names, settings=settings)
    except ValueError as err:
        log.error("cannot start controllers", err=err)
        return 2
    return await leaderelection.run_component(client, args, manager.run)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
