"""Fixtures shared by the whole suite: a real etcd and a cluster CA for the session, an API
server per test.

Each test gets its own API server in-process on a free port, with a key
prefix of its own in the session's etcd, so tests never see each other's
objects and can run in any order. The server serves TLS and requires a client
certificate from the session's CA (tests/tls.py), as the product does, so every
request a test makes passes authentication and authorization; `client` and
`admin_kubeconfig` hold the admin identity (system:masters).
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import uuid

import pytest

from deploy.etcd import EtcdProcess, start_etcd
from tests.tls import ClusterPKI


@pytest.fixture(scope="session")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> EtcdProcess:
    data = tmp_path_factory.mktemp("etcd") / "data"
    process = start_etcd(data)
    yield process
    process.stop()


@pytest.fixture
def etcd_prefix() -> str:
    return f"/kubelite-test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> ClusterPKI:
    return ClusterPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture
async def apiserver(etcd: EtcdProcess, etcd_prefix: str, cluster_pki: ClusterPKI):
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
            **cluster_pki.server_settings(),
        )
    )
    await server.start()
    await asyncio.wait_for(server.ready.wait(), 30)
    yield server
    await server.stop(grace=0)


@pytest.fixture
async def client(apiserver, cluster_pki: ClusterPKI):
    from machinery.client import ApiClient

    api = ApiClient(
        [f"127.0.0.1:{apiserver.port}"], timeout=10, credentials=cluster_pki.admin_credentials
    )
    yield api
    await api.close()


@pytest.fixture
def admin_kubeconfig(apiserver, cluster_pki: ClusterPKI, tmp_path: pathlib.Path) -> pathlib.Path:
    """A client config for the test's API server as admin: kctl's --config (or
    $KUBELITE_CONFIG), a component's --kubeconfig."""
    return cluster_pki.kubeconfig(tmp_path / "admin.kubeconfig", [f"127.0.0.1:{apiserver.port}"])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() == 0:
        return
    skip = pytest.mark.skip(reason="needs root (namespaces, cgroups, mounts, iptables)")
    for item in items:
        if "root" in item.keywords:
            item.add_marker(skip)


ROOT = pathlib.Path(__file__).resolve().parent.parent
