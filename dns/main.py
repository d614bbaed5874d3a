"""kubelite-dns: answer <service>.<namespace>.svc.<domain> names; forward the rest."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

from prometheus_client import start_http_server

from dns.config import DnsConfig
from dns.metrics import DnsMetrics
from dns.records import ClusterRecords
from dns.resolvconf import upstreams_from_resolv_conf
from dns.server import DnsServer
from machinery import connection
from machinery import log as logsetup
from machinery.informer import Handlers, InformerFactory
from machinery.log import get_logger

log = get_logger("dns")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="kubelite-dns", description=__doc__)
    connection.add_flags(p, default_server="")
    p.add_argument(
        "--listen",
        default="127.0.0.1:53",
        help="address:port for UDP and TCP (default: %(default)s)",
    )
    p.add_argument("--cluster-domain", default="cluster.local")
    p.add_argument(
        "--ttl", type=int, default=5, help="seconds on cluster answers (default: %(default)s)"
    )
    p.add_argument(
        "--resolv-conf", default="/etc/resolv.conf", help="where the upstream servers come from"
    )
    p.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port"
    )
    p.add_argument("--metrics-address", default="127.0.0.1")
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    host, _, port = args.listen.rpartition(":")
    if not host or not port.isdigit():
        log.error("invalid --listen, expected address:port", listen=args.listen)
        return 2
    try:
        upstreams = upstreams_from_resolv_conf(args.resolv_conf)
    except (OSError, ValueError) as err:
        log.warning("no upstream servers: names outside the cluster get SERVFAIL", err=err)
        upstreams = ()
    listen = (host, int(port))
    upstreams = tuple(u for u in upstreams if tuple(u) != listen)
    config = DnsConfig(
        listen_host=host,
        listen_port=int(port),
        cluster_domain=args.cluster_domain,
        ttl=args.ttl,
        upstreams=upstreams,
    )
    records = ClusterRecords()
    try:
        client = connection.connect(args)
    except connection.ConnectionConfigError as err:
        log.error("cannot connect", err=err)
        return 2
    connection.follow_in_background(client, args)  # a replaced certificate is picked up
    factory = InformerFactory(client)
    factory.informer("services").add_handlers(
        Handlers(
            records.upsert_service, lambda _o, n: records.upsert_service(n), records.delete_service
        )
    )
    factory.informer("endpoints").add_handlers(
        Handlers(
            records.upsert_endpoints,
            lambda _o, n: records.upsert_endpoints(n),
            records.delete_endpoints,
        )
    )
    server = DnsServer(records, config=config, metrics=DnsMetrics())
    await server.start()
    factory.start()
    log.info(
        "DNS serving", listen=args.listen, domain=args.cluster_domain, upstreams=len(upstreams)
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop()
    await factory.stop()
    await client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    return asyncio.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
