"""The kubelet's logs/exec endpoint under TLS: who gets in, and a serving certificate that
changes under a running server.

The endpoint requires a client certificate from the cluster CA (the handshake fails
without one, or with one from another CA) and then admits only the API server's
kube-apiserver-kubelet-client; a node's or the administrator's certificate from the same
CA gets PERMISSION_DENIED naming who asked. The first tests run the real KubeletServer
and KubeletService with the session CA (tests/tls.py) and need no root: a request that
passes the check asks for a Pod the service does not know and gets NOT_FOUND, which is
what tells it passed. The last one runs a real kubelet with a node certificate and
checks `kctl logs`/exec through the API server's relay, the only way in that works.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kubelet.certificates import _ServingCredentials
from kubelet.server import KubeletServer, KubeletService
from machinery import auth, pki
from machinery.api import streams_pb2, streams_pb2_grpc
from machinery.credentials import Credentials
from machinery.streams import StreamsClient
from tests.kubelet.conftest import Nodes, pod, running, sh, unique, wait_pod
from tests.tls import ClusterPKI

pytestmark = pytest.mark.timeout(180)

NODE = "tls-node"


class Endpoint:
    """A running KubeletServer with TLS, and the serving credentials it follows."""

    def __init__(self, server: KubeletServer, serving: _ServingCredentials) -> None:
        self.server = server
        self.serving = serving
        self.target = f"127.0.0.1:{server.port}"


@pytest.fixture
async def endpoint(cluster_pki: ClusterPKI) -> AsyncIterator[Endpoint]:
    service = KubeletService(
        pods=lambda _namespace, _name: None,
        runtime=None,  # type: ignore[arg-type]  # never reached: no Pod is known
        allowed_peer=auth.APISERVER_KUBELET_CLIENT,
    )
    serving = _ServingCredentials(cluster_pki.kubelet_serving(NODE), cluster_pki.ca.cert)
    server = KubeletServer(service, address="127.0.0.1", port=0)
    await server.start(serving.server_credentials())
    try:
        yield Endpoint(server, serving)
    finally:
        await server.stop(grace=0)


def other_ca_credentials(cluster_pki: ClusterPKI) -> Credentials:
    stranger = pki.new_ca("some-other-ca")
    pair = pki.issue(stranger, pki.Subject(auth.APISERVER_KUBELET_CLIENT))
    return Credentials(ca=cluster_pki.ca.cert, cert=pair.cert, key=pair.key)


CALLERS = {
    "no client certificate": lambda p: Credentials(ca=p.ca.cert),
    "certificate from another CA": other_ca_credentials,
    "a node's certificate": lambda p: p.node_credentials(NODE),
    "the administrator's certificate": lambda p: p.admin_credentials,
    "the API server's kubelet client": lambda p: Credentials(
        ca=p.ca.cert, cert=p.kubelet_client.cert, key=p.kubelet_client.key
    ),
}

# (caller, the status code, what the message names)
CASES = [
    ("no client certificate", grpc.StatusCode.UNAVAILABLE, ""),
    ("certificate from another CA", grpc.StatusCode.UNAVAILABLE, ""),
    ("a node's certificate", grpc.StatusCode.PERMISSION_DENIED, f"system:node:{NODE}"),
    ("the administrator's certificate", grpc.StatusCode.PERMISSION_DENIED, auth.ADMIN_USER),
    ("the API server's kubelet client", grpc.StatusCode.NOT_FOUND, 'pods "ghost" not found'),
]


async def call(target: str, credentials: Credentials, method: str) -> grpc.aio.AioRpcError:
    """The error a Logs or Exec call to the endpoint ends with."""
    async with grpc.aio.secure_channel(target, credentials.channel_credentials()) as channel:
        stub = streams_pb2_grpc.KubeletStub(channel)
        try:
            if method == "Logs":
                request = streams_pb2.LogsRequest(namespace="default", name="ghost")
                async for _ in stub.Logs(request, timeout=20):
                    pass
            else:
                start = streams_pb2.ExecStart(namespace="default", name="ghost", command=["true"])

                async def requests() -> AsyncIterator[streams_pb2.ExecRequest]:
                    yield streams_pb2.ExecRequest(start=start)

                async for _ in stub.Exec(requests(), timeout=20):
                    pass
        except grpc.aio.AioRpcError as err:
            return err
    pytest.fail(f"{method} succeeded for a Pod that does not exist")


@pytest.mark.parametrize("method", ["Logs", "Exec"])
@pytest.mark.parametrize(("caller", "code", "names"), CASES, ids=[c[0] for c in CASES])
async def test_only_the_api_server_gets_in(
    endpoint: Endpoint, cluster_pki: ClusterPKI, method: str, caller: str, code, names: str
) -> None:
    err = await call(endpoint.target, CALLERS[caller](cluster_pki), method)
    assert err.code() == code, err.details()
    assert names in (err.details() or "")


def served_certificate(target: str, cluster_pki: ClusterPKI, work: Path) -> bytes:
    """The DER certificate the endpoint presents in a fresh TLS handshake."""
    cert_file, key_file = cluster_pki.kubelet_client.write(work, f"client-{unique('c')}")
    context = ssl.create_default_context(cafile=str(cluster_pki.ca_file))
    context.load_cert_chain(str(cert_file), str(key_file))
    context.set_alpn_protocols(["h2"])
    host, port = target.rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def der_of(pem: bytes) -> bytes:
    return x509.load_pem_x509_certificate(pem).public_bytes(serialization.Encoding.DER)


async def test_a_new_serving_certificate_is_served_without_a_restart(
    endpoint: Endpoint, cluster_pki: ClusterPKI, tmp_path: Path
) -> None:
    first = await asyncio.to_thread(served_certificate, endpoint.target, cluster_pki, tmp_path)
    assert pki.subject_of(
        x509.load_der_x509_certificate(first).public_bytes(serialization.Encoding.PEM)
    ).user == auth.node_user(NODE)

    renewed = cluster_pki.kubelet_serving(NODE)
    assert der_of(renewed.cert) != first
    endpoint.serving.replace(renewed)

    second = await asyncio.to_thread(served_certificate, endpoint.target, cluster_pki, tmp_path)
    assert second == der_of(renewed.cert)
    # The service behind it answers as before: the gate, then the (unknown) Pod.
    allowed = CALLERS["the API server's kubelet client"](cluster_pki)
    err = await call(endpoint.target, allowed, "Logs")
    assert err.code() == grpc.StatusCode.NOT_FOUND


# -- a real kubelet behind the API server's relay ----------------------------------------------


@pytest.mark.root
async def test_logs_and_exec_through_the_api_server_only(
    apiserver, client, nodes: Nodes, cluster_pki: ClusterPKI, tmp_path: Path
) -> None:
    name = unique("tlsnode")
    kubeconfig = cluster_pki.kubeconfig(
        tmp_path / f"{name}.kubeconfig",
        [f"127.0.0.1:{apiserver.port}"],
        cluster_pki.node_credentials(name),
    )
    cert_file, key_file = cluster_pki.kubelet_serving(name).write(tmp_path / "serving", name)
    kubelet = await nodes.start(
        name=name,
        servers=(),
        kubeconfig=kubeconfig,
        tls_cert_file=cert_file,
        tls_private_key_file=key_file,
    )
    await client.create("pods", pod("speaker", name, sh("main", "echo hello-tls; sleep 3600")))
    await wait_pod(client, "speaker", running, what="Running")

    # Through the API server, which dials the kubelet with kube-apiserver-kubelet-client.
    streams = StreamsClient(
        [f"127.0.0.1:{apiserver.port}"], credentials=cluster_pki.admin_credentials
    )
    try:

        async def logs() -> bytes:
            while b"hello-tls" not in (
                out := b"".join([c async for c in streams.logs("default", "speaker")])
            ):
                await asyncio.sleep(0.2)
            return out

        assert b"hello-tls" in await asyncio.wait_for(logs(), 60)
        async with streams.exec("default", "speaker", ["echo", "via-relay"]) as session:
            assert await session.collect() == (b"via-relay\n", b"", 0)
    finally:
        await streams.close()

    # Straight to the kubelet with the node's own certificate: refused, naming the node.
    target = f"127.0.0.1:{kubelet.port}"
    async with grpc.aio.secure_channel(
        target, cluster_pki.node_credentials(name).channel_credentials()
    ) as channel:
        stub = streams_pb2_grpc.KubeletStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            request = streams_pb2.LogsRequest(namespace="default", name="speaker")
            async for _ in stub.Logs(request, timeout=20):
                pass
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"system:node:{name}" in (refused.value.details() or "")
