"""Publish what a multi-machine cluster needs once its API answers: kube-dns, the join token,
default images.

    python -m deploy.roles.bootstrap --kubeconfig ADMIN.conf --dns-servers A,B,C
                                     [--join-token-file F] [--registry R]

The kubelite-bootstrap one-shot unit runs this on every server, as the admin.
It waits until one of the API servers answers, then makes sure the kube-dns
Service exists at the cluster's fixed DNS address with Endpoints listing
every server's DNS listener; that the join token in --join-token-file (the
one the install printed) is a valid bootstrap token, by creating its Secret;
and with --registry that the registry holds the default images. Servers run
it concurrently and in any order: creating what another already created is
not an error, and Endpoints are only rewritten when they list other
addresses. Running it again changes nothing.

A join token is published once: after its Secret was created, the file
<join-token-file>.published records it, and a later run (a reboot) that finds
the Secret gone leaves it gone, since deleting the Secret is how a token is
revoked. New tokens come from `kctl token create`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import pathlib
import sys
import time
from typing import Any

from deploy import pki
from deploy.layout import DNS_SERVICE_IP
from deploy.roles.commands import DNS_PORT
from machinery import connection, errors
from machinery import log as logsetup
from machinery.client import ApiClient
from machinery.log import get_logger
from machinery.registry import RegistryError

log = get_logger("bootstrap")

NAMESPACE = "kube-system"
DNS_PORTS = [
    {"name": "dns", "port": DNS_PORT, "protocol": "UDP"},
    {"name": "dns-tcp", "port": DNS_PORT, "protocol": "TCP"},
]


def dns_service() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": NAMESPACE, "labels": {"k8s-app": "kube-dns"}},
        # No selector: the DNS servers are the servers' own processes, not Pods, so the
        # endpoints controller leaves the Endpoints below alone.
        "spec": {"clusterIP": DNS_SERVICE_IP, "ports": DNS_PORTS},
    }


def dns_subsets(addresses: list[str]) -> list[dict[str, Any]]:
    return [{"addresses": [{"ip": ip} for ip in sorted(addresses)], "ports": DNS_PORTS}]


def listed(endpoints: dict[str, Any]) -> list[str]:
    return sorted(a["ip"] for s in endpoints.get("subsets") or [] for a in s.get("addresses") or [])


async def wait_api(api: ApiClient, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            await api.get("namespaces", NAMESPACE)
            return
        except errors.ApiError as err:
            # The client moves to the next server after an unreachable one.
            if time.monotonic() > deadline:
                raise errors.Unavailable(
                    f"no API server of {', '.join(api.servers)} answered in {timeout:.0f}s: {err}"
                ) from err
        await asyncio.sleep(0.5)


async def ensure_dns(api: ApiClient, addresses: list[str]) -> str:
    """kube-dns and its Endpoints as wanted: 'created', 'updated' or 'unchanged'."""
    outcome = await _ensure_service(api)
    while True:
        try:
            current = await api.get("endpoints", "kube-dns", namespace=NAMESPACE)
        except errors.NotFound:
            endpoints = {
                "apiVersion": "v1",
                "kind": "Endpoints",
                "metadata": {"name": "kube-dns", "namespace": NAMESPACE},
                "subsets": dns_subsets(addresses),
            }
            try:
                await api.create("endpoints", endpoints, namespace=NAMESPACE)
                return "created"
            except errors.AlreadyExists:
                continue
        if listed(current) == sorted(addresses):
            return outcome
        current["subsets"] = dns_subsets(addresses)
        try:
            await api.update("endpoints", current)
            return "updated"
        except errors.Conflict:
            continue


async def _ensure_service(api: ApiClient) -> str:
    try:
        await api.get("services", "kube-dns", namespace=NAMESPACE)
        return "unchanged"
    except errors.NotFound:
        pass
    try:
        await api.create("services", dns_service(), namespace=NAMESPACE)
        return "created"
    except (errors.AlreadyExists, errors.Invalid) as err:
        # Another server may have created it first (its address is then taken too); if
        # not, the address belongs to another Service and the error says so.
        try:
            await api.get("services", "kube-dns", namespace=NAMESPACE)
        except errors.NotFound:
            raise err from None
        return "unchanged"


async def publish_join_token(api: ApiClient, path: pathlib.Path, *, ttl: float) -> str:
    """Make the token in path valid (its Secret): 'created', 'present' or 'revoked'."""
    token = pki.parse_join_token(path.read_text())
    if token is None:
        raise errors.Invalid(f"{path} does not hold a join token (<6>.<16> of [a-z0-9])")
    published = path.with_name(path.name + ".published")
    try:
        await api.get("secrets", token.secret_name, namespace=pki.TOKEN_NAMESPACE)
        outcome = "present"
    except errors.NotFound:
        if published.exists():
            return "revoked"
        expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=ttl)
        secret = pki.bootstrap_token_secret(
            pki.JoinToken(token.id, token.secret, expires.replace(microsecond=0)),
            description="printed by deploy/roles/install.py server",
        )
        try:
            await api.create("secrets", secret, namespace=pki.TOKEN_NAMESPACE)
            outcome = "created"
        except errors.AlreadyExists:  # another server published it first
            outcome = "present"
    published.touch()
    return outcome


def seed_images(
    registry: str,
    timeout: float,
    *,
    auth_file: pathlib.Path | None = None,
    ca_file: pathlib.Path | None = None,
) -> list[str]:
    """Push the default images unless the registry holds them; the repositories it holds.

    With auth_file and ca_file the registry is spoken to over HTTPS as its user;
    without, over plain HTTP."""
    from deploy.images.build import build_default_images, inspect_busybox, push_default_images
    from machinery.registry import RegistryHosts, list_images, read_auth_file

    if ca_file is not None:
        hosts = RegistryHosts(
            credentials=read_auth_file(str(auth_file)) if auth_file else {},
            ca_files={registry: str(ca_file)},
        )
    else:
        hosts = RegistryHosts(insecure=frozenset({registry}))
    deadline = time.monotonic() + timeout
    while True:
        try:
            present = {r.repository for r in list_images(hosts.client(registry))}
            break
        except Exception as err:  # noqa: BLE001 - the registry may still be starting
            if time.monotonic() > deadline:
                raise RuntimeError(f"the registry at {registry} did not answer: {err}") from err
            time.sleep(0.5)
    wanted = {"library/busybox", "library/httpd"}
    if not wanted <= present:
        busybox = inspect_busybox()
        images = build_default_images(busybox, epoch=0)
        push_default_images(hosts, registry, images, tags=("latest", busybox.version))
        present |= wanted
    return sorted(present)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m deploy.roles.bootstrap", description=__doc__.split("\n\n")[0]
    )
    connection.add_flags(p)
    p.add_argument(
        "--dns-servers", required=True, help="addresses of the servers' DNS listeners, comma-sep."
    )
    p.add_argument("--registry", default="", help="registry to seed with the default images")
    p.add_argument(
        "--join-token-file", type=pathlib.Path, default=None, help="join token to publish"
    )
    p.add_argument(
        "--token-ttl",
        type=float,
        default=24 * 3600.0,
        help="seconds the join token stays valid once published (default: %(default)s)",
    )
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the API")
    p.add_argument(
        "--registry-auth-file", type=pathlib.Path, default=None, help="the registry's user"
    )
    p.add_argument(
        "--registry-ca-file", type=pathlib.Path, default=None, help="CA of the registry's HTTPS"
    )
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    servers, credentials = connection.resolve(args)
    addresses = [s.strip() for s in args.dns_servers.split(",") if s.strip()]
    async with ApiClient(servers, timeout=5, credentials=credentials) as api:
        await wait_api(api, args.timeout)
        outcome = await ensure_dns(api, addresses)
        log.info("kube-dns published", outcome=outcome, endpoints=",".join(sorted(addresses)))
        if args.join_token_file is not None:
            outcome = await publish_join_token(api, args.join_token_file, ttl=args.token_ttl)
            if outcome == "revoked":
                log.warning(
                    "join token was revoked, not publishing it again (make one with kctl "
                    "token create)",
                    path=str(args.join_token_file),
                )
            else:
                log.info("join token published", outcome=outcome)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    try:
        asyncio.run(run(args))
        if args.registry:
            held = seed_images(
                args.registry,
                args.timeout,
                auth_file=args.registry_auth_file,
                ca_file=args.registry_ca_file,
            )
            log.info("registry seeded", registry=args.registry, images=",".join(held))
    except (
        errors.ApiError,
        RuntimeError,
        OSError,
        connection.ConnectionConfigError,
        RegistryError,
    ) as err:
        log.error("failed to bootstrap the cluster", err=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
