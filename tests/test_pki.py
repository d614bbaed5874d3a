"""The cluster PKI, the client config's credentials, and the gate's answers."""

from __future__ import annotations

import base64
import datetime
import pathlib

import pytest
import yaml

from machinery import config, pki
from machinery.auth import Attributes, UserInfo

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.new_ca("test-ca")


def test_issued_certificate_names_user_and_groups(ca: pki.KeyPair) -> None:
    pair = pki.issue(ca, pki.Subject("system:node:n1", ("system:nodes",)))
    assert pki.subject_of(pair.cert) == pki.Subject("system:node:n1", ("system:nodes",))
    assert pki.signed_by(pair.cert, ca.cert)
    assert not pki.signed_by(pair.cert, pki.new_ca("other").cert)


def test_certificate_never_outlives_its_ca() -> None:
    short = pki.new_ca("short", days=1)
    pair = pki.issue(short, pki.Subject("u"), days=365)
    assert pki.validity(pair.cert)[1] <= pki.validity(short.cert)[1]


def test_signing_request_round_trip(ca: pki.KeyPair) -> None:
    key = pki.new_key()
    csr = pki.new_csr(key, pki.Subject("system:node:n2", ("system:nodes",)), alt_names=["10.0.0.2"])
    request = pki.read_csr(csr)
    assert request.subject.user == "system:node:n2"
    assert request.alt_names == ("10.0.0.2",)
    cert = pki.sign(ca, request, client=False, server=True, days=1)
    assert pki.signed_by(cert, ca.cert)
    start, end = pki.validity(cert)
    assert datetime.timedelta(hours=23) < end - start < datetime.timedelta(days=1, hours=1)


@pytest.mark.parametrize(
    "pem, fragment",
    [
        (b"not a csr", "not a PEM certificate signing request"),
        (
            b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "not a PEM",
        ),
    ],
    ids=["garbage", "bad-base64-body"],
)
def test_bad_signing_requests_are_refused(pem: bytes, fragment: str) -> None:
    with pytest.raises(pki.PKIError, match=fragment):
        pki.read_csr(pem)


def test_key_files_are_private(tmp_path: pathlib.Path, ca: pki.KeyPair) -> None:
    cert_path, key_path = ca.write(tmp_path, "ca")
    assert key_path.stat().st_mode & 0o777 == 0o600
    assert pki.KeyPair.read(tmp_path, "ca") == ca
    assert cert_path.read_bytes() == ca.cert


def _write_config(path: pathlib.Path, cluster: dict, user: dict) -> None:
    path.write_text(
        yaml.safe_dump(
            {
                "current-context": "c",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            }
        )
    )


def test_config_reads_certificates_by_path_and_inline(
    tmp_path: pathlib.Path, ca: pki.KeyPair
) -> None:
    admin = pki.issue(ca, pki.Subject("admin", ("system:masters",)))
    admin.write(tmp_path, "admin")
    ca.write(tmp_path, "ca")
    path = tmp_path / "config"
    _write_config(
        path,
        {"servers": ["127.0.0.1:1"], "certificate-authority": "ca.crt"},
        {
            "client-certificate": "admin.crt",
            "client-key-data": base64.b64encode(admin.key).decode(),
        },
    )
    ctx = config.load_context(path)
    assert ctx.credentials is not None
    assert (ctx.credentials.ca, ctx.credentials.cert, ctx.credentials.key) == (
        ca.cert,
        admin.cert,
        admin.key,
    )
    assert "key" not in repr(ctx.credentials).lower().replace("key=", "")


def test_token_user_uses_the_token_servers(tmp_path: pathlib.Path, ca: pki.KeyPair) -> None:
    ca.write(tmp_path, "ca")
    path = tmp_path / "config"
    _write_config(
        path,
        {
            "servers": ["127.0.0.1:1"],
            "token-servers": ["127.0.0.1:2"],
            "certificate-authority": "ca.crt",
        },
        {"token": "abcdef.0123456789abcdef"},
    )
    ctx = config.load_context(path)
    assert ctx.servers == ["127.0.0.1:2"]
    assert ctx.credentials is not None and ctx.credentials.token == "abcdef.0123456789abcdef"


def test_saved_context_keeps_credentials(tmp_path: pathlib.Path, ca: pki.KeyPair) -> None:
    admin = pki.issue(ca, pki.Subject("admin", ("system:masters",)))
    path = tmp_path / "config"
    from machinery.credentials import Credentials

    config.save_context(
        config.Context(
            "k", ["127.0.0.1:9"], credentials=Credentials(ca.cert, admin.cert, admin.key)
        ),
        path,
    )
    assert path.stat().st_mode & 0o777 == 0o600
    again = config.load_context(path)
    assert again.credentials == Credentials(ca.cert, admin.cert, admin.key)
    config.remove_context("k", path)
    assert yaml.safe_load(path.read_text())["users"] == []


@pytest.mark.parametrize(
    "cluster, user, fragment",
    [
        ({"servers": ["a:1"]}, {"token": "t"}, "no certificate-authority"),
        (
            {"servers": ["a:1"], "certificate-authority-data": "!!"},
            {"token": "t"},
            "certificate-authority-data .* not valid base64",
        ),
        (
            {"servers": ["a:1"], "certificate-authority": "missing.crt"},
            {"token": "t"},
            "certificate-authority .*cannot read",
        ),
        (
            {"servers": ["a:1"], "certificate-authority-data": "QUJD"},
            {"client-certificate-data": "QUJD"},
            "both client-certificate and client-key",
        ),
        (
            {"servers": ["a:1"], "certificate-authority-data": "QUJD"},
            {"token": "t"},
            "names no token-servers",
        ),
    ],
    ids=[
        "no-ca",
        "bad-inline-ca",
        "unreadable-ca",
        "cert-without-key",
        "token-without-token-servers",
    ],
)
def test_bad_configs_name_the_problem(
    tmp_path: pathlib.Path, cluster: dict, user: dict, fragment: str
) -> None:
    path = tmp_path / "config"
    _write_config(path, cluster, user)
    with pytest.raises(config.ConfigError, match=fragment):
        config.load_context(path)


def test_attributes_describe_requests() -> None:
    assert (
        Attributes("update", "pods", namespace="ns", name="p", subresource="status").describe()
        == 'update pods/status "p" in namespace "ns"'
    )
    assert (
        Attributes("list", "clusterroles", api_group="rbac.authorization.k8s.io").describe()
        == "list clusterroles.rbac.authorization.k8s.io at cluster scope"
    )


@pytest.mark.parametrize(
    "user, node",
    [
        (UserInfo("system:node:n1", ("system:nodes",)), "n1"),
        (UserInfo("system:node:n1", ()), ""),
        (UserInfo("alice", ("system:nodes",)), ""),
    ],
    ids=["node", "node-name-without-group", "group-without-node-name"],
)
def test_node_identity_needs_name_and_group(user: UserInfo, node: str) -> None:
    assert user.node_name == node
