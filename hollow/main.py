"""python -m hollow: run N hollow nodes against an API server until stopped.

    python -m hollow --nodes 5000 --server 127.0.0.1:6443

Nodes are named <prefix><i> (hollow-0, hollow-1, ...). SIGTERM or SIGINT
stops the tool; with --delete-on-exit it deletes its Nodes and Leases first,
otherwise they stay and go NotReady like nodes whose kubelet stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib
import signal
import sys

from hollow.nodes import HollowConfig, HollowNodes
from machinery import config as client_config
from machinery import log as logsetup
from machinery.client import ApiClient
from machinery.credentials import Credentials
from machinery.log import get_logger

log = get_logger("hollow")


def _labels(text: str) -> dict[str, str]:
    labels = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key:
            raise argparse.ArgumentTypeError(f"invalid label {part!r}: must be key=value")
        labels[key] = value
    return labels


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="hollow",
        description="Simulate nodes for scale tests: register Nodes, renew their Leases and "
        "mark Pods bound to them Running, without running containers.",
    )
    p.add_argument("--nodes", type=int, required=True, help="how many nodes to simulate")
    p.add_argument(
        "--server",
        default="",
        help="API server HOST:PORT, comma-separated for several (default: the client config)",
    )
    p.add_argument("--kubeconfig", default="", help="client config file when --server is not set")
    p.add_argument("--prefix", default="hollow-", help="node name prefix (default: %(default)s)")
    p.add_argument(
        "--first-index", type=int, default=0, help="index of the first node (default: 0)"
    )
    p.add_argument("--cpu", default="4", help="cpu capacity per node (default: %(default)s)")
    p.add_argument("--memory", default="16Gi", help="memory per node (default: %(default)s)")
    p.add_argument("--max-pods", type=int, default=110, help="pods per node (default: 110)")
    p.add_argument("--labels", type=_labels, default={}, help="extra node labels, k=v,k2=v2")
    p.add_argument(
        "--lease-interval",
        type=float,
        default=10.0,
        help="seconds between Lease renewals of each node (default: %(default)s)",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        default=64,
        help="API calls in flight at most (default: %(default)s)",
    )
    p.add_argument(
        "--fallback-pod-cidr",
        default="10.128.0.0/9",
        help="Pod IPs for nodes without spec.podCIDR: /24 number <index> of it",
    )
    p.add_argument(
        "--node-ip-cidr", default="10.64.0.0/12", help="InternalIP of node i: address i+1 of it"
    )
    p.add_argument(
        "--delete-on-exit", action="store_true", help="delete the Nodes and Leases when stopped"
    )
    p.add_argument("--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> HollowConfig:
    return HollowConfig(
        nodes=args.nodes,
        prefix=args.prefix,
        first_index=args.first_index,
        cpu=args.cpu,
        memory=args.memory,
        max_pods=args.max_pods,
        labels=args.labels,
        lease_interval=args.lease_interval,
        concurrency=args.concurrency,
        fallback_pod_cidr=args.fallback_pod_cidr,
        node_ip_cidr=args.node_ip_cidr,
    )


def servers_from(args: argparse.Namespace) -> tuple[list[str], Credentials | None]:
    """The flags' servers and credentials; the client config's current context by default."""
    path = pathlib.Path(args.kubeconfig) if args.kubeconfig else None
    if args.server and not args.kubeconfig:
        return [s.strip() for s in args.server.split(",") if s.strip()], None
    ctx = client_config.load_context(path)
    servers = [s.strip() for s in args.server.split(",") if s.strip()] or ctx.servers
    return servers, ctx.credentials


async def run(
    args: argparse.Namespace,
    settings: HollowConfig,
    servers: list[str],
    credentials: Credentials | None = None,
) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with ApiClient(servers, credentials=credentials) as client:
        nodes = HollowNodes(client, settings)
        await nodes.start()
        log.info("hollow nodes running", nodes=settings.nodes, server=",".join(servers))
        reporter = asyncio.create_task(_report(nodes))
        await stop.wait()
        reporter.cancel()
        log.info("stopping", delete=args.delete_on_exit)
        await nodes.stop(delete=args.delete_on_exit)
    return 0


async def _report(nodes: HollowNodes, every: float = 60.0) -> None:
    """A status line a minute; a warning when renewals land later than an interval."""
    while True:
        await asyncio.sleep(every)
        s = nodes.stats
        lag, s.max_renew_lag = s.max_renew_lag, 0.0
        fields = {
            "leases_renewed": s.leases_renewed,
            "lease_failures": s.lease_failures,
            "max_renew_lag_ms": round(lag * 1000),
            "pods_started": s.pods_started,
            "pods_finished": s.pods_finished,
            "queued": len(nodes.pipeline),
        }
        if lag > nodes.config.lease_interval:
            log.warning("lease renewals are late: the API server is not keeping up", **fields)
        else:
            log.info("hollow nodes status", **fields)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    try:
        settings = config_from(args)
        servers, credentials = servers_from(args)
    except (ValueError, client_config.ConfigError) as err:
        print(f"hollow: error: {err}", file=sys.stderr)
        return 2
    return asyncio.run(run(args, settings, servers, credentials))


if __name__ == "__main__":
    sys.exit(main())
