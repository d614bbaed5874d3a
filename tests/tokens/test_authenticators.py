"""Bearer tokens through a real API server's token listener (TLS, no client certificate).

Each case writes what it needs through the admin's client, waits until the server's own
watch caches hold that state (so a refusal is the authenticator's, not a lagging cache's),
then asks the server who the token is. A Forbidden answer naming the user proves the token
authenticated; UNAUTHENTICATED proves it did not.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from apiserver import tokens
from apiserver.server import ApiServer, ServerConfig
from machinery import auth
from machinery.client import ApiClient
from machinery.clock import FakeClock, rfc3339
from tests.tls import ClusterPKI
from tests.tokens.conftest import STATIC_TOKEN, b64, cache_key, until, who

NS = "default"


def bootstrap_secret(token_id: str, secret: str, **data: str) -> dict[str, Any]:
    values = {
        "token-id": token_id,
        "token-secret": secret,
        "usage-bootstrap-authentication": "true",
        **data,
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": tokens.BOOTSTRAP_TOKEN_TYPE,
        "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": "kube-system"},
        "data": {k: b64(v) for k, v in values.items() if v is not None},
    }


@dataclasses.dataclass
class World:
    server: ApiServer
    admin: ApiClient
    pki: ClusterPKI

    async def secret(self, obj: dict[str, Any]) -> None:
        """Create a Secret and wait for the server's cache to hold this version of it."""
        created = await self.admin.create("secrets", obj, namespace=obj["metadata"]["namespace"])
        key = cache_key(
            self.server, "secrets", created["metadata"]["namespace"], obj["metadata"]["name"]
        )
        revision = int(created["metadata"]["resourceVersion"])
        cache = self.server.caches["secrets"]
        await until(
            lambda: (c := cache.get(key)) is not None and c.revision >= revision,
            what=f"secret {key} in the cache",
        )

    async def delete(self, resource: str, namespace: str, name: str) -> None:
        await self.admin.delete(resource, name, namespace=namespace)
        key = cache_key(self.server, resource, namespace, name)
        await until(lambda: self.server.caches[resource].get(key) is None, what=f"{key} gone")

    async def account(self, name: str) -> dict[str, Any]:
        sa = await self.admin.create(
            "serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}},
            namespace=NS,
        )
        key = cache_key(self.server, "serviceaccounts", NS, name)
        await until(
            lambda: (
                (c := self.server.caches["serviceaccounts"].get(key)) is not None
                and c.obj["metadata"]["uid"] == sa["metadata"]["uid"]
            ),
            what=f"serviceaccount {key} in the cache",
        )
        return sa

    async def sa_token(self, account: dict[str, Any], token: str, name: str = "") -> None:
        await self.secret(
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "type": tokens.SERVICE_ACCOUNT_TOKEN_TYPE,
                "metadata": {
                    "name": name or f"{account['metadata']['name']}-token",
                    "namespace": NS,
                    "annotations": {
                        tokens.SERVICE_ACCOUNT_NAME: account["metadata"]["name"],
                        tokens.SERVICE_ACCOUNT_UID: account["metadata"]["uid"],
                    },
                },
                "data": {"token": b64(token)},
            }
        )


SA_TOKEN = "sa-token-" + "x" * 40


async def bootstrap_valid(w: World) -> str:
    await w.secret(bootstrap_secret("abcdef", "0123456789abcdef"))
    return "abcdef.0123456789abcdef"


async def bootstrap_wrong_secret(w: World) -> str:
    await w.secret(bootstrap_secret("abcdef", "0123456789abcdef"))
    return "abcdef.0123456789abcdee"


async def bootstrap_unknown_id(w: World) -> str:
    await w.secret(bootstrap_secret("abcdef", "0123456789abcdef"))
    return "zzzzzz.0123456789abcdef"


async def bootstrap_expired(w: World) -> str:
    await w.secret(
        bootstrap_secret("abcdef", "0123456789abcdef", expiration="2020-01-01T00:00:00Z")
    )
    return "abcdef.0123456789abcdef"


async def bootstrap_not_yet_expired(w: World) -> str:
    await w.secret(
        bootstrap_secret("abcdef", "0123456789abcdef", expiration="2999-01-01T00:00:00Z")
    )
    return "abcdef.0123456789abcdef"


async def bootstrap_revoked(w: World) -> str:
    await w.secret(bootstrap_secret("abcdef", "0123456789abcdef"))
    assert await who(w.server, w.pki, "abcdef.0123456789abcdef") == "user:system:bootstrap:abcdef"
    await w.delete("secrets", "kube-system", "bootstrap-token-abcdef")
    return "abcdef.0123456789abcdef"


