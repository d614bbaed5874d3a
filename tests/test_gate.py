"""The API server's door, end to end over TLS: who gets in, who is refused, and how."""

from __future__ import annotations

import asyncio
import datetime
import socket

import pytest
from prometheus_client import REGISTRY

from machinery import errors, pki
from machinery.client import ApiClient
from machinery.credentials import Credentials
from tests import objects


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca("gate-test-ca")


@pytest.fixture
async def server(etcd, etcd_prefix, ca):
    from apiserver.server import ApiServer, ServerConfig, ServingTLS

    serving = pki.issue(
        ca, pki.Subject("kube-apiserver"), client=False, server=True, alt_names=["127.0.0.1"]
    )
    srv = ApiServer(
        ServerConfig(
            etcd_endpoints=[etcd.endpoint],
            listen="127.0.0.1:0",
            token_listen="127.0.0.1:0",
            prefix=etcd_prefix,
            compaction_interval=0,
            tls=ServingTLS(serving, ca.cert),
        )
    )
    await srv.start()
    await asyncio.wait_for(srv.ready.wait(), 30)
    yield srv
    await srv.stop(grace=0)


def _credentials(ca: pki.KeyPair, pair: pki.KeyPair) -> Credentials:
    return Credentials(ca.cert, pair.cert, pair.key)


def _dead_address() -> str:
    """A loopback port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def _list(address: str, credentials: Credentials) -> int:
    async with ApiClient([address], credentials=credentials, timeout=5) as api:
        return len((await api.list("pods", namespace="default")).items)


async def test_admin_certificate_gets_in(server, ca) -> None:
    admin = pki.issue(ca, pki.Subject("kubernetes-admin", ("system:masters",)))
    assert await _list(f"127.0.0.1:{server.port}", _credentials(ca, admin)) == 0


def _refused_certificates(ca: pki.KeyPair) -> dict[str, pki.KeyPair | None]:
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=3)
    return {
        "no-certificate": None,
        "other-ca": pki.issue(pki.new_ca("impostor"), pki.Subject("x", ("system:masters",))),
        "expired": pki.issue(ca, pki.Subject("x", ("system:masters",)), days=1, not_before=past),
    }


@pytest.mark.parametrize("case", ["no-certificate", "other-ca", "expired"])
async def test_bad_certificates_fail_the_handshake(server, ca, case) -> None:
    """gRPC checks the chain and dates before any request: the connection is refused.

    A raw channel, not ApiClient, which would refuse an expired certificate itself."""
    import grpc

    from machinery.api import api_pb2, api_pb2_grpc

    pair = _refused_certificates(ca)[case]
    creds = grpc.ssl_channel_credentials(
        ca.cert, pair.key if pair else None, pair.cert if pair else None
    )
    async with grpc.aio.secure_channel(f"127.0.0.1:{server.port}", creds) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await api_pb2_grpc.ObjectsStub(channel).List(
                api_pb2.ListRequest(resource="pods", namespace="default"), timeout=5
            )
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_client_names_its_own_expired_certificate(server, ca) -> None:
    credentials = _credentials(ca, _refused_certificates(ca)["expired"])
    with pytest.raises(errors.Unauthenticated, match='certificate of "x" expired at'):
        await _list(f"127.0.0.1:{server.port}", credentials)


@pytest.mark.parametrize(
    "token", ["", "abcdef.0123456789abcdef", "not-a-token"], ids=["none", "unknown", "garbage"]
)
async def test_bad_tokens_are_unauthenticated(server, ca, token) -> None:
    before = (
        REGISTRY.get_sample_value(
            "kubelite_apiserver_authentication_attempts_total",
            {"result": "invalid-token" if token else "no-credential"},
        )
        or 0.0
    )
    with pytest.raises(errors.Unauthenticated):
        await _list(f"127.0.0.1:{server.token_port}", Credentials(ca.cert, token=token))
    after = REGISTRY.get_sample_value(
        "kubelite_apiserver_authentication_attempts_total",
        {"result": "invalid-token" if token else "no-credential"},
    )
    assert after == before + 1


async def test_forbidden_names_user_verb_and_resource(server, ca) -> None:
    bob = pki.issue(ca, pki.Subject("bob", ("developers",)))
    with pytest.raises(errors.Forbidden) as refused:
        await _list(f"127.0.0.1:{server.port}", _credentials(ca, bob))
    assert 'user "bob" cannot list pods in namespace "default"' in refused.value.message


async def test_watch_and_streams_pass_the_gate_too(server, ca) -> None:
    from machinery.streams import StreamsClient

    bob = _credentials(ca, pki.issue(ca, pki.Subject("bob")))
    async with ApiClient([f"127.0.0.1:{server.port}"], credentials=bob, timeout=5) as api:
        with pytest.raises(errors.Forbidden):
            async for _ in api.watch("pods", namespace="default"):
                break
    async with StreamsClient([f"127.0.0.1:{server.port}"], credentials=bob) as streams:
        with pytest.raises(errors.Forbidden):
            async for _ in streams.logs("default", "p"):
                break


async def test_client_skips_an_unreachable_server(server, ca) -> None:
    admin = _credentials(ca, pki.issue(ca, pki.Subject("admin", ("system:masters",))))
    servers = [_dead_address(), f"127.0.0.1:{server.port}"]
    async with ApiClient(servers, credentials=admin, timeout=5) as api:
        created = await api.create("pods", objects.pod("p1"), namespace="default")
        assert created["metadata"]["name"] == "p1"
        assert api.server == servers[1]
    async with ApiClient(servers, credentials=admin, timeout=5) as api:
        assert len((await api.list("pods", namespace="default")).items) == 1
