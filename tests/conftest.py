"""Fixtures shared by the whole suite: a real etcd for the session, an API server per test.

Each test gets its own API server in-process on a free port, with a key
prefix of its own in the session's etcd, so tests never see each other's
objects and can run in any order.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid

import pytest

from deploy.etcd import EtcdProcess, start_etcd


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> EtcdProcess:
    data = tmp_path_factory.mktemp("etcd") / "data"
    process = start_etcd(data)
    yield process
    process.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/kubelite-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def apiserver(etcd: EtcdProcess, etcd_prefix: str):
    from apiserver.server import ApiServer, ServerConfig

    server = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            prefix=etcd_prefix,
            bookmark_interval=1.0,
            compaction_interval=0,
            # Node-agent tests run hostPath and hostNetwork Pods in "default"; Pod Security
            # is tested with the product's default level in test_podsecurity.py.
            pod_security_default_level="privileged",
        )
    )
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 30)
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def client(apiserver):
    from machinery.client import ApiClient

    api = ApiClient([f"127.0.0.1:{apiserver.port}"], timeout=10)
    yield api
    await api.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, cgroups, mounts, iptables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


ROOT = pathlib.Path(__file__).resolve().parent.parent
