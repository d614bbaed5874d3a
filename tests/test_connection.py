"""Components' connection flags, and following a kubeconfig whose certificate is replaced."""

from __future__ import annotations

import argparse
import asyncio
import pathlib

import pytest

from machinery import connection
from machinery.clock import FakeClock


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    connection.add_flags(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(
    "argv, fragment",
    [
        ((), "no API server"),
        (("--kubeconfig", "/nonexistent/kubeconfig"), "--kubeconfig: no current context"),
    ],
    ids=["nothing", "missing-file"],
)
def test_bad_flags_say_what_is_missing(argv: tuple[str, ...], fragment: str) -> None:
    with pytest.raises(connection.ConnectionConfigError, match=fragment):
        connection.resolve(_args(*argv))


def test_server_flag_overrides_the_kubeconfig(tmp_path: pathlib.Path, cluster_pki) -> None:
    path = tmp_path / "kubeconfig"
    cluster_pki.kubeconfig(path, ["127.0.0.1:1"])
    servers, credentials = connection.resolve(
        _args("--kubeconfig", str(path), "--server", "127.0.0.1:2,127.0.0.1:3")
    )
    assert servers == ["127.0.0.1:2", "127.0.0.1:3"]
    assert credentials == cluster_pki.admin_credentials


async def test_a_replaced_certificate_is_picked_up(
    tmp_path: pathlib.Path, apiserver, cluster_pki
) -> None:
    path = tmp_path / "kubeconfig"
    servers = [f"127.0.0.1:{apiserver.port}"]
    first = cluster_pki.credentials_for("kubernetes-admin", ("system:masters",))
    cluster_pki.kubeconfig(path, servers, first)
    args = _args("--kubeconfig", str(path))
    clock = FakeClock()
    async with connection.connect(args, timeout=10) as client:
        follower = asyncio.create_task(
            connection.follow_credentials(client, args, interval=30, clock=clock)
        )
        try:
            await client.list("namespaces")
            second = cluster_pki.credentials_for("second-admin", ("system:masters",))
            cluster_pki.kubeconfig(path, servers, second)
            await clock.advance(31)
            for _ in range(100):
                if client.credentials == second:
                    break
                await asyncio.sleep(0.01)
            assert client.credentials == second
            await client.list("namespaces")  # over a new connection, as second-admin
        finally:
            follower.cancel()
