"""kubelite-apiserver: serve the object API from etcd.

Every real server authenticates: the server refuses to start without its
serving certificate, key and the CA whose client certificates it trusts
(--tls-cert-file, --tls-private-key-file, --client-ca-file). Clients with a
certificate talk mutual TLS on --listen; bearer-token clients (bootstrap and
ServiceAccount tokens) use --token-listen, which serves TLS without asking for
a client certificate. Towards kubelets (logs, exec) the server presents
--kubelet-client-certificate. With --etcd-cafile/--etcd-certfile/--etcd-keyfile
it speaks TLS to etcd as well, for etcd members that listen beyond loopback.

A missing or unreadable file, a certificate that is not one, or a key that
does not belong to its certificate stops the start with a message naming the
flag and the path.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import signal
import stat
import sys
from collections.abc import Callable

from cryptography.hazmat.primitives import serialization
from prometheus_client import start_http_server

from apiserver import encryption
from apiserver.server import ApiServer, ServerConfig, ServingTLS
from apiserver.serviceip import DEFAULT_NODE_PORT_RANGE, DEFAULT_SERVICE_CIDR, IPRange, PortRange
from apiserver.store import EtcdStore, EtcdTLS
from machinery import log as logging_setup
from machinery import pki
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
    _add_tls_flags(parser)
    parser.add_argument(
        "--log-level", default=None, help="DEBUG, INFO, WARNING or ERROR (default: INFO)"
    )
    return parser.parse_args(argv)


def _add_tls_flags(parser: argparse.ArgumentParser) -> None:
    tls = parser.add_argument_group("authentication and TLS (the first three are required)")
    for flag, text in (
        (
            "--tls-cert-file",
            "PEM serving certificate (its SANs: every name and address clients dial)",
        ),
        ("--tls-private-key-file", "PEM key of --tls-cert-file"),
        ("--client-ca-file", "PEM CA whose client certificates authenticate on --listen"),
        ("--token-auth-file", 'CSV of static bearer tokens: token,user,uid,"group1,group2"'),
        ("--kubelet-client-certificate", "PEM client certificate shown to kubelets (logs, exec)"),
        ("--kubelet-client-key", "PEM key of --kubelet-client-certificate"),
        (
            "--kubelet-certificate-authority",
            "PEM CA of the kubelets' serving certificates (default: --client-ca-file)",
        ),
        ("--etcd-cafile", "PEM CA of etcd's serving certificates: talk TLS to etcd"),
        ("--etcd-certfile", "PEM client certificate shown to etcd"),
        ("--etcd-keyfile", "PEM key of --etcd-certfile"),
    ):
        tls.add_argument(flag, default="", metavar="PATH", help=text)
    tls.add_argument(
        "--token-listen",
        default="",
        help="address(es) serving TLS without a client certificate, for bearer-token clients "
        "(bootstrap and ServiceAccount tokens), comma-separated (default: none)",
    )


class FlagError(Exception):
    """A flag's file that cannot be used; the message names the flag and the path."""


def _read(args: argparse.Namespace, flag: str) -> bytes:
    path = getattr(args, flag.lstrip("-").replace("-", "_"))
    try:
        return pathlib.Path(path).read_bytes()
    except OSError as err:
        raise FlagError(f"{flag} {path}: cannot read it: {err.strerror}") from None


def _read_cert(args: argparse.Namespace, flag: str) -> bytes:
    pem = _read(args, flag)
    try:
        pki.load_cert(pem)
    except pki.PKIError as err:
        raise FlagError(f"{flag} {getattr(args, _dest(flag))}: {err}") from None
    return pem


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _read_pair(args: argparse.Namespace, cert_flag: str, key_flag: str) -> pki.KeyPair:
    cert, key = _read_cert(args, cert_flag), _read(args, key_flag)
    problem = _key_mismatch(cert, key)
    if problem:
        raise FlagError(
            f"{key_flag} {getattr(args, _dest(key_flag))} does not fit {cert_flag} "
            f"{getattr(args, _dest(cert_flag))}: {problem}"
        )
    return pki.KeyPair(cert, key)


