"""Publish what a multi-machine cluster needs once its API answers: kube-dns, default images.

    python -m deploy.roles.bootstrap --server A:6443,B:6443 --dns-servers A,B,C [--registry R]

The kubelite-bootstrap one-shot unit runs this on every server. It waits
until one of the API servers answers, then makes sure the kube-dns Service
exists at the cluster's fixed DNS address with Endpoints listing every
server's DNS listener, and with --registry that the registry holds the
default images. Servers run it concurrently and in any order: creating what
another already created is not an error, and Endpoints are only rewritten
when they list other addresses. Running it again changes nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from typing import Any

from deploy.layout import DNS_SERVICE_IP
from deploy.roles.commands import DNS_PORT
from machinery import errors
from machinery import log as logsetup
from machinery.client import ApiClient
from machinery.log import get_logger

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


def seed_images(registry: str, timeout: float) -> list[str]:
    """Push the default images unless the registry holds them; the repositories it holds."""
    from deploy.images.build import build_default_images, inspect_busybox, push_default_images
    from machinery.registry import RegistryHosts, list_images

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
    p.add_argument("--server", required=True, help="API server addresses, comma-separated")
    p.add_argument(
        "--dns-servers", required=True, help="addresses of the servers' DNS listeners, comma-sep."
    )
    p.add_argument("--registry", default="", help="registry to seed with the default images")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the API")
    p.add_argument("--log-level", default=None)
    return p.parse_args(argv)


async def run(args: argparse.Namespace) -> None:
    servers = [s.strip() for s in args.server.split(",") if s.strip()]
    addresses = [s.strip() for s in args.dns_servers.split(",") if s.strip()]
    async with ApiClient(servers, timeout=5) as api:
        await wait_api(api, args.timeout)
        outcome = await ensure_dns(api, addresses)
    log.info("kube-dns published", outcome=outcome, endpoints=",".join(sorted(addresses)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logsetup.setup(args.log_level)
    try:
        asyncio.run(run(args))
        if args.registry:
            held = seed_images(args.registry, args.timeout)
            log.info("registry seeded", registry=args.registry, images=",".join(held))
    except (errors.ApiError, RuntimeError, OSError) as err:
        log.error("failed to bootstrap the cluster", err=err)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
