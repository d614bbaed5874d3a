"""The approver's and the signer's rules, table-driven over real PEM requests."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from controllers import certificates
from controllers.certificates import (
    APISERVER_CLIENT_SIGNER,
    KUBELET_CLIENT_SIGNER,
    KUBELET_SERVING_SIGNER,
)
from machinery import pki
from machinery.pki import Subject

NODE = Subject("system:node:n1", ("system:nodes",))
CLIENT = ["digital signature", "client auth"]
SERVING = ["digital signature", "key encipherment", "server auth"]
BOOTSTRAPPER = ("system:bootstrap:abcdef", ["system:bootstrappers", "system:authenticated"])
SELF = ("system:node:n1", ["system:nodes", "system:authenticated"])
OTHER_NODE = ("system:node:n2", ["system:nodes", "system:authenticated"])
SOMEONE = ("alice", ["dev", "system:authenticated"])


def _email_csr() -> bytes:
    key = serialization.load_pem_private_key(pki.new_key(), password=None)
    builder = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(x509.oid.NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "system:node:n1"),
                ]
            )
        )
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("n1"), x509.RFC822Name("root@n1.example")]),
            critical=False,
        )
    )
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)  # type: ignore[arg-type]


def csr(
    *,
    subject: Subject = NODE,
    alt_names: tuple[str, ...] = (),
    signer: str = KUBELET_CLIENT_SIGNER,
    usages: list[str] = CLIENT,
    requester: tuple[str, list[str]] = BOOTSTRAPPER,
    pem: bytes | None = None,
) -> dict[str, Any]:
    request = pem or pki.new_csr(pki.new_key(), subject, alt_names=alt_names)
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": "csr-1"},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": signer,
            "usages": usages,
            "username": requester[0],
            "groups": requester[1],
        },
    }


APPROVE_CASES = [
    ("bootstrap-node-client", csr(), True),
    ("node-renews-its-own-client-cert", csr(requester=SELF), True),
    ("client-usages-with-key-encipherment", csr(usages=[*CLIENT, "key encipherment"]), True),
    ("node-asks-for-another-nodes-client-cert", csr(requester=OTHER_NODE), False),
    ("someone-asks-for-a-node-client-cert", csr(requester=SOMEONE), False),
    (
        "bootstrapper-adds-system-masters",
        csr(subject=Subject("system:node:n1", ("system:nodes", "system:masters"))),
        False,
    ),
    ("bootstrapper-without-organization", csr(subject=Subject("system:node:n1")), False),
    (
        "bootstrapper-asks-for-admin",
        csr(subject=Subject("kubernetes-admin", ("system:masters",))),
        False,
    ),
    (
        "bootstrapper-empty-node-name",
        csr(subject=Subject("system:node:", ("system:nodes",))),
        False,
    ),
    ("client-cert-with-sans", csr(alt_names=("n1",)), False),
    ("client-cert-with-server-auth", csr(usages=[*CLIENT, "server auth"]), False),
    ("client-cert-without-client-auth", csr(usages=["digital signature"]), False),
    (
        "node-serving-for-itself",
        csr(
            signer=KUBELET_SERVING_SIGNER,
            usages=SERVING,
            requester=SELF,
            alt_names=("n1", "10.0.0.1"),
        ),
        True,
    ),
    (
        "node-serving-for-another-node",
        csr(
            signer=KUBELET_SERVING_SIGNER,
            usages=SERVING,
            requester=OTHER_NODE,
            alt_names=("n1",),
        ),
        False,
    ),
    (
        "bootstrapper-asks-for-serving",
        csr(signer=KUBELET_SERVING_SIGNER, usages=SERVING, alt_names=("n1",)),
        False,
    ),
    (
        "serving-without-names",
        csr(signer=KUBELET_SERVING_SIGNER, usages=SERVING, requester=SELF),
        False,
    ),
    (
        "serving-with-an-email-name",
        csr(signer=KUBELET_SERVING_SIGNER, usages=SERVING, requester=SELF, pem=_email_csr()),
        False,
    ),
    (
        "serving-with-client-auth",
        csr(
            signer=KUBELET_SERVING_SIGNER,
            usages=[*SERVING, "client auth"],
            requester=SELF,
            alt_names=("n1",),
        ),
        False,
    ),
    ("apiserver-client-is-never-automatic", csr(signer=APISERVER_CLIENT_SIGNER), False),
    ("another-signer-is-never-automatic", csr(signer="example.com/signer"), False),
]


@pytest.mark.parametrize(
    ("obj", "approve"), [c[1:] for c in APPROVE_CASES], ids=[c[0] for c in APPROVE_CASES]
)
def test_approver_rules(obj: dict[str, Any], approve: bool) -> None:
    req = certificates.read_request(obj)
    assert not isinstance(req, str), req
    verdict = certificates.assess(req)
    assert verdict.approve is approve, verdict.message
    assert verdict.message  # a reason either way, for the condition or the debug log


SIGN_CASES = [
    ("node-client", csr(), None),
    (
        "apiserver-client-any-user",
        csr(signer=APISERVER_CLIENT_SIGNER, subject=Subject("ci", ("builders",))),
        None,
    ),
    (
        "apiserver-client-with-server-auth",
        csr(signer=APISERVER_CLIENT_SIGNER, usages=[*CLIENT, "server auth"]),
        "not allowed",
    ),
    (
        "node-client-signer-for-an-admin",
        csr(subject=Subject("kubernetes-admin", ("system:masters",))),
        "is not system:node:<name>",
    ),
    ("serving-without-names", csr(signer=KUBELET_SERVING_SIGNER, usages=SERVING), "at least one"),
    ("unknown-signer", csr(signer="example.com/signer"), "not a signer of this controller"),
]


@pytest.mark.parametrize(
    ("obj", "problem"), [c[1:] for c in SIGN_CASES], ids=[c[0] for c in SIGN_CASES]
)
def test_signer_rules(obj: dict[str, Any], problem: str | None) -> None:
    req = certificates.read_request(obj)
    assert not isinstance(req, str), req
    found = certificates.signer_problem(req)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found


@pytest.mark.parametrize(
    ("asked", "limit", "expected"),
    [(None, 3600.0, 3600.0), (600, 3600.0, 600.0), (86400, 3600.0, 3600.0)],
    ids=["default-duration", "shorter-asked", "longer-asked-is-capped"],
)
def test_signing_duration_is_the_shorter_one(asked, limit, expected) -> None:
    obj = csr()
    if asked is not None:
        obj["spec"]["expirationSeconds"] = asked
    req = certificates.read_request(obj)
    assert not isinstance(req, str)
    assert certificates.signing_seconds(req, limit) == expected


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("8760h", 8760 * 3600.0), ("30m", 1800.0), ("1h30m", 5400.0), ("90s", 90.0), ("120", 120.0)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert certificates.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "1d", "h", "-5m", "0s", "5 m"])
def test_parse_duration_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        certificates.parse_duration(text)
