"""whoami and can-i: what the server says about the caller, through the API and kctl."""

from __future__ import annotations

from typing import Any

import pytest

from machinery import errors
from tests.authz.builders import binding, role, rule, user
from tests.authz.kctl import run_kctl


@pytest.fixture
async def reader(client: Any, connect: Any, settled: Any) -> Any:
    """jane may read pods in "team" only."""
    await client.create(
        "namespaces", {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team"}}
    )
    # Each object settled: the authorizer reads the roles and the bindings caches, which
    # catch up independently.
    await settled(
        await client.create(
            "roles",
            role("pod-reader", [rule(["get", "list"], ["pods", "pods/log"])], namespace="team"),
        )
    )
    made = await client.create(
        "rolebindings",
        binding("jane-reads", "Role", "pod-reader", [user("jane")], namespace="team"),
    )
    await settled(made)
    return connect("jane", ("developers",))


async def test_whoami_names_user_groups_and_method(reader: Any) -> None:
    me = await reader.whoami()
    assert (me.user, me.method) == ("jane", "x509")
    assert list(me.groups) == ["developers", "system:authenticated"]


@pytest.mark.parametrize(
    "verb, resource, namespace, subresource, allowed",
    [
        ("list", "pods", "team", "", True),
        ("get", "po", "team", "log", True),
        ("delete", "pods", "team", "", False),
        ("list", "pods", "default", "", False),
        ("update", "pods", "team", "status", False),
        ("list", "nodes", "", "", False),
    ],
    ids=["list-own-ns", "short-name-and-log", "delete", "other-ns", "status", "cluster-scoped"],
)
async def test_review_answers_as_the_request_would(
    reader: Any, verb: str, resource: str, namespace: str, subresource: str, allowed: bool
) -> None:
    answer = await reader.may(verb, resource, namespace=namespace, subresource=subresource)
    assert answer.allowed is allowed
    if not allowed:
        assert "RBAC" in answer.reason
    if verb == "list" and allowed:
        await reader.list(resource, namespace=namespace)
    elif verb == "list":
        with pytest.raises(errors.Forbidden):
            await reader.list(resource, namespace=namespace)


async def test_review_of_an_unknown_resource_is_a_bad_request(
    reader: Any, apiserver: Any, cluster_pki: Any
) -> None:
    """Asked past the client (which resolves names itself), the server names the problem."""
    import grpc

    from machinery.api import access_pb2, access_pb2_grpc

    credentials = cluster_pki.credentials_for("jane", ("developers",)).channel_credentials()
    async with grpc.aio.secure_channel(f"127.0.0.1:{apiserver.port}", credentials) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await access_pb2_grpc.AccessStub(channel).Review(
                access_pb2.AccessReviewRequest(verb="get", resource="widgets"), timeout=10
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "widgets" in (refused.value.details() or "")


async def test_kctl_auth(reader: Any, apiserver: Any, cluster_pki: Any, tmp_path: Any) -> None:
    config = cluster_pki.kubeconfig(
        tmp_path / "jane",
        [f"127.0.0.1:{apiserver.port}"],
        cluster_pki.credentials_for("jane", ("developers",)),
    )
    code, out, _ = await run_kctl(config, "auth", "whoami")
    assert code == 0 and "jane" in out and "x509" in out
    code, out, _ = await run_kctl(config, "-n", "team", "auth", "can-i", "get", "pods/log")
    assert (code, out.strip()) == (0, "yes")
    code, out, err = await run_kctl(
        config, "-n", "team", "auth", "can-i", "delete", "pods/web", "--why"
    )
    assert (code, out.strip()) == (1, "no")
    assert "RBAC" in err
    code, _, err = await run_kctl(config, "auth", "can-i", "get", "widgets")
    assert code == 1 and "widgets" in err