def _key_mismatch(cert_pem: bytes, key_pem: bytes) -> str:
    """Why key_pem is not the key of cert_pem ("" when it is)."""
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as err:
        return f"not an unencrypted PEM private key ({err})"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.PEM, public)
    theirs = pki.load_cert(cert_pem).public_key().public_bytes(serialization.Encoding.PEM, public)
    return "" if ours == theirs else "the key is another certificate's"


def _both_or_neither(args: argparse.Namespace, first: str, second: str) -> bool:
    a, b = getattr(args, _dest(first)), getattr(args, _dest(second))
    if bool(a) != bool(b):
        raise FlagError(f"{first} and {second} go together: give both or neither")
    return bool(a)


def serving_tls(args: argparse.Namespace) -> ServingTLS:
    """The server's TLS material from its flags; FlagError says what is missing or wrong."""
    missing = [
        f
        for f in ("--tls-cert-file", "--tls-private-key-file", "--client-ca-file")
        if not getattr(args, _dest(f))
    ]
    if missing:
        raise FlagError(
            f"missing {', '.join(missing)}: the API server serves TLS only and authenticates "
            "every client (deploy/up.sh and deploy/roles/server.sh create the certificates)"
        )
    serving = _read_pair(args, "--tls-cert-file", "--tls-private-key-file")
    client_ca = _read_cert(args, "--client-ca-file")
    kubelet_client = None
    if _both_or_neither(args, "--kubelet-client-certificate", "--kubelet-client-key"):
        kubelet_client = _read_pair(args, "--kubelet-client-certificate", "--kubelet-client-key")
    kubelet_ca = b""
    if args.kubelet_certificate_authority:
        kubelet_ca = _read_cert(args, "--kubelet-certificate-authority")
    if args.token_auth_file and not pathlib.Path(args.token_auth_file).is_file():
        raise FlagError(f"--token-auth-file {args.token_auth_file}: no such file")
    return ServingTLS(serving, client_ca, kubelet_client=kubelet_client, kubelet_ca=kubelet_ca)


def etcd_tls(args: argparse.Namespace) -> EtcdTLS | None:
    """TLS towards etcd when --etcd-cafile is given; FlagError when the files are unusable."""
    if not args.etcd_cafile:
        if args.etcd_certfile or args.etcd_keyfile:
            raise FlagError("--etcd-certfile and --etcd-keyfile need --etcd-cafile")
        return None
    ca = _read_cert(args, "--etcd-cafile")
    if not _both_or_neither(args, "--etcd-certfile", "--etcd-keyfile"):
        return EtcdTLS(ca=ca)
    pair = _read_pair(args, "--etcd-certfile", "--etcd-keyfile")
    return EtcdTLS(ca=ca, cert=pair.cert, key=pair.key)


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


async def run(
    args: argparse.Namespace,
    keys: tuple[encryption.EncryptionKey, ...] = (),
    *,
    tls: ServingTLS,
    etcd: EtcdTLS | None = None,
) -> None:
    endpoints = [e.strip() for e in args.etcd_servers.split(",") if e.strip()]
    config = ServerConfig(
        etcd_endpoints=endpoints,
        listen=args.listen,
        prefix=args.etcd_prefix,
        watch_cache_capacity=args.watch_cache_size,
        bookmark_interval=args.bookmark_interval,
        compaction_interval=args.compaction_interval,
        event_ttl=args.event_ttl,
        service_cidr=args.service_cluster_ip_range,
        node_port_range=args.service_node_port_range,
        encryption_keys=keys,
        tls=tls,
        token_listen=args.token_listen,
        token_auth_file=args.token_auth_file,
    )
    server = ApiServer(config, store=EtcdStore(endpoints, tls=etcd))
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
    try:
        tls, etcd = serving_tls(args), etcd_tls(args)
    except FlagError as err:
        log.error("cannot start the API server", err=err)
        print(f"kubelite-apiserver: {err}", file=sys.stderr)
        return 2
    if args.metrics_port:
        start_http_server(args.metrics_port, addr=args.metrics_address)
    try:
        asyncio.run(run(args, keys, tls=tls, etcd=etcd))
    except RuntimeError as err:
        log.error("API server failed", err=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