async def bootstrap_usage_false(w: World) -> str:
    await w.secret(
        bootstrap_secret(
            "abcdef", "0123456789abcdef", **{"usage-bootstrap-authentication": "false"}
        )
    )
    return "abcdef.0123456789abcdef"


async def bootstrap_usage_missing(w: World) -> str:
    secret = bootstrap_secret("abcdef", "0123456789abcdef")
    del secret["data"]["usage-bootstrap-authentication"]
    await w.secret(secret)
    return "abcdef.0123456789abcdef"


async def sa_valid(w: World) -> str:
    await w.sa_token(await w.account("robot"), SA_TOKEN)
    return SA_TOKEN


async def sa_wrong_token(w: World) -> str:
    await w.sa_token(await w.account("robot"), SA_TOKEN)
    return SA_TOKEN[:-1] + "y"


async def sa_deleted(w: World) -> str:
    await w.sa_token(await w.account("robot"), SA_TOKEN)
    assert await who(w.server, w.pki, SA_TOKEN) == f"user:system:serviceaccount:{NS}:robot"
    await w.delete("serviceaccounts", NS, "robot")
    return SA_TOKEN


async def sa_recreated(w: World) -> str:
    await w.sa_token(await w.account("robot"), SA_TOKEN)
    assert await who(w.server, w.pki, SA_TOKEN) == f"user:system:serviceaccount:{NS}:robot"
    await w.delete("serviceaccounts", NS, "robot")
    await w.account("robot")  # same name, new uid
    return SA_TOKEN


async def sa_token_secret_deleted(w: World) -> str:
    await w.sa_token(await w.account("robot"), SA_TOKEN)
    assert await who(w.server, w.pki, SA_TOKEN) == f"user:system:serviceaccount:{NS}:robot"
    await w.delete("secrets", NS, "robot-token")
    return SA_TOKEN


async def static_valid(w: World) -> str:
    return STATIC_TOKEN


async def static_wrong(w: World) -> str:
    return STATIC_TOKEN + "x"


async def garbage(w: World) -> str:
    return "not a token at all"


CASES: list[tuple[str, Callable[[World], Awaitable[str]], str]] = [
    ("bootstrap-valid", bootstrap_valid, "user:system:bootstrap:abcdef"),
    ("bootstrap-wrong-secret", bootstrap_wrong_secret, "unauthenticated"),
    ("bootstrap-unknown-id", bootstrap_unknown_id, "unauthenticated"),
    ("bootstrap-expired", bootstrap_expired, "unauthenticated"),
    ("bootstrap-expires-later", bootstrap_not_yet_expired, "user:system:bootstrap:abcdef"),
    ("bootstrap-revoked", bootstrap_revoked, "unauthenticated"),
    ("bootstrap-usage-false", bootstrap_usage_false, "unauthenticated"),
    ("bootstrap-usage-missing", bootstrap_usage_missing, "unauthenticated"),
    ("serviceaccount-valid", sa_valid, f"user:system:serviceaccount:{NS}:robot"),
    ("serviceaccount-wrong-token", sa_wrong_token, "unauthenticated"),
    ("serviceaccount-deleted", sa_deleted, "unauthenticated"),
    ("serviceaccount-recreated-new-uid", sa_recreated, "unauthenticated"),
    ("serviceaccount-token-secret-deleted", sa_token_secret_deleted, "unauthenticated"),
    ("static-valid", static_valid, "user:ci-robot"),
    ("static-wrong", static_wrong, "unauthenticated"),
    ("garbage", garbage, "unauthenticated"),
]


