"""How a component finds and proves itself to the API server: its command-line flags.

Every component takes `--kubeconfig FILE` (the client config format of
machinery.config: servers, CA, the component's certificate or token) and may
override the addresses with `--server`. Without a kubeconfig the connection
is plaintext, which only a server started without TLS accepts.
"""

from __future__ import annotations

import argparse
import asyncio
import pathlib

from machinery import config
from machinery.client import ApiClient
from machinery.clock import Clock, RealClock
from machinery.credentials import Credentials
from machinery.log import get_logger

log = get_logger("connection")

# The background tasks follow_in_background started; asyncio keeps only weak references.
_followers: set[asyncio.Task[None]] = set()


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


async def follow_credentials(
    client: ApiClient,
    args: argparse.Namespace,
    *,
    interval: float = 60.0,
    clock: Clock | None = None,
) -> None:
    """Re-read --kubeconfig every interval and hand changed credentials to the client.

    A certificate is replaced under a running component when the node's kubelet
    rotates the one it shares (the proxy of an agent), or when a bring-up re-issues
    one near its expiry; the component picks it up without a restart. A config
    that fails to read keeps the credentials in use, with a warning.
    """
    if not args.kubeconfig:
        return
    clock = clock or RealClock()
    path = pathlib.Path(args.kubeconfig)
    while True:
        await clock.sleep(interval)
        try:
            current = config.load_context(path).credentials
        except config.ConfigError as err:
            log.warning("cannot re-read the client config; keeping the credentials", err=err)
            continue
        if current is not None and current != client.credentials:
            log.info("credentials changed; reconnecting with the new ones", kubeconfig=str(path))
            await client.set_credentials(current)


def follow_in_background(client: ApiClient, args: argparse.Namespace) -> None:
    """Run follow_credentials for the life of the process (or until the loop ends)."""
    task = asyncio.create_task(follow_credentials(client, args), name="follow-credentials")
    _followers.add(task)
    task.add_done_callback(_followers.discard)
