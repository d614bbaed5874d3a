"""An API server that serves bearer tokens (TLS token listener, a static token file) and
helpers to ask it who a token is."""

from __future__ import annotations

import asyncio
import base64
import pathlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from machinery import errors, kinds
from machinery.client import ApiClient
from tests.tls import ClusterPKI

STATIC_TOKEN = "static-token-of-ci-robot-0123456789"
STATIC_TOKEN_FILE = f'{STATIC_TOKEN},ci-robot,1001,"ci,builders"\n'


@pytest.fixture
async def token_server(etcd, etcd_prefix: str, cluster_pki: ClusterPKI, tmp_path: pathlib.Path):
    from apiserver.server import ApiServer, ServerConfig

    token_file = tmp_path / "tokens.csv"
    token_file.write_text(STATIC_TOKEN_FILE)
    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            compaction_interval=0,
            token_auth_file=str(token_file),
            **cluster_pki.server_settings(),
        )
    )
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 30)
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def admin(token_server, cluster_pki: ClusterPKI):
    api = ApiClient(
        [f"127.0.0.1:{token_server.port}"], timeout=10, credentials=cluster_pki.admin_credentials
    )
    yield api
    await api.close()


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def who(server: Any, pki: ClusterPKI, token: str) -> str:
    """How the server takes token: "unauthenticated", or "user:<name>" when it proved an
    identity (the request is one no test identity may make, so it is refused naming the user;
    an allowed request also proves authentication and answers "allowed")."""
    api = ApiClient(
        [f"127.0.0.1:{server.token_port}"], timeout=10, credentials=pki.token_credentials(token)
    )
    try:
        await api.get("secrets", "no-such-secret", namespace="kube-system")
        return "allowed"
    except errors.Unauthenticated:
        return "unauthenticated"
    except errors.Forbidden as err:
        name = err.message.split('"')[1] if '"' in err.message else err.message
        return f"user:{name}"
    except errors.NotFound:
        return "allowed"
    finally:
        await api.close()


def cache_key(server: Any, resource: str, namespace: str, name: str) -> str:
    kind = kinds.by_resource(resource)
    assert kind is not None
    return server.registry.key(kind, namespace, name)


async def until(
    probe: Callable[[], Any] | Callable[[], Awaitable[Any]], *, what: str, timeout: float = 30
) -> Any:
    """Poll probe until it is truthy; the timeout only stops a broken test from hanging."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
