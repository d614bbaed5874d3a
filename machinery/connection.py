"""How a component finds and proves itself to the API server: its command-line flags.

Every component takes `--kubeconfig FILE` (the client config format of
machinery.config: servers, CA, the component's certificate or token) and may
override the addresses with `--server`. Without a kubeconfig the connection
is plaintext, which only a server started without TLS accepts.
"""

from __future__ import annotations

import argparse
import pathlib

from machinery import config
from machinery.client import ApiClient
from machinery.credentials import Credentials


class ConnectionConfigError(Exception):
    pass


def add_flags(parser: argparse.ArgumentParser, *, default_server: str = "") -> None:
    parser.add_argument(
        "--server",
        default=default_server,
        help="API server addresses HOST:PORT, comma-separated for several "
        "(default: the kubeconfig's)",
    )
    parser.add_argument(
        "--kubeconfig",
        default="",
        help="client config with the servers, the cluster CA and this component's credential",
    )


def resolve(args: argparse.Namespace) -> tuple[list[str], Credentials | None]:
    """The servers and credentials the flags name; ConnectionConfigError says what is wrong."""
    servers = [s.strip() for s in (args.server or "").split(",") if s.strip()]
    credentials = None
    if args.kubeconfig:
        try:
            ctx = config.load_context(pathlib.Path(args.kubeconfig))
        except config.ConfigError as err:
            raise ConnectionConfigError(f"--kubeconfig: {err}") from None
        servers = servers or ctx.servers
        credentials = ctx.credentials
    if not servers:
        raise ConnectionConfigError("no API server: give --server HOST:PORT or --kubeconfig FILE")
    return servers, credentials


def connect(args: argparse.Namespace, *, timeout: float = 30.0) -> ApiClient:
    servers, credentials = resolve(args)
    return ApiClient(servers, timeout=timeout, credentials=credentials)
