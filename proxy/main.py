"""kubelite-proxy: keep this node's iptables in step with Services and Endpoints.

Run one per node, in the node's network namespace. `--cleanup` removes every
chain and jump the proxy made, and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from prometheus_client import start_http_server

from machinery import connection
from machinery import log as logsetup
from machinery.clock import RealClock
from machinery.informer import Handlers, InformerFactory
from machinery.log import get_logger
from proxy.cleanup import cleanup
from proxy.config import ProxyConfig
from proxy.conntrack import ConntrackCommand
from proxy.iptables import IptablesCommand
from proxy.metrics import ProxyMetrics
from proxy.state import ProxyState
from proxy.sync import SyncRunner

log = get_logger("proxy")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubelite-proxy", description=__doc__.split("\n\n")[0])
    connection.add_flags(p, default_server="")
    p.add_argument("--node-name", default="", help="this node's name (for logs)")
    p.add_argument("--node-ip", default="", help="this node's address (for logs)")
    p.add_argument(
        "--cluster-cidr", default="10.244.0.0/16", help="the Pod network (default: %(default)s)"
    )
    p.add_argument("--min-sync-interval", type=float, default=0.1, help="seconds between syncs")
    p.add_argument(
        "--resync-interval", type=float, default=30.0, help="seconds between full re-applies"
    )
    p.add_argument(
        "--cleanup", action="store_true", help="remove every rule the proxy made, then exit"
    )
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port"
    )
    p.add_argument("--metrics-address", default="0.0.0.0")
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    if args.cleanup:
        result = await cleanup(IptablesCommand())
        log.info("removed the proxy's rules", result=result)
        return 0
    clock = RealClock()
    try:
        client = connection.connect(args)
    except connection.ConnectionConfigError as err:
        log.error("cannot connect", err=err)
        return 2
    connection.follow_in_background(client, args)  # a replaced certificate is picked up
    state = ProxyState(clock=clock)
    factory = InformerFactory(client, clock=clock)
    services = factory.informer("services")
    services.add_handlers(
        Handlers(
            state.upsert_service, lambda _old, new: state.upsert_service(new), state.delete_service
        )
    )
    endpoints = factory.informer("endpoints")
    endpoints.add_handlers(
        Handlers(
            lambda obj: state.upsert_endpoints(obj, observed_at=clock.now()),
            lambda _old, new: state.upsert_endpoints(new, observed_at=clock.now()),
            lambda obj: state.delete_endpoints(obj, observed_at=clock.now()),
        )
    )
    runner = SyncRunner(
        state,
        IptablesCommand(),
        config=ProxyConfig(
            cluster_cidr=args.cluster_cidr or None,
            min_sync_interval=args.min_sync_interval,
            resync_interval=args.resync_interval,
        ),
        clock=clock,
        metrics=ProxyMetrics(),
        conntrack=ConntrackCommand(),
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    factory.start()
    log.info("proxy starting", node=args.node_name, node_ip=args.node_ip, server=client.server)

    async def follow() -> None:
        await services.synced.wait()
        state.mark_listed("Service")
        await endpoints.synced.wait()
        state.mark_listed("Endpoints")
        await runner.run()

    work = asyncio.create_task(follow())
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({work, stopping}, return_when=asyncio.FIRST_COMPLETED)
    for task in (work, stopping):
        task.cancel()
    await asyncio.gather(work, return_exceptions=True)
    await factory.stop()
    await client.close()
    # The rules stay on purpose: traffic keeps flowing while the proxy restarts.
    log.info("proxy stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    if args.metrics_port and not args.cleanup:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
