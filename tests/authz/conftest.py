"""Fixtures for the authorization tests: clients of the test's TLS API server as any identity.

The API server is the suite's (tests/conftest.py `apiserver`): in-process, mutual TLS
against the session's cluster CA (tests/tls.py, certificates from machinery.pki), with
the real authorizers and the built-in policy. `connect(user, groups)` gives a client
whose certificate names that user and groups; `settled(obj)` waits until the server's
watch caches (which the authorizers read) hold at least the version of obj just written.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest

from machinery import kinds
from machinery.client import ApiClient
from machinery.credentials import Credentials

Obj = dict[str, Any]
Connect = Callable[..., ApiClient]


@pytest.fixture
async def connect(apiserver: Any, cluster_pki: Any) -> AsyncIterator[Connect]:
    made: list[ApiClient] = []

    def connect_as(
        user: str, groups: Sequence[str] = (), *, credentials: Credentials | None = None
    ) -> ApiClient:
        creds = credentials or cluster_pki.credentials_for(user, groups)
        port = apiserver.token_port if creds.token else apiserver.port
        client = ApiClient([f"127.0.0.1:{port}"], timeout=10, credentials=creds)
        made.append(client)
        return client

    yield connect_as
    for client in made:
        await client.close()


@pytest.fixture
def settled(apiserver: Any) -> Callable[[Obj], Awaitable[None]]:
    async def wait(obj: Obj) -> None:
        kind = kinds.by_kind(obj["kind"])
        assert kind is not None
        cache = apiserver.caches[kind.resource]
        revision = int(obj["metadata"]["resourceVersion"])
        for _ in range(1000):
            if cache.revision >= revision:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"the {kind.resource} cache never reached revision {revision}")

    return wait
