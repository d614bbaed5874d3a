"""kubelite-scheduler: place Pods on nodes, one decision at a time."""

from __future__ import annotations

import argparse
import asyncio
import sys

from prometheus_client import start_http_server

from machinery import connection, leaderelection
from machinery import log as logsetup
from machinery.log import get_logger
from scheduler.server import Scheduler

log = get_logger("scheduler")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubelite-scheduler", description=__doc__)
    connection.add_flags(p, default_server="")
    p.add_argument(
        "--scheduler-name", default="default-scheduler", help="schedule Pods naming this"
    )
    p.add_argument(
        "--percentage-of-nodes-to-score",
        type=int,
        default=0,
        help="stop searching once this share of nodes is feasible; 0: adaptive (default)",
    )
    p.add_argument("--bind-concurrency", type=int, default=64, help="bindings in flight at once")
    leaderelection.add_flags(p, default_lease="kube-scheduler")
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
    scheduler = Scheduler(
        client,
        scheduler_name=args.scheduler_name,
        percentage_of_nodes_to_score=args.percentage_of_nodes_to_score,
        bind_concurrency=args.bind_concurrency,
    )
    return await leaderelection.run_component(client, args, scheduler.run)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