@pytest.mark.parametrize(("prepare", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_token_authentication(token_server, admin, cluster_pki, prepare, expected) -> None:
    token = await prepare(World(token_server, admin, cluster_pki))
    assert await who(token_server, cluster_pki, token) == expected


async def test_token_listener_refuses_requests_without_a_token(token_server, cluster_pki) -> None:
    from machinery import errors
    from machinery.credentials import Credentials

    plain = ApiClient(
        [f"127.0.0.1:{token_server.token_port}"],
        timeout=10,
        credentials=Credentials(ca=cluster_pki.ca.cert),
    )
    try:
        with pytest.raises(errors.Unauthenticated):
            await plain.get("secrets", "x", namespace="kube-system")
    finally:
        await plain.close()


# -- units over the server's caches, with a FakeClock ----------------------------------------


@pytest.mark.parametrize(
    ("offset", "expected"),
    [(-1.0, True), (0.0, False), (1.0, False)],
    ids=["one-second-before-expiry", "at-expiry", "after-expiry"],
)
async def test_bootstrap_token_expires_by_the_injected_clock(
    token_server, admin, cluster_pki, offset, expected
) -> None:
    clock = FakeClock()
    expires = clock.now() + 3600
    world = World(token_server, admin, cluster_pki)
    await world.secret(bootstrap_secret("expire", "0123456789abcdef", expiration=rfc3339(expires)))
    authenticator = tokens.BootstrapTokens(
        token_server.caches["secrets"],
        key_of=lambda r, ns, n: cache_key(token_server, r, ns, n),
        clock=clock,
    )
    await clock.advance(3600 + offset)
    user = authenticator.authenticate_token("expire.0123456789abcdef")
    assert (user is not None) == expected
    if user is not None:
        assert user.name == "system:bootstrap:expire"
        assert user.groups == (auth.BOOTSTRAPPERS_GROUP,)
        assert user.method == "bootstrap-token"


async def test_bootstrap_extra_groups_are_added(token_server, admin, cluster_pki) -> None:
    world = World(token_server, admin, cluster_pki)
    await world.secret(
        bootstrap_secret(
            "groups", "0123456789abcdef", **{"auth-extra-groups": "system:bootstrappers:rack1"}
        )
    )
    authenticator = tokens.BootstrapTokens(
        token_server.caches["secrets"],
        key_of=lambda r, ns, n: cache_key(token_server, r, ns, n),
        clock=FakeClock(),
    )
    user = authenticator.authenticate_token("groups.0123456789abcdef")
    assert user is not None
    assert user.groups == (auth.BOOTSTRAPPERS_GROUP, "system:bootstrappers:rack1")


async def test_serviceaccount_user_has_its_groups_and_uid(token_server, admin, cluster_pki) -> None:
    world = World(token_server, admin, cluster_pki)
    account = await world.account("robot")
    await world.sa_token(account, SA_TOKEN)
    authenticator = tokens.ServiceAccountTokens(
        token_server.caches["secrets"],
        token_server.caches["serviceaccounts"],
        key_of=lambda r, ns, n: cache_key(token_server, r, ns, n),
    )
    user = authenticator.authenticate_token(SA_TOKEN)
    assert user == auth.UserInfo(
        f"system:serviceaccount:{NS}:robot",
        ("system:serviceaccounts", f"system:serviceaccounts:{NS}"),
        uid=account["metadata"]["uid"],
        method="serviceaccount",
    )


# -- the static token file ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("tok,alice\n", "line 1: has 2 fields"),
        ("# comment\n\ntok,alice,1\n,bob,2\n", "line 4: the token (field 1) is empty"),
        ("tok,,1\n", "line 1: the user name (field 2) is empty"),
        ("tok,alice,1\ntok,bob,2\n", "line 2: the token is already given on line 1"),
        ("tok,alice,1,g1,g2\n", "line 1: has 5 fields"),
        ('tok,alice,1,"g1\n', "line 1: not a CSV line"),
    ],
    ids=[
        "too-few-fields",
        "empty-token",
        "empty-user",
        "duplicate-token",
        "unquoted-groups",
        "open-quote",
    ],
)
def test_malformed_static_token_file_names_the_line(tmp_path, text, message) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text(text)
    with pytest.raises(tokens.TokenFileError) as caught:
        tokens.StaticTokenFile.read(path)
    assert str(caught.value).startswith(f"{path} ")
    assert message in str(caught.value)


def test_static_token_file_reads_users_groups_and_uids(tmp_path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text('# who\nt1,alice,100,"dev,ops"\nt2,bob,101\n')
    file = tokens.StaticTokenFile.read(path)
    assert file.authenticate_token("t1") == auth.UserInfo(
        "alice", ("dev", "ops"), uid="100", method="static-token"
    )
    assert file.authenticate_token("t2") == auth.UserInfo(
        "bob", (), uid="101", method="static-token"
    )
    assert file.authenticate_token("t3") is None


def test_server_with_a_malformed_token_file_does_not_start(
    etcd, etcd_prefix, cluster_pki, tmp_path
):
    path = tmp_path / "tokens.csv"
    path.write_text("only-a-token\n")
    with pytest.raises(tokens.TokenFileError, match="line 1"):
        ApiServer(
            ServerConfig(
                etcd_endpoints=[etcd.endpoint],
                prefix=etcd_prefix,
                token_auth_file=str(path),
                **cluster_pki.server_settings(),
            )
        )
