"""The certificate and token controllers against a real API server.

The controllers run as the controller manager's identity (so the built-in policy is
exercised too); requests for certificates come in as the node would send them, with a
bootstrap token through the token listener, or with its own certificate.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

from controllers.certificates import (
    APISERVER_CLIENT_SIGNER,
    KUBELET_CLIENT_SIGNER,
    CSRApprovingController,
    CSRSigningController,
)
from controllers.tokens import (
    ServiceAccountsController,
    ServiceAccountTokenController,
    TokenCleaner,
)
from machinery import auth, errors, pki
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339
from machinery.credentials import Credentials
from machinery.events import EventRecorder
from machinery.informer import InformerFactory
from machinery.pki import Subject
from tests.controllers.harness import eventually, gone, running
from tests.tls import ClusterPKI
from tests.tokens.conftest import b64, who

CSR = "certificatesigningrequests"
TOKEN = "abcdef.0123456789abcdef"


@contextlib.asynccontextmanager
async def controller_manager(
    server: Any, cluster_pki: ClusterPKI, build: Any
) -> AsyncIterator[list[Any]]:
    """Run the controllers build(client, factory, recorder) makes, as the controller manager."""
    client = ApiClient(
        [f"127.0.0.1:{server.port}"],
        timeout=10,
        credentials=cluster_pki.credentials_for(auth.CONTROLLER_MANAGER_USER),
    )
    factory = InformerFactory(client)
    recorder = EventRecorder(client, component="controller-manager")
    controllers = build(client, factory, recorder)
    try:
        async with running(factory, *controllers):
            yield controllers
    finally:
        await client.close()


def token_client(server: Any, cluster_pki: ClusterPKI, token: str) -> ApiClient:
    return ApiClient(
        [f"127.0.0.1:{server.token_port}"],
        timeout=10,
        credentials=cluster_pki.token_credentials(token),
    )


async def make_bootstrap_token(admin: ApiClient, **extra: str) -> None:
    token_id, secret = TOKEN.split(".")
    data = {
        "token-id": token_id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        **extra,
    }
    await admin.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
            "data": {k: b64(v) for k, v in data.items()},
        },
        namespace="kube-system",
    )


def csr_object(
    name: str,
    key: bytes,
    subject: Subject,
    *,
    signer: str = KUBELET_CLIENT_SIGNER,
    usages: tuple[str, ...] = ("digital signature", "client auth"),
    expiration: int | None = None,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "request": base64.b64encode(pki.new_csr(key, subject)).decode(),
        "signerName": signer,
        "usages": list(usages),
    }
    if expiration is not None:
        spec["expirationSeconds"] = expiration
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": name},
        "spec": spec,
    }


def signers(cluster_pki: ClusterPKI, *, duration: float = 8760 * 3600.0):
    def build(client, factory, recorder):
        return [
            CSRApprovingController(client, factory, recorder),
            CSRSigningController(client, factory, recorder, ca=cluster_pki.ca, duration=duration),
        ]

    return build


async def issued(admin: ApiClient, name: str) -> bytes:
    async def probe() -> bytes | None:
        cert = ((await admin.get(CSR, name)).get("status") or {}).get("certificate")
        return base64.b64decode(cert) if cert else None

    return await eventually(probe, what=f"a certificate for {name}")


async def test_joining_node_gets_a_client_certificate(token_server, admin, cluster_pki) -> None:
    await make_bootstrap_token(admin)
    await eventually(
        lambda: _is(who(token_server, cluster_pki, TOKEN), "user:system:bootstrap:abcdef"),
        what="the bootstrap token to work",
    )
    key = pki.new_key()
    node = Subject("system:node:n1", ("system:nodes",))
    async with controller_manager(token_server, cluster_pki, signers(cluster_pki, duration=7200)):
        bootstrap = token_client(token_server, cluster_pki, TOKEN)
        try:
            created = await bootstrap.create(CSR, csr_object("node-n1", key, node, expiration=3600))
        finally:
            await bootstrap.close()
        # The server wrote the requester, whatever the request said.
        assert created["spec"]["username"] == "system:bootstrap:abcdef"
        cert = await issued(admin, "node-n1")

    assert pki.signed_by(cert, cluster_pki.ca.cert)
    assert pki.subject_of(cert) == node
    start, end = pki.validity(cert)
    # Asked for an hour (under the 2h limit); pki backdates the start by five minutes.
    assert 3600 <= (end - start).total_seconds() <= 3600 + 600
    csr = await admin.get(CSR, "node-n1")
    approved = [c for c in csr["status"]["conditions"] if c["type"] == "Approved"]
    assert approved and approved[0]["reason"] == "AutoApproved"

    # The new certificate is the node's identity on the mutual-TLS port.
    as_node = ApiClient(
        [f"127.0.0.1:{token_server.port}"],
        timeout=10,
        credentials=Credentials(ca=cluster_pki.ca.cert, cert=cert, key=key),
    )
    try:
        node_obj = await as_node.list("nodes")
        assert node_obj.items == []
    finally:
        await as_node.close()


async def _is(value: Any, expected: str) -> bool:
    return (await value) == expected


async def test_signing_duration_caps_a_longer_request(token_server, admin, cluster_pki) -> None:
    key = pki.new_key()
    async with controller_manager(token_server, cluster_pki, signers(cluster_pki, duration=1800)):
        await admin.create(
            CSR,
            csr_object(
                "ci",
                key,
                Subject("ci-bot", ("ci",)),
                signer=APISERVER_CLIENT_SIGNER,
                expiration=86400,
            ),
        )
        await _approve(admin, "ci")
        cert = await issued(admin, "ci")
    start, end = pki.validity(cert)
    assert 1800 <= (end - start).total_seconds() <= 1800 + 600
    assert pki.subject_of(cert) == Subject("ci-bot", ("ci",))


async def _approve(admin: ApiClient, name: str) -> None:
    csr = await admin.get(CSR, name)
    csr["status"] = {
        "conditions": [
            {"type": "Approved", "status": "True", "reason": "Test", "message": "by the test"}
        ]
    }
    await admin.update_status(CSR, csr)


async def test_request_nobody_approves_stays_pending(token_server, admin, cluster_pki) -> None:
    """An admin-made client request for someone else: the approver leaves it, the signer
    does not sign unapproved requests. Checked once a later, approvable request was issued,
    so both controllers have seen the first one."""
    async with controller_manager(token_server, cluster_pki, signers(cluster_pki)):
        await admin.create(
            CSR,
            csr_object(
                "for-alice", pki.new_key(), Subject("alice"), signer=APISERVER_CLIENT_SIGNER
            ),
        )
        await admin.create(
            CSR,
            csr_object("self-renewal", pki.new_key(), Subject("system:node:n1", ("system:nodes",))),
        )
        # The admin is not the node: this one too is left, until approved by hand.
        await _approve(admin, "self-renewal")
        await issued(admin, "self-renewal")
        pending = await admin.get(CSR, "for-alice")
    assert not (pending.get("status") or {}).get("conditions")
    assert not (pending.get("status") or {}).get("certificate")


async def test_approved_request_the_signer_refuses_is_failed(
    token_server, admin, cluster_pki
) -> None:
    async with controller_manager(token_server, cluster_pki, signers(cluster_pki)):
        await admin.create(
            CSR,
            csr_object("bad", pki.new_key(), Subject("kubernetes-admin", ("system:masters",))),
        )
        await _approve(admin, "bad")

        async def failed() -> dict[str, Any] | None:
            csr = await admin.get(CSR, "bad")
            found = [
                c
                for c in (csr.get("status") or {}).get("conditions") or []
                if c["type"] == "Failed"
            ]
            return found[0] if found else None

        condition = await eventually(failed, what="a Failed condition")
    assert condition["reason"] == "SignerValidationFailure"
    assert "system:node:<name>" in condition["message"]
    assert not (await admin.get(CSR, "bad"))["status"].get("certificate")


async def test_a_csr_cannot_be_created_approved(admin) -> None:
    obj = csr_object("pre-approved", pki.new_key(), Subject("x"), signer=APISERVER_CLIENT_SIGNER)
    obj["status"] = {"conditions": [{"type": "Approved", "status": "True"}]}
    created = await admin.create(CSR, obj)
    assert not (created.get("status") or {}).get("conditions")


async def test_csr_spec_is_immutable(admin) -> None:
    created = await admin.create(
        CSR, csr_object("fixed", pki.new_key(), Subject("x"), signer=APISERVER_CLIENT_SIGNER)
    )
    created["spec"]["usages"] = ["digital signature", "client auth", "key encipherment"]
    with pytest.raises(errors.Invalid, match="spec"):
        await admin.update(CSR, created)


# -- the bootstrap token cleaner ---------------------------------------------------------------


async def test_token_cleaner_deletes_at_expiration(token_server, admin, cluster_pki) -> None:
    clock = FakeClock()
    await make_bootstrap_token(admin, expiration=rfc3339(clock.now() + 3600))
    await admin.create(
        "secrets",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "type": "bootstrap.kubernetes.io/token",
            "metadata": {"name": "bootstrap-token-forevr", "namespace": "kube-system"},
            "data": {
                "token-id": b64("forevr"),
                "token-secret": b64("0123456789abcdef"),
                "usage-bootstrap-authentication": b64("true"),
            },
        },
        namespace="kube-system",
    )

    def build(client, factory, recorder):
        return [TokenCleaner(client, factory, recorder, clock=clock)]

    async with controller_manager(token_server, cluster_pki, build):
        # The cleaner has read the token and waits for its expiration.
        await eventually(lambda: _true(clock.sleepers >= 1), what="the cleaner to wait")
        await clock.advance(3599)
        assert not await gone(admin, "secrets", "bootstrap-token-abcdef", "kube-system")
        await clock.advance(2)
        await eventually(
            lambda: gone(admin, "secrets", "bootstrap-token-abcdef", "kube-system"),
            what="the expired token deleted",
        )
    assert not await gone(admin, "secrets", "bootstrap-token-forevr", "kube-system")


async def _true(value: bool) -> bool:
    return value


# -- ServiceAccounts and their tokens ------------------------------------------------------------


def sa_controllers(client, factory, recorder):
    return [
        ServiceAccountTokenController(client, factory, recorder, root_ca=b"CA PEM"),
        ServiceAccountsController(client, factory, recorder),
    ]


def token_secret(name: str, account: str, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/service-account-token",
        "metadata": {
            "name": name,
            "annotations": {"kubernetes.io/service-account.name": account},
            **extra,
        },
    }


async def filled(admin: ApiClient, name: str, namespace: str = "default") -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        secret = await admin.get("secrets", name, namespace=namespace)
        annotations = secret["metadata"].get("annotations") or {}
        issued = "kubernetes.io/service-account.uid" in annotations
        return secret if issued and (secret.get("data") or {}).get("token") else None

    return await eventually(probe, what=f"secret {name} filled")


async def test_token_controller_fills_a_token_that_authenticates(
    token_server, admin, cluster_pki
) -> None:
    async with controller_manager(token_server, cluster_pki, sa_controllers):
        account = await admin.create(
            "serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}},
            namespace="default",
        )
        # A token the client chose is replaced by one the controller made.
        secret = token_secret("robot-token", "robot")
        secret["data"] = {"token": b64("chosen-by-the-client")}
        await admin.create("secrets", secret, namespace="default")
        secret = await filled(admin, "robot-token")
        token = base64.b64decode(secret["data"]["token"]).decode()
        assert token != "chosen-by-the-client" and len(token) >= 43
        annotations = secret["metadata"]["annotations"]
        assert annotations["kubernetes.io/service-account.uid"] == account["metadata"]["uid"]
        assert base64.b64decode(secret["data"]["namespace"]) == b"default"
        assert base64.b64decode(secret["data"]["ca.crt"]) == b"CA PEM"
        await eventually(
            lambda: _is(
                who(token_server, cluster_pki, token), "user:system:serviceaccount:default:robot"
            ),
            what="the token to authenticate",
        )

        await admin.delete("serviceaccounts", "robot", namespace="default")
        await eventually(
            lambda: gone(admin, "secrets", "robot-token", "default"), what="the token deleted"
        )
        assert await who(token_server, cluster_pki, token) == "unauthenticated"


async def test_token_controller_deletes_tokens_of_a_recreated_account(
    token_server, admin, cluster_pki
) -> None:
    await admin.create(
        "serviceaccounts",
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "robot"}},
        namespace="default",
    )
    stale = token_secret("old-token", "robot", **{})
    stale["metadata"]["annotations"]["kubernetes.io/service-account.uid"] = "uid-of-the-old-one"
    stale["data"] = {"token": b64("t" * 43)}
    await admin.create("secrets", stale, namespace="default")
    await admin.create("secrets", token_secret("orphan-token", "nobody"), namespace="default")
    async with controller_manager(token_server, cluster_pki, sa_controllers):
        await eventually(
            lambda: gone(admin, "secrets", "old-token", "default"), what="the stale token deleted"
        )
        await eventually(
            lambda: gone(admin, "secrets", "orphan-token", "default"),
            what="the token of a missing account deleted",
        )


async def test_every_namespace_gets_a_default_serviceaccount(
    token_server, admin, cluster_pki
) -> None:
    async with controller_manager(token_server, cluster_pki, sa_controllers):
        await admin.create(
            "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team-a"}}
        )
        await eventually(
            lambda: admin.get("serviceaccounts", "default", namespace="team-a"),
            what="team-a/default",
        )
        await eventually(
            lambda: admin.get("serviceaccounts", "default", namespace="kube-system"),
            what="kube-system/default",
        )
        # Deleted, it comes back.
        await admin.delete("serviceaccounts", "default", namespace="team-a")
        await eventually(
            lambda: admin.get("serviceaccounts", "default", namespace="team-a"),
            what="team-a/default again",
        )
