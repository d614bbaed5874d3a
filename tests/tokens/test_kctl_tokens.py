"""kctl token / create serviceaccount / create token / certificate, as its user runs it."""

from __future__ import annotations

import base64
import re

from controllers.tokens import ServiceAccountTokenController
from machinery import pki
from machinery.pki import Subject
from tests.controllers.harness import eventually
from tests.test_kctl import kctl
from tests.tokens.conftest import who
from tests.tokens.test_controllers import controller_manager, csr_object


async def _kubeconfig(token_server, cluster_pki, tmp_path):
    return cluster_pki.kubeconfig(tmp_path / "admin.kubeconfig", [f"127.0.0.1:{token_server.port}"])


async def test_token_create_list_delete(token_server, cluster_pki, tmp_path) -> None:
    config = await _kubeconfig(token_server, cluster_pki, tmp_path)
    code, out, err = await kctl(
        config, "token", "create", "--ttl", "2h", "--description", "rack 1 join"
    )
    assert code == 0, err
    token = out.strip()
    assert re.fullmatch(r"[a-z0-9]{6}\.[a-z0-9]{16}", token), out
    token_id, secret = token.split(".")
    await eventually(
        lambda: _is(who(token_server, cluster_pki, token), f"user:system:bootstrap:{token_id}"),
        what="the new token to authenticate",
    )

    code, out, err = await kctl(config, "token", "list")
    assert code == 0, err
    assert token_id in out and "rack 1 join" in out and "authentication" in out
    assert secret not in out

    code, out, err = await kctl(config, "token", "delete", token)
    assert code == 0, err
    assert f'bootstrap token "{token_id}" deleted' in out
    await eventually(
        lambda: _is(who(token_server, cluster_pki, token), "unauthenticated"),
        what="the revoked token refused",
    )
    code, out, err = await kctl(config, "token", "delete", token_id)
    assert code == 1 and "not found" in err


async def test_token_create_refuses_a_group_outside_bootstrappers(
    token_server, cluster_pki, tmp_path
) -> None:
    config = await _kubeconfig(token_server, cluster_pki, tmp_path)
    code, out, err = await kctl(config, "token", "create", "--groups", "system:masters")
    assert code == 1 and out == ""
    assert "auth-extra-groups" in err and "system:masters" in err


async def test_create_serviceaccount_and_token(token_server, cluster_pki, tmp_path) -> None:
    config = await _kubeconfig(token_server, cluster_pki, tmp_path)
    code, out, err = await kctl(config, "create", "serviceaccount", "deployer")
    assert code == 0, err
    assert out.strip() == "serviceaccount/deployer created"

    def build(client, factory, recorder):
        return [ServiceAccountTokenController(client, factory, recorder)]

    async with controller_manager(token_server, cluster_pki, build):
        code, out, err = await kctl(config, "create", "token", "deployer")
    assert code == 0, err
    assert "waiting for the token controller" in err
    token = out.strip()
    assert await who(token_server, cluster_pki, token) == (
        "user:system:serviceaccount:default:deployer"
    )

    code, out, err = await kctl(config, "get", "sa")
    assert code == 0, err
    assert re.search(r"^deployer\s+0\s+", out, re.M), out

    code, out, err = await kctl(config, "create", "token", "nobody")
    assert code == 1 and 'serviceaccount "nobody" not found' in err


async def test_certificate_approve_and_deny(token_server, admin, cluster_pki, tmp_path) -> None:
    config = await _kubeconfig(token_server, cluster_pki, tmp_path)
    for name in ("to-approve", "to-deny"):
        await admin.create(
            "certificatesigningrequests",
            csr_object(
                name,
                pki.new_key(),
                Subject("ci-bot"),
                signer="kubernetes.io/kube-apiserver-client",
            ),
        )
    code, out, err = await kctl(config, "get", "csr")
    assert code == 0, err
    assert re.search(
        r"^to-approve\s+\S+\s+kubernetes.io/kube-apiserver-client\s+kubernetes-admin"
        r"\s+<none>\s+Pending$",
        out,
        re.M,
    ), out

    code, out, err = await kctl(config, "certificate", "approve", "to-approve")
    assert code == 0, err
    assert out.strip() == "certificatesigningrequest.certificates.k8s.io/to-approve approved"
    code, out, err = await kctl(config, "certificate", "deny", "to-deny", "missing")
    assert code == 1
    assert "to-deny denied" in out and "NotFound" in err

    code, out, err = await kctl(config, "get", "csr")
    assert re.search(r"^to-approve\s.*\sApproved$", out, re.M), out
    assert re.search(r"^to-deny\s.*\sDenied$", out, re.M), out
    # Approved and Denied are exclusive: the server names the field.
    code, out, err = await kctl(config, "certificate", "approve", "to-deny")
    assert code == 1 and "mutually exclusive" in err

    code, out, err = await kctl(config, "describe", "csr", "to-approve")
    assert code == 0, err
    assert "CN=ci-bot" in out and "Approved" in out
    csr = await admin.get("certificatesigningrequests", "to-approve")
    assert base64.b64decode(csr["spec"]["request"]).startswith(b"-----BEGIN")


async def _is(value, expected: str) -> bool:
    return (await value) == expected
