"""kubelite-apiserver: serve the object API from etcd."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import stat
import sys
from collections.abc import Callable

from prometheus_client import start_http_server

from apiserver import encryption
from apiserver.server import ApiServer, ServerConfig
from apiserver.serviceip import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, IPRange, PortRange
from machinery import log as logging_setup
from machinery.log import get_logger

log = get_logger("apiserver")


def _checked(parse: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that refuses what parse refuses, with parse's message."""

    def check(text: str) -> str:
        try:
            parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
        return text

    return check


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="kubelite-apiserver",
        description="Serve kubelite's object API (gRPC) with every object kept in etcd.",
    )
    parser.add_argument(
        "--etcd-servers",
        default="127.0.0.1:2379",
        help="comma-separated etcd client endpoints (host:port) (default: %(default)s)",
    )
    parser.add_argument(
        "--listen",
        default="127.0.0.1:6443",
        help="gRPC address(es), comma-separated (default: %(default)s)",
    )
    parser.add_argument(
        "--etcd-prefix",
        default="/registry",
        help="key prefix in etcd, so several clusters can share one etcd (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=0, help="serve Prometheus metrics on this port (0: off)"
    )
    parser.add_argument(
        "--metrics-address",
        default="127.0.0.1",
        help="address for the metrics endpoint (default: %(default)s)",
    )
    parser.add_argument(
        "--compaction-interval",
        type=float,
        default=300.0,
        help="seconds between etcd compactions, 0 to disable (default: %(default)s)",
    )
    parser.add_argument(
        "--watch-cache-size",
        type=int,
        default=10_000,
        help="events kept per resource (default: %(default)s)",
    )
    parser.add_argument(
        "--bookmark-interval",
        type=float,
        default=30.0,
        help="seconds between watch bookmarks (default: %(default)s)",
    )
    parser.add_argument(
        "--event-ttl",
        type=float,
        default=3600.0,
        help="seconds Events are kept (default: %(default)s)",
    )
    parser.add_argument(
        "--service-cluster-ip-range",
        default=DEFAULT_SERVICE_CIDR,
        type=_checked(IPRange),
        help="CIDR Services' clusterIPs come from (default: %(default)s)",
    )
    parser.add_argument(
        "--service-node-port-range",
        default=DEFAULT_NODE_PORT_RANGE,
        type=_checked(PortRange),
        help="LOW-HIGH range of Services' nodePorts (default: %(default)s)",
    )
    parser.add_argument(
        "--encryption-key-file",
        default="",
        metavar="PATH",
        help="encrypt Secrets in etcd with the keys in PATH: base64 of 32 random bytes, or "
        "YAML `keys: [{name, secret}]` whose first key encrypts and all decrypt (make one "
        "with: python -m apiserver.encryption new-key PATH); without it Secrets are stored "
        "in plaintext",
    )
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    return parser.parse_args(argv)


def load_encryption_keys(path: str) -> tuple[encryption.EncryptionKey, ...]:
    """The keys of --encryption-key-file (none without it); KeyFileError when unusable."""
    if not path:
        return ()
    keys = tuple(encryption.load_key_file(path))
    mode = stat.S_IMODE(os.stat(path).st_mode)
    if mode & 0o077:
        log.warning(
            "encryption key file is readable by others than its owner", path=path, mode=oct(mode)
        )
    return keys


async def run(args: argparse.Namespace, keys: tuple[encryption.EncryptionKey, ...] = ()) -> None:
    config = ServerConfig(
        etcd_endpoints=[e.strip() for e in args.etcd_servers.split(",") if e.strip()],
        listen=args.listen,
        prefix=args.etcd_prefix,
        watch_cache_capacity=args.watch_cache_size,
        bookmark_interval=args.bookmark_interval,
        compaction_interval=args.compaction_interval,
        event_ttl=args.event_ttl,
        service_cidr=args.service_cluster_ip_range,
        node_port_range=args.service_node_port_range,
        encryption_keys=keys,
    )
    server = ApiServer(config)
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping on signal")
    await server.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging_setup.setup(args.log_level)
    try:
        keys = load_encryption_keys(args.encryption_key_file)
    except encryption.KeyFileError as err:
        log.error("cannot use the encryption key file", err=err)
        return 1
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    try:
        asyncio.run(run(args, keys))
    except RuntimeError as err:
        log.error("API server failed", err=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
